"""The dispatch mode that sees every ATen operator and charges its flops to modules."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ._formulas import ZERO_FLOP_OPS, Rule, rule_for
from ._session import Session

__all__ = ["CountingMode"]

_current_node = torch._C._current_autograd_node

# Cache markers: an operator known to do no arithmetic, or one with no rule.
_FREE = object()
_UNKNOWN = object()


#: OpOverload -> (rule or marker, printable name); shared by every mode, so a profiler
#: started once per training step resolves each operator only once per process.
_CACHE: dict[Any, tuple[Rule | object, str]] = {}

#: Operator namespaces that do no arithmetic: collectives (``c10d``; the comms logger
#: measures those) and the profiler's own range markers.
_FREE_NAMESPACES = frozenset({"c10d", "profiler"})


def _resolve(func: Any) -> Rule | object:
    packet = getattr(func, "_overloadpacket", None)
    namespace = getattr(func, "namespace", None)
    if namespace in _FREE_NAMESPACES:
        return _FREE
    if packet is None or namespace != "aten":
        return _UNKNOWN
    name = packet.__name__
    rule = rule_for(name)
    if rule is not None:
        return rule
    return _FREE if name in ZERO_FLOP_OPS else _UNKNOWN


class CountingMode(TorchDispatchMode):
    """Runs every operator unchanged, then charges its flops and MACs.

    The hot path is one dict lookup per operator (rules are cached per ``OpOverload``) and,
    for operators that do arithmetic, one call of its rule and an add into each running
    module's counters. Forward or backward is decided by asking the autograd engine whether
    it is executing a node (see [Note: backward attribution] in ``_session``).
    """

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        out = func(*args, **kwargs) if kwargs else func(*args)
        cached = _CACHE.get(func)
        if cached is None:
            cached = _CACHE[func] = (_resolve(func), str(func))
        rule, name = cached
        if rule is _FREE:
            return out
        session = self.session
        node = _current_node()
        chain = session.chain if node is None else session.backward_chain(node)
        if chain is None:
            return out  # inside a module the caller asked to ignore
        if rule is _UNKNOWN:
            session.note_unknown(name, chain)
            return out
        try:
            flops, macs = rule(args, kwargs or {}, out)
        except Exception as e:  # a rule must never break the model: report the op instead
            session.note_unknown(f"{name} (rule failed: {type(e).__name__}: {e})", chain)
            return out
        if not chain:  # not inside the model: kept apart from the model's totals
            if node is None:
                session.outside_fwd_flops += flops
            else:
                session.outside_bwd_flops += flops
        elif node is None:
            session.fwd_by_op[name] += flops
            for stats in chain:
                stats.fwd_flops += flops
                stats.fwd_macs += macs
        else:
            session.bwd_by_op[name] += flops
            for stats in chain:
                stats.bwd_flops += flops
                stats.bwd_macs += macs
        return out

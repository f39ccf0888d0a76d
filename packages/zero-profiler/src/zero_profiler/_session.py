"""One profiling session: which module is running, and what each module has been charged.

[Note: attribution]
Counts are *inclusive*: an operator is charged to every module that is running when it runs
(the module that called it, that module's caller, and so on up to the root), so a module's
count is everything that happened inside its ``forward``, including functionals and tensor
methods it called directly. The running modules are tracked with process-wide forward
pre/post hooks (``torch.nn.modules.module.register_module_forward_pre_hook``), not hooks
on the model's own modules, for three reasons: nothing is added to the model (no hooks, no
attributes, so ``end_profile()`` has nothing to undo on it); modules attached to the model
while profiling are seen like any other; and the post hook is registered with
``always_call=True``, so a forward that raises still unwinds the stack.

[Note: backward attribution]
In backward, the autograd engine runs the graph's nodes in its own order, so there is no
module "running" to charge. Instead, when a module's forward returns, the profiler walks
the autograd graph back from the module's outputs and tags every node created during that
forward (autograd sequence numbers tell which: they grow monotonically, and the number at
the module's start is recorded) that no inner module has tagged already, with the module's
chain of running modules. A node is tagged through ``Node.metadata``, which lives and dies
with the graph. In backward the counting mode asks the engine which node is executing
(``torch._C._current_autograd_node()``) and charges that node's chain. Nodes created
outside every module (a loss computed after the model) are charged to nothing and reported
as "outside the model".

We do not use ``register_full_backward_hook``: it wraps every module's inputs and outputs
in an extra autograd function, which changes the graph the model builds (and rejects
in-place ops on module outputs), and it gives only one interval per module, while the
engine interleaves the backward work of different modules.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

__all__ = ["ModuleStats", "Session"]

#: Key under which a session tags autograd nodes (see [Note: backward attribution]).
NODE_KEY = "zero_profiler"


@dataclass(slots=True, eq=False)
class ModuleStats:
    """What one module has been charged in a session (inclusive of its callees)."""

    module: nn.Module
    parent: ModuleStats | None  # the module running when this one first ran (None: root)
    fwd_flops: int = 0
    fwd_macs: int = 0
    bwd_flops: int = 0
    bwd_macs: int = 0
    fwd_latency: float = 0.0  # seconds, summed over calls
    calls: int = 0
    active: int = 0  # > 0 while this module's forward is on the stack (re-entrancy guard)


@dataclass(slots=True)
class _Frame:
    stats: ModuleStats
    start: float  # perf_counter() at entry, after synchronizing the device
    start_seq: int  # autograd sequence number at entry
    outer_chain: tuple[ModuleStats, ...] | None


@dataclass(eq=False)
class Session:
    """The state of one ``start_profile()`` .. ``stop_profile()`` span.

    ``chain`` is the tuple of modules running right now, outermost first; the counting mode
    charges each operator to every member. See [Note: attribution].
    """

    model: nn.Module
    sync: Callable[[], None]
    ignore_types: tuple[type[nn.Module], ...] = ()
    stats: dict[int, ModuleStats] = field(default_factory=dict)  # id(module) -> stats
    # None inside an ignored module: its work is charged to nobody
    chain: tuple[ModuleStats, ...] | None = ()
    batch_size: int | None = None  # leading dim of the first tensor the model was called with
    stack: list[_Frame] = field(default_factory=list)
    outside_fwd_flops: int = 0
    outside_bwd_flops: int = 0
    unknown: Counter[str] = field(default_factory=Counter)  # operator -> calls
    unknown_where: dict[str, set[str]] = field(default_factory=dict)  # operator -> modules
    fwd_by_op: Counter[str] = field(default_factory=Counter)  # operator -> flops
    bwd_by_op: Counter[str] = field(default_factory=Counter)
    thread: int = field(default_factory=threading.get_ident)
    _handles: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        for module in self.model.modules():
            self._stats_for(module, parent=None)
        # parents along the static tree, so a module's first call does not decide it
        for module in self.model.modules():
            for child in module.children():
                self.stats[id(child)].parent = self.stats[id(module)]

    def _stats_for(self, module: nn.Module, parent: ModuleStats | None) -> ModuleStats:
        stats = self.stats.get(id(module))
        if stats is None:
            stats = self.stats[id(module)] = ModuleStats(module, parent)
        return stats

    # -- hooks -----------------------------------------------------------------------------

    def attach(self) -> None:
        """Register the process-wide module hooks (removed by :meth:`detach`)."""
        assert not self._handles, "session already attached"
        pre = nn.modules.module.register_module_forward_pre_hook(self._pre_hook)
        post = nn.modules.module.register_module_forward_hook(self._post_hook, always_call=True)
        self._handles = [pre, post]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.stack.clear()
        self.chain = ()

    def _pre_hook(self, module: nn.Module, args: Any) -> None:
        if threading.get_ident() != self.thread:
            return
        stats = self.stats.get(id(module))
        if stats is None:
            if not self.stack:
                return  # a module outside the model, called outside the model
            # a module created or attached while profiling, called from inside the model
            stats = self._stats_for(module, parent=self.stack[-1].stats)
        if module is self.model and self.batch_size is None:
            first = next((a for a in tree_leaves(args) if isinstance(a, torch.Tensor)), None)
            if first is not None and first.dim() > 0:
                self.batch_size = int(first.shape[0])
        self.sync()
        self.stack.append(
            _Frame(stats, time.perf_counter(), torch._C._autograd._get_sequence_nr(), self.chain)
        )
        stats.active += 1
        if self.chain is not None:
            self.chain = None if isinstance(module, self.ignore_types) else (*self.chain, stats)

    def _post_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if threading.get_ident() != self.thread or not self.stack:
            return
        stats = self.stats.get(id(module))
        if stats is None or self.stack[-1].stats is not stats:
            return
        frame = self.stack.pop()
        self.sync()
        stats.active -= 1
        if not stats.active:  # a module re-entering itself is timed once, at the outermost
            stats.fwd_latency += time.perf_counter() - frame.start
        stats.calls += 1
        if output is not None and torch.is_grad_enabled():
            self._tag_nodes(output, self.chain, frame.start_seq)
        self.chain = frame.outer_chain

    # -- backward attribution ----------------------------------------------------------------

    def _tag_nodes(
        self, output: Any, chain: tuple[ModuleStats, ...] | None, start_seq: int
    ) -> None:
        """Tag the autograd nodes this module's forward created (see [Note: backward
        attribution]); nodes an inner module tagged are walked through, not re-tagged."""
        todo = [
            t.grad_fn
            for t in tree_leaves(output)
            if isinstance(t, torch.Tensor) and t.grad_fn is not None
        ]
        seen: set[Any] = set()
        tag = (self, chain)
        while todo:
            node = todo.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if node._sequence_nr() < start_seq:
                continue  # created before this module started: not ours, nor behind it
            metadata = node.metadata
            current = metadata.get(NODE_KEY)
            if current is None or current[0] is not self:
                metadata[NODE_KEY] = tag
            todo.extend(next_node for next_node, _ in node.next_functions)

    def backward_chain(self, node: Any) -> tuple[ModuleStats, ...] | None:
        """The modules charged for work done by autograd node ``node`` in backward (None:
        the node belongs to an ignored module)."""
        tag = node.metadata.get(NODE_KEY)
        return tag[1] if tag is not None and tag[0] is self else ()

    # -- results -----------------------------------------------------------------------------

    def reset_counts(self) -> None:
        """Zero every count and latency; tags on live autograd nodes stay valid."""
        for stats in self.stats.values():
            stats.fwd_flops = stats.fwd_macs = stats.bwd_flops = stats.bwd_macs = 0
            stats.fwd_latency = 0.0
            stats.calls = 0
        self.outside_fwd_flops = self.outside_bwd_flops = 0
        self.batch_size = None
        for counter in (self.unknown, self.fwd_by_op, self.bwd_by_op):
            counter.clear()
        self.unknown_where.clear()

    def root(self) -> ModuleStats:
        return self.stats[id(self.model)]

    def note_unknown(self, name: str, chain: tuple[ModuleStats, ...] | None) -> None:
        """Record a call of an operator no rule covers (``chain``: the modules charged)."""
        self.unknown[name] += 1
        where = self.unknown_where.setdefault(name, set())
        if len(where) < 3:
            where.add(type(chain[-1].module).__name__ if chain else "outside the model")

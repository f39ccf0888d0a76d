"""ZeRO stage 3: parameters live partitioned and are gathered only while a module needs them.

[Note: the partitioned-parameter attribute]
A partitioned parameter carries ``param.zs_shard``, a ``ParamShard`` holding its full
``shape``, its ``numel`` and ``local``: this rank's shard in the compute dtype. Between uses
``param.data`` is an empty tensor of the right dtype; while gathered it is the full tensor.
``zero_core.is_partitioned(param)`` tells the two kinds apart. (DeepSpeed's equivalent is
the ``ds_*`` attributes.)

[Note: when parameters are gathered and released]
Forward: a module's own parameters (plus any registered with
``register_external_parameter``) are all-gathered in a forward pre-hook and released in the
forward hook. Backward: a hook on the module's outputs fires when the gradient reaches them,
which is before any of the module's own backward ops, and gathers the parameters again;
each parameter is released as soon as its gradient has been accumulated (and handed to
the reducer), and whatever is still gathered when backward ends (frozen parameters) is
released then. Forward hooks do not release during backward, so activation checkpointing's
recomputation finds its parameters whole. Gathers go in module execution order, the same
on every rank; with ``prefetch_numel > 0`` the next modules' gathers (in the order recorded
on the first forward) are started asynchronously so they overlap with compute: in forward
the modules after the current one, in backward the ones before it (backward meets the
modules in reverse), each time up to ``prefetch_numel`` elements not yet whole or in
flight. Under ``offload_param`` each gather first fetches the partitions from their store,
so a prefetch fetches early too, and the partitions beyond the prefetch window are read
ahead in the same order (see [Note: parameter offload] in ``zero_core._param_offload``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from . import _dist
from ._shard import ParamShard

__all__ = [
    "GatheredParameters",
    "Init",
    "Stage3Runtime",
    "is_partitioned",
    "partition_param",
    "register_external_parameter",
]

_EXTERNAL = "zs_external_params"


def is_partitioned(param: torch.Tensor) -> bool:
    """Whether ``param`` is a stage-3 partitioned parameter (see the Note above)."""
    shard = getattr(param, "zs_shard", None)
    return shard is not None and shard.local is not None


def is_available(param: torch.Tensor) -> bool:
    return not is_partitioned(param) or param.data.numel() == param.zs_shard.numel


def expert_group(param: nn.Parameter) -> Any:
    """The process group an expert parameter is replicated over (None: a dense parameter,
    replicated over the world). See [Note: expert params]."""
    if getattr(param, "allreduce", True):
        return None
    group = getattr(param, "zs_dp_group", None)
    # zero-moe leaves zs_dp_group None when the expert lives on this rank alone
    return _dist.SOLO if group is None else group


def group_source(group: Any, param: nn.Parameter | None = None) -> int:
    """The global rank whose values a group's members take at start-up: its first rank."""
    if group is None:
        return 0
    ranks = getattr(param, "zs_dp_group_ranks", None)
    if ranks:
        return int(ranks[0])
    return torch.distributed.get_global_rank(group, 0)


def partition_param(param: nn.Parameter, name: str = "", broadcast: bool = True) -> ParamShard:
    """Split ``param`` across the ranks of its group now: keep this rank's shard, empty
    ``param.data``.

    With ``broadcast`` the values are first taken from the group's first rank, so every rank
    holds the same model whatever its random state was.
    """
    if is_partitioned(param):
        return param.zs_shard
    full = param.data
    group = expert_group(param)
    if broadcast:
        _dist.broadcast(full, group_source(group, param), group=group)
    shard = ParamShard(
        param, name, _dist.world_size(group), _dist.rank(group), shape=full.shape, group=group
    )
    shard.local = shard.my_part(full.reshape(-1))
    param.zs_shard = shard
    # DeepSpeed's name for the full size of a partitioned parameter: tools that count
    # parameters (zero-profiler's flops profiler among them) read it instead of numel().
    param.ds_numel = full.numel()
    param.data = torch.empty(0, dtype=full.dtype, device=full.device)
    return shard


class _PendingGather:
    """An all-gather of some parameters' shards in flight (a prefetch)."""

    def __init__(self, shards: list[ParamShard], async_op: bool) -> None:
        self.shards = shards
        self.group = shards[0].group
        self.nshards = shards[0].nshards
        self.total = sum(s.shard_numel for s in shards)
        parts = [_local_on_device(s) for s in shards]
        mine = torch.cat(parts) if len(parts) > 1 else parts[0]
        del parts
        self.full = torch.empty(self.nshards * self.total, dtype=mine.dtype, device=mine.device)
        self.work = _dist.all_gather_into(self.full, mine, async_op=async_op, group=self.group)
        for s in shards:
            _PENDING[id(s.param)] = self

    def finish(self) -> None:
        if self.work is not None:
            self.work.wait()
            self.work = None
        blocks = self.full.view(self.nshards, self.total)
        off = 0
        for s in self.shards:
            if _PENDING.pop(id(s.param), None) is self:
                piece = blocks[:, off : off + s.shard_numel].reshape(-1)[: s.numel]
                s.param.data = piece.view(s.shape)
            off += s.shard_numel


def _local_on_device(s: ParamShard) -> torch.Tensor:
    """This rank's partition on the compute device: ``local`` itself, or under
    ``offload_param`` a copy its store fetches (see [Note: parameter offload])."""
    return s.local if s.store is None else s.store.fetch(s, s.param.device)


def _set_local(s: ParamShard, value: torch.Tensor) -> None:
    """Replace this rank's partition (through its store under ``offload_param``)."""
    if s.store is None:
        s.local.copy_(value)
    else:
        s.store.write_back([(s, value)])


#: prefetches in flight, by id(param)
_PENDING: dict[int, _PendingGather] = {}
#: modules smaller than this (elements) share one prefetch all-gather with the next ones
PREFETCH_CHUNK = 1 << 18


def _start(params: Iterable[nn.Parameter], async_op: bool) -> list[_PendingGather]:
    """Launch the all-gathers of the params that are neither whole nor in flight (one per
    dtype and process group)."""
    groups: dict[tuple[torch.dtype, int], list[ParamShard]] = {}
    for p in params:
        if not is_available(p) and id(p) not in _PENDING:
            key = (p.zs_shard.local.dtype, id(p.zs_shard.group))
            groups.setdefault(key, []).append(p.zs_shard)
    return [_PendingGather(group, async_op) for group in groups.values()]


def gather(params: Iterable[nn.Parameter]) -> None:
    """Make every partitioned parameter in ``params`` whole: finish its prefetch if one is
    in flight, else all-gather it now (one collective for all of them)."""
    params = list(params)
    for p in params:
        pending = _PENDING.get(id(p))
        if pending is not None:
            pending.finish()
    for pending in _start(params, async_op=False):
        pending.finish()


def prefetch(params: Iterable[nn.Parameter]) -> None:
    """Start gathering ``params`` in the background (``gather`` later completes them)."""
    _start(params, async_op=True)


def release(params: Iterable[nn.Parameter]) -> None:
    """Drop the full data of partitioned parameters (their shards stay)."""
    for p in params:
        pending = _PENDING.get(id(p))
        if pending is not None:  # a prefetch nobody used: finish it, then drop it
            pending.finish()
        if is_partitioned(p) and p.data.numel():
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)


def full_copy(param: nn.Parameter, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A CPU copy of the whole parameter in ``dtype`` (default: its own); a partitioned one
    is gathered for the copy and released again."""
    if not is_partitioned(param):
        return param.detach().to("cpu", dtype or param.dtype).clone()
    gather([param])
    try:
        return param.data.detach().to("cpu", dtype or param.dtype).clone()
    finally:
        release([param])


def register_external_parameter(module: nn.Module, param: nn.Parameter) -> None:
    """Declare that ``module``'s forward uses ``param``, which belongs to another module
    (e.g. a tied embedding used functionally by a parent): it is then gathered whenever
    ``module`` runs. DeepSpeed's function of the same name. It appends to the documented
    attribute ``module.zs_external_params`` (a list), which a package that cannot import
    zero-core (zero-moe's gate) may also set itself."""
    extra = module.__dict__.setdefault(_EXTERNAL, [])
    if not any(p is param for p in extra):
        extra.append(param)


def _module_params(module: nn.Module) -> list[nn.Parameter]:
    own = [p for p in module.parameters(recurse=False) if is_partitioned(p)]
    return own + [p for p in module.__dict__.get(_EXTERNAL, []) if is_partitioned(p)]


class Stage3Runtime:
    """The hooks that gather and release a model's partitioned parameters."""

    def __init__(self, module: nn.Module, prefetch_numel: int = 0) -> None:
        self.module = module
        self.prefetch_numel = prefetch_numel
        #: modules in the order the first forward ran them; None until it has finished
        self.trace: list[nn.Module] | None = None
        self._recording: list[nn.Module] = []
        self._position = 0
        self._back_position = 0
        self.in_backward = False
        self.handles: list[Any] = []
        #: modules currently inside their forward that use each param (by id): a param is
        #: released only when none is (a parent using a child's weight keeps it whole)
        self.holders: dict[int, int] = {}
        for m in module.modules():
            if not _module_params(m) and _EXTERNAL not in m.__dict__:
                continue
            self.handles.append(m.register_forward_pre_hook(self._pre_forward))
            self.handles.append(m.register_forward_hook(self._post_forward))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def all_params(self) -> Iterator[nn.Parameter]:
        seen: set[int] = set()
        for m in self.module.modules():
            for p in _module_params(m):
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def _pre_forward(self, module: nn.Module, inputs: Any) -> None:
        params = _module_params(module)
        gather(params)  # first: a fetch that raises (see _param_offload) leaves no holder
        for p in params:
            self.holders[id(p)] = self.holders.get(id(p), 0) + 1
        if self.in_backward:
            return
        if self.trace is None:
            self._recording.append(module)
        elif self.prefetch_numel > 0:
            self._prefetch_after(module)

    def _prefetch_after(self, module: nn.Module) -> None:
        """Start gathering the modules the trace says come next, up to prefetch_numel."""
        trace = self.trace
        if self._position >= len(trace) or trace[self._position] is not module:
            try:  # find where we are (a module may run several times per forward)
                self._position = trace.index(module, self._position)
            except ValueError:
                return
        self._position += 1
        self._prefetch(trace[self._position :])

    def _prefetch_before(self, module: nn.Module) -> None:
        """Backward twin of ``_prefetch_after``: the modules before ``module`` in the trace,
        nearest first, are the ones whose backward comes next."""
        trace = self.trace
        here = min(self._back_position, len(trace) - 1)
        while here >= 0 and trace[here] is not module:
            here -= 1
        if here < 0:  # not where we expected (a module not in the trace ran): look again
            here = len(trace) - 1
            while here >= 0 and trace[here] is not module:
                here -= 1
            if here < 0:
                return
        # a module's output hook fires once per output tensor: stay on it until another
        # module's backward begins
        self._back_position = here
        self._prefetch(trace[here - 1 :: -1] if here > 0 else [], trainable_only=True)

    def _prefetch(self, modules: list[nn.Module], trainable_only: bool = False) -> None:
        """Prefetch the params of ``modules``, in that order, up to prefetch_numel elements
        (counting those already in flight); under NVMe offload, read the partitions of all of
        them ahead as buffers allow.

        Each module's params (small modules merged with the following ones up to
        ``PREFETCH_CHUNK`` elements) are one all-gather of their own: the next module then
        waits for its own parameters only, not for the whole window."""
        budget = self.prefetch_numel
        upcoming: list[nn.Parameter] = []
        chunks: list[list[nn.Parameter]] = [[]]
        chunk_numel = 0
        for m in modules:
            for p in _module_params(m):
                if trainable_only and not p.requires_grad:
                    continue  # backward regathers only modules with trainable params
                if is_available(p):
                    continue
                budget -= p.zs_shard.numel
                if budget < 0:
                    break
                if id(p) not in _PENDING:
                    upcoming.append(p)
                    chunks[-1].append(p)
                    chunk_numel += p.zs_shard.numel
            if budget < 0:
                break
            if chunk_numel >= PREFETCH_CHUNK:
                chunks.append([])
                chunk_numel = 0
        # NVMe offload: the prefetched partitions are read in parallel, and the ones after
        # them start reading while this module computes
        stores = {id(p.zs_shard.store): p.zs_shard.store for p in upcoming if p.zs_shard.store}
        for store in stores.values():
            store.read_ahead(
                p.zs_shard
                for m in modules
                for p in _module_params(m)
                if not is_available(p) and id(p) not in _PENDING
            )
        for chunk in chunks:
            prefetch(chunk)

    def end_forward(self) -> None:
        """The model's forward has returned: the first one fixes the prefetch trace."""
        if self.trace is None and self._recording:
            self.trace = self._recording
        self._position = 0
        self._back_position = len(self.trace) - 1 if self.trace else 0

    def _post_forward(self, module: nn.Module, inputs: Any, output: Any) -> None:
        params = _module_params(module)
        for p in params:
            self.holders[id(p)] -= 1
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            regather = functools.partial(self._before_module_backward, module, params)
            for t in _tensors(output):
                if t.requires_grad:
                    t.register_hook(regather)
        if not self.in_backward:
            release(p for p in params if not self.holders[id(p)])

    def _before_module_backward(
        self, module: nn.Module, params: list[nn.Parameter], grad: torch.Tensor
    ) -> None:
        gather(params)
        if self.in_backward and self.trace is not None and self.prefetch_numel > 0:
            self._prefetch_before(module)

    def after_grad(self, param: nn.Parameter) -> None:
        """The gradient of ``param`` is accumulated and handed on: its data can go."""
        release([param])

    def end_backward(self) -> None:
        release(self.all_params())


def _tensors(obj: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    """Every tensor in a module's output: nested lists, tuples, dicts, and the fields of
    dataclasses or plain objects (a gate returning a routing record)."""
    if depth > 4:
        return
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o, depth + 1)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o, depth + 1)
    elif hasattr(obj, "__dict__") and not isinstance(obj, (nn.Module, type)):
        for o in vars(obj).values():
            yield from _tensors(o, depth + 1)


@contextlib.contextmanager
def GatheredParameters(  # noqa: N802 - DeepSpeed's name
    params: nn.Parameter | Iterable[nn.Parameter],
    modifier_rank: int | None = None,
    fwd_module: nn.Module | None = None,
    enabled: bool = True,
) -> Iterator[None]:
    """Gather partitioned parameters for reading (or, with ``modifier_rank``, writing).

    Inside the block the parameters are whole on every rank. With ``modifier_rank`` set,
    that rank's values are broadcast on exit and become every rank's new shards (and the
    optimizer's fp32 masters, when an engine owns them); otherwise changes are discarded.
    Parameters that are not partitioned are left alone.
    """
    if isinstance(params, torch.Tensor):
        params = [params]
    params = [p for p in params if is_partitioned(p)] if enabled else []
    gather(params)
    try:
        yield
    finally:
        if modifier_rank is not None:
            for p in params:
                _dist.broadcast(p.data, modifier_rank, group=p.zs_shard.group)
                s = p.zs_shard
                mine = s.my_part(p.data.reshape(-1))
                _set_local(s, mine)
                if s.master is not None:
                    s.master.copy_(mine)
        release(params)


class Init:
    """Build a model already partitioned (DeepSpeed's ``zero.Init``).

    Inside ``with zero_core.Init():`` every module's parameters are partitioned as soon as
    that module's ``__init__`` returns, so the full model never exists on one rank: peak
    memory is about one layer plus the shards. Initialize child parameters in the child's
    own ``__init__`` (or ``reset_parameters``); to change them later, use
    ``GatheredParameters(..., modifier_rank=0)``. ``dtype`` casts floating-point parameters
    before they are split (e.g. ``torch.bfloat16`` for a bf16 run).
    """

    def __init__(
        self,
        enabled: bool = True,
        dtype: torch.dtype | None = None,
        config_dict_or_path: Any = None,
    ) -> None:
        self.enabled = enabled
        self.dtype = dtype
        self._patched: list[tuple[type, Any]] = []

    def _wrap(self, cls: type) -> None:
        if "__init__" not in cls.__dict__ or getattr(cls.__init__, "_zs_wrapped", False):
            return
        original = cls.__init__
        init = self

        @functools.wraps(original)
        def wrapped(module: nn.Module, *args: Any, **kwargs: Any) -> None:
            original(module, *args, **kwargs)
            for name, p in module.named_parameters(recurse=False):
                if init.dtype is not None and p.is_floating_point():
                    p.data = p.data.to(init.dtype)
                partition_param(p, name)

        wrapped._zs_wrapped = True  # type: ignore[attr-defined]
        cls.__init__ = wrapped
        self._patched.append((cls, original))

    def __enter__(self) -> Init:
        if not self.enabled:
            return self
        stack = [nn.Module]
        while stack:
            cls = stack.pop()
            self._wrap(cls)
            stack.extend(cls.__subclasses__())
        init = self
        self._old_subclass_hook = nn.Module.__dict__.get("__init_subclass__")

        def init_subclass(cls: type, **kwargs: Any) -> None:
            super(nn.Module, cls).__init_subclass__(**kwargs)
            init._wrap(cls)

        nn.Module.__init_subclass__ = classmethod(init_subclass)  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.enabled:
            return
        for cls, original in reversed(self._patched):
            cls.__init__ = original
        self._patched.clear()
        if self._old_subclass_hook is None:
            del nn.Module.__init_subclass__
        else:
            nn.Module.__init_subclass__ = self._old_subclass_hook

"""``zero_optimization.offload_optimizer``: the optimizer step on the CPU, its state in CPU
memory or on NVMe.

[Note: optimizer offload]
With ``device = "cpu"`` the fp32 master shards and the optimizer state live in CPU memory
(page-locked with ``pin_memory`` when there is a CUDA device to copy from), the inner
optimizer is built over CPU tensors, so a config's ``"Adam"`` resolves to zero-optim's
CPUAdam as in DeepSpeed, and the step runs sub-group by sub-group (``sub_group_size``
elements of this rank's shards at a time): the inner optimizer steps that sub-group's
masters only (the others have no ``.grad``, so it skips them), and the new weights go back
to the device in the compute dtype. A step per sub-group is the same arithmetic as one step
over all: the optimizers are elementwise and count steps per parameter.

The fp32 gradient partitions live in CPU memory too, owned by this optimizer
(``grad_home``), as DeepSpeed keeps them: the reducer copies each bucket's reduce-scattered
block into them (adding over the micro-steps of an accumulation window) and drops the
device block, so between buckets the device holds no gradient but the staging buffers.
The overflow check, the norm and clipping then run on the CPU copies, which hold the same
values; the first block is copied rather than added to zeros, so the partition is bitwise
what the device would have kept.

With ``device = "nvme"`` (stage 3) each sub-group's masters and state tensors form one
record in swap files (see ``zero_core._swap``); a step swaps a record into a pinned
buffer, updates it there and swaps it out. Between steps the masters and the state tensors
seen through ``inner.state`` are memory-mapped views of the files, so code that reads them
(a checkpoint save) works unchanged and pages them in on demand; after anything writes to
them (a checkpoint load), ``_write_back`` writes them to the files. State that is not a
tensor of the master's shape (Adam's ``step``) stays in memory.

[Note: partial optimizer offload]
``offload_optimizer.ratio`` r (DeepSpeed's "ratio of parameters updating on the CPU side")
splits this rank's sub-groups in order: a sub-group is offloaded when the sub-groups before
it hold fewer than r x this rank's elements, so the offloaded share is at least r and less
than r plus one sub-group; r = 0 offloads nothing, r = 1 everything. The other sub-groups
are *kept*: their fp32 masters, optimizer state and fp32 gradient partitions live on the
compute device, as without offload, and a second optimizer steps them there. It is built by
the same factory over the device parameters (so the config's type resolves to its device
implementation, as without offload) and then re-pointed at the kept masters. Both
optimizers use one ``state`` dict (the offloaded one's), so checkpoints, ``state_dict()``
and a scheduler see one optimizer whatever r is, and a checkpoint saved with one ratio
loads with another. The hyperparameters a scheduler or a checkpoint load writes into the
offloaded optimizer's param groups are copied into the device optimizer's before each step
(the keys both have). Under CPU offload the device step is launched first, so that on an
accelerator it runs while the CPU steps its share; under NVMe offload it runs once the
swapped step has committed, so a refused swap leaves every state as it was.

[Note: the CPU optimizer check]
DeepSpeed refuses a client optimizer under optimizer offload unless it is its CPU Adam or
``zero_force_ds_cpu_optimizer`` is false: a device optimizer stepping CPU tensors is slow or
fails. zero-core applies the rule to an optimizer given to ``initialize()`` (the config has
no ``"optimizer"`` block) without importing zero-optim: a CPU implementation is an
optimizer whose class declares ``accepts_device_params = False``, as zero-optim's CPUAdam,
CPUAdagrad and CPULion do (its Fused* classes declare True, torch's nothing).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import fields
from fractions import Fraction
from typing import Any

import torch

from . import _aio, _dist
from ._optimizer import ZeroOptimizer
from ._param_offload import make_param_store
from ._shard import ParamShard
from ._swap import SwapFiles, make_run_dir
from .config._sections import AioSection

__all__ = [
    "cpu_param_groups",
    "device_bytes",
    "make_optimizer",
    "offloaded_count",
    "split_sub_groups",
]


def split_sub_groups(shards: list[ParamShard], sub_group_size: int) -> list[list[ParamShard]]:
    """Consecutive shards, at most ``sub_group_size`` shard elements per group (a larger
    shard is a group of its own)."""
    out: list[list[ParamShard]] = []
    size = 0
    for s in shards:
        if not out or size + s.shard_numel > sub_group_size:
            out.append([])
            size = 0
        out[-1].append(s)
        size += s.shard_numel
    return out


def offloaded_count(sub_groups: list[list[ParamShard]], ratio: float) -> int:
    """How many leading sub-groups ``ratio`` offloads: each one whose predecessors hold
    fewer than ``ratio`` x all the elements (see [Note: partial optimizer offload]). Exact
    arithmetic, so a ratio that lands on a sub-group boundary splits there."""
    threshold = Fraction(ratio) * sum(s.shard_numel for sub in sub_groups for s in sub)
    before = 0
    for k, sub in enumerate(sub_groups):
        if before >= threshold:
            return k
        before += sum(s.shard_numel for s in sub)
    return len(sub_groups)


def cpu_param_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``groups`` with every param replaced by an empty CPU stand-in: what the optimizer
    factory gets under offload, so the registry picks a type's CPU implementation (the
    engine then points the groups at the CPU masters)."""
    return [{**g, "params": [torch.empty(0) for _ in g["params"]]} for g in groups]


def make_optimizer(
    config: Any,
    inner: torch.optim.Optimizer,
    groups: list[list[ParamShard]],
    *,
    device_inner: Callable[[], torch.optim.Optimizer] | None = None,
    **options: Any,
) -> ZeroOptimizer:
    """The partitioned optimizer ``config`` asks for: offloaded or not, with the store of
    ``offload_param`` (see ``zero_core._param_offload``) when the config has one.

    Args:
        config: the engine's ``ZeroCoreConfig``.
        inner: the optimizer over the param groups (over CPU stand-ins under optimizer
            offload, see :func:`cpu_param_groups`).
        groups: this rank's shards, one list per param group.
        device_inner: builds the same optimizer over the device parameters; called once
            when ``offload_optimizer.ratio`` < 1 keeps part of the step on the device.
        options: passed to :class:`ZeroOptimizer`.

    Raises:
        ValueError: an optimizer that communicates itself under optimizer offload; a
            client optimizer that is not a CPU implementation under optimizer offload while
            ``zero_force_ds_cpu_optimizer`` is true; a ratio < 1 with an optimizer instance
            (no second one can be built); an ``nvme_path`` that is missing or not
            writable; a stage-3 partition larger than ``offload_param.buffer_size``.
        ImportError: NVMe offload without zero-aio installed.
    """
    zc = config.zero_optimization
    offload = zc.offload_optimizer
    if offload is not None and getattr(inner, "communicates_gradients", False):
        raise ValueError(
            f"{type(inner).__name__} communicates its own gradients, which optimizer offload "
            f"does not support; remove zero_optimization.offload_optimizer"
        )
    if offload is not None and config.optimizer is None and config.zero_force_ds_cpu_optimizer:
        _check_cpu_optimizer(inner)
    if offload is not None and offload.ratio < 1:
        options["device_inner"] = device_inner
    aio_options = _handle_options(config.sections.get("aio"))
    shards = [s for g in groups for s in g]
    options["param_store"] = make_param_store(config, shards, aio_options)
    try:
        return _offloaded_optimizer(offload, zc, inner, groups, aio_options, **options)
    except BaseException:
        if options["param_store"] is not None:  # its files go now, not at exit
            options["param_store"].close()
        raise


def _offloaded_optimizer(
    offload: Any,
    zc: Any,
    inner: torch.optim.Optimizer,
    groups: list[list[ParamShard]],
    aio_options: dict[str, Any],
    **options: Any,
) -> ZeroOptimizer:
    if offload is None:
        return ZeroOptimizer(inner, groups, **options)
    common = dict(
        sub_group_size=int(zc.sub_group_size), pin_memory=offload.pin_memory, ratio=offload.ratio
    )
    if offload.device == "cpu":
        return CpuOffloadOptimizer(inner, groups, **common, **options)
    handle = _aio.aio("aio_handle")  # before anything is created: fails without zero-aio
    new_handle = functools.partial(handle, **aio_options)
    swap = SwapFiles(
        make_run_dir(str(offload.nvme_path), _dist.rank()),
        new_handle,
        offload.buffer_count,
        offload.pipeline_read,
        offload.pipeline_write,
    )
    return NvmeOffloadOptimizer(inner, groups, swap=swap, **common, **options)


def _check_cpu_optimizer(inner: torch.optim.Optimizer) -> None:
    """See [Note: the CPU optimizer check]."""
    if getattr(inner, "accepts_device_params", True) is False:
        return
    raise ValueError(
        f"zero_force_ds_cpu_optimizer: optimizer offload steps the optimizer on the CPU, and "
        f"the optimizer passed to initialize() ({type(inner).__name__}) is not a CPU "
        f"implementation; pass zero_optim.CPUAdam (pip install zero-optim), name the type in "
        f"the config's 'optimizer' block instead (offload builds its CPU version), or set "
        f'"zero_force_ds_cpu_optimizer": false to step this one on the CPU'
    )


def _handle_options(section: dict[str, Any] | None) -> dict[str, Any]:
    """``aio_handle`` arguments: the ``"aio"`` block over DeepSpeed's defaults for it."""
    defaults = AioSection()
    out = {f.name: getattr(defaults, f.name) for f in fields(AioSection)}
    out.update(section or {})
    if out.get("backend") is None:
        out.pop("backend", None)
    return out


class CpuOffloadOptimizer(ZeroOptimizer):
    """Masters and state in CPU memory; the step on the CPU, by sub-group. With a ratio
    below 1 the trailing sub-groups stay on the device (see [Note: partial optimizer
    offload])."""

    def __init__(
        self,
        inner: torch.optim.Optimizer,
        groups: list[list[ParamShard]],
        *,
        sub_group_size: int,
        pin_memory: bool,
        ratio: float = 1.0,
        device_inner: Callable[[], torch.optim.Optimizer] | None = None,
        **options: Any,
    ) -> None:
        self.pin = pin_memory and torch.cuda.is_available()
        super().__init__(inner, groups, **options)
        every = split_sub_groups(self.shards, sub_group_size)
        split = offloaded_count(every, ratio)
        #: the offloaded sub-groups, stepped on the CPU one at a time
        self.sub_groups = every[:split]
        #: shards whose masters, state and gradient partition stay on the device
        self.kept: list[ParamShard] = [s for sub in every[split:] for s in sub]
        #: shards whose masters, state and gradient partition this optimizer offloads
        self.offloaded: set[ParamShard] = {s for sub in self.sub_groups for s in sub}
        for s in self.kept:  # built in CPU memory like the others; the device is their home
            s.master.data = s.master.detach().to(s.param.device)
        #: steps the kept masters on the device; None when ratio is 1
        self.device_inner = None if ratio >= 1 else self._device_optimizer(ratio, device_inner)
        self.grad_home = self._new_grad_partition

    def _shard_is_master(self, s: ParamShard) -> bool:
        return False  # the masters live where the offload keeps them

    def _new_master(self, source: torch.Tensor) -> torch.Tensor:
        master = source.to("cpu", torch.float32, copy=True)
        return master.pin_memory() if self.pin else master

    def _new_grad_partition(self, shard: ParamShard) -> torch.Tensor:
        if shard not in self.offloaded:
            return torch.zeros(shard.shard_numel, dtype=torch.float32, device=shard.master.device)
        return torch.zeros(
            shard.shard_numel, dtype=torch.float32, device="cpu", pin_memory=self.pin
        )

    def _device_optimizer(
        self, ratio: float, build: Callable[[], torch.optim.Optimizer] | None
    ) -> torch.optim.Optimizer:
        where = f"zero_optimization.offload_optimizer.ratio = {ratio}"
        optimizer = build() if build is not None else None
        if optimizer is None or optimizer is self.inner:
            raise ValueError(
                f"{where} keeps part of the step on the device, which takes a second optimizer "
                f"built like the first, and an optimizer instance passed to initialize() "
                f"cannot be built again: pass a callable (param groups -> optimizer) or the "
                f"config's 'optimizer' block, or set the ratio to 1"
            )
        if len(optimizer.param_groups) != len(self.groups):
            raise ValueError(
                f"{where}: the device optimizer has {len(optimizer.param_groups)} param groups "
                f"and the offloaded one {len(self.groups)}; the optimizer factory must build "
                f"one group per group it is given"
            )
        for group, shards in zip(optimizer.param_groups, self.groups):
            group["params"] = [s.master for s in shards if s not in self.offloaded]
        optimizer.state = self.inner.state
        return optimizer

    def _attach_grads(self, sub: list[ParamShard], unused: set[ParamShard]) -> None:
        for s in sub:
            if s not in unused and s.grad is not None:
                s.master.grad = s.grad  # where the master is (see grad_home)

    def _step_sub_group(
        self,
        sub: list[ParamShard],
        unused: set[ParamShard],
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        """Step ``sub``'s masters only (``optimizer``, default the offloaded one, skips
        the others: they have no ``.grad``)."""
        self._attach_grads(sub, unused)
        try:
            (self.inner if optimizer is None else optimizer).step()
        finally:
            for s in sub:
                s.master.grad = None

    def _step_on_device(self, unused: set[ParamShard]) -> None:
        """The kept masters' update, by the device optimizer with the offloaded one's
        current hyperparameters and (possibly reloaded) state dict."""
        if self.device_inner is None:
            return
        for source, group in zip(self.inner.param_groups, self.device_inner.param_groups):
            group.update({k: v for k, v in source.items() if k != "params" and k in group})
        self.device_inner.state = self.inner.state  # a load_state_dict() replaces the dict
        self._step_sub_group(self.kept, unused, self.device_inner)

    def _update(self, unused: set[ParamShard]) -> dict[ParamShard, torch.Tensor] | None:
        self._step_on_device(unused)
        for sub in self.sub_groups:
            self._step_sub_group(sub, unused)
        return None


Segment = tuple[ParamShard, str]  # (shard, "master" or a state key)


class NvmeOffloadOptimizer(CpuOffloadOptimizer):
    """Masters and state in swap files on NVMe, swapped in by sub-group for the step."""

    def __init__(self, *args: Any, swap: SwapFiles, **kwargs: Any) -> None:
        self.swap = swap
        super().__init__(*args, **kwargs)
        self.layouts: list[list[Segment]] = []
        for sub in self.sub_groups:
            layout = self._layout(sub)
            self.swap.add(self._pack(layout))
            self.layouts.append(layout)
        self._remap()

    def close(self) -> None:
        """Delete this rank's swap files now. They also go at interpreter exit; call this
        to free the disk earlier (the engine cannot train afterwards)."""
        super().close()
        self.swap.remove()

    # -- records ---------------------------------------------------------------------------
    def _state_of(self, s: ParamShard) -> dict[str, Any]:
        return self.inner.state.get(s.master, {})

    def _layout(self, sub: list[ParamShard]) -> list[Segment]:
        """What a sub-group's record holds: each master, then its state tensors shaped like
        it (fp32), in key order."""
        out: list[Segment] = []
        for s in sub:
            out.append((s, "master"))
            for key, value in sorted(self._state_of(s).items()):
                if (
                    torch.is_tensor(value)
                    and value.dtype == torch.float32
                    and value.shape == s.master.shape
                ):
                    out.append((s, key))
        return out

    def _tensor(self, segment: Segment) -> torch.Tensor:
        s, key = segment
        return s.master.detach() if key == "master" else self.inner.state[s.master][key]

    def _pack(self, layout: list[Segment]) -> torch.Tensor:
        return torch.cat([self._tensor(seg).reshape(-1) for seg in layout])

    def _point_at(self, layout: list[Segment], flat: torch.Tensor) -> None:
        """Make the masters and state tensors of ``layout`` views of ``flat``."""
        offset = 0
        for s, key in layout:
            view = flat[offset : offset + s.shard_numel]
            offset += s.shard_numel
            if key == "master":
                s.master.data = view
            else:
                self.inner.state[s.master][key] = view

    def _remap(self) -> None:
        for k, layout in enumerate(self.layouts):
            self._point_at(layout, self.swap.mapped(k))

    # -- the step --------------------------------------------------------------------------
    def _update(self, unused: set[ParamShard]) -> dict[ParamShard, torch.Tensor]:
        new_weights: dict[ParamShard, torch.Tensor] = {}
        new_layouts = list(self.layouts)

        def update(k: int, record: torch.Tensor) -> torch.Tensor | None:
            sub = self.sub_groups[k]
            self._point_at(self.layouts[k], record)
            self._step_sub_group(sub, unused)
            for s in sub:  # the weights, kept until every rank has committed the step
                new_weights[s] = s.master.detach().to(s.param.dtype, copy=True)
            layout = self._layout(sub)
            if layout == self.layouts[k]:
                return None
            new_layouts[k] = layout  # state created this step: a longer record
            return self._pack(layout)

        self._transaction(update, new_layouts)
        self._step_on_device(unused)
        return new_weights

    def _write_back(self) -> None:
        """Write the masters and state as they are now (a checkpoint load changed them) to
        the swap files, then update the model's weights from them."""

        def rewrite(k: int, record: torch.Tensor) -> torch.Tensor:
            new_layouts[k] = self._layout(self.sub_groups[k])
            return self._pack(new_layouts[k])

        new_layouts = list(self.layouts)
        self._transaction(rewrite, new_layouts)
        super()._write_back()

    def _transaction(self, update: Any, new_layouts: list[list[Segment]]) -> None:
        """Run a swap step; on success adopt the new layouts, on failure put back the state
        the optimizer had (its records are still in the current files) and drop the
        gradients. Either way, leave the masters and state mapped from the files."""
        self.swap.check_open()
        in_files = {(id(s), key) for layout in self.layouts for s, key in layout}
        kept = {
            s: {
                k: (v.clone() if torch.is_tensor(v) else v)
                for k, v in self._state_of(s).items()
                if (id(s), k) not in in_files
            }
            for s in self.offloaded  # the device's share steps after the commit
        }
        try:
            self.swap.step(update)
        except BaseException:
            for s, state in kept.items():
                self.inner.state[s.master] = state
            self._remap()
            self.zero_grad()
            raise
        self.layouts = new_layouts
        self._remap()


def device_bytes(engine: Any) -> int:
    """Bytes of the tensors an engine keeps on its compute device, measured now (between
    steps: what offload does not move off the device).

    Counted, once per storage (views of one buffer count its whole storage): the module's
    parameter data (whole small params, and any stage-3 param still gathered) and buffers;
    stage-3 partitions (``shard.local``) unless ``offload_param`` holds them; full
    ``.grad``; the fp32 gradient partitions, the fp32 masters, their ``.grad`` and the
    optimizer state tensors unless ``offload_optimizer`` holds them (with a ratio below 1,
    the kept sub-groups' are counted). On a CPU-only machine the device is the CPU, so what
    is offloaded is told by who owns it, not by its device.
    """
    opt = engine.optimizer
    offloaded = opt.offloaded if isinstance(opt, CpuOffloadOptimizer) else set()
    tensors: list[torch.Tensor | None] = [p.data for p in engine.module.parameters()]
    tensors += [p.grad for p in engine.module.parameters()]
    tensors += list(engine.module.buffers())
    shards = {id(s): s for g in engine.shard_groups for s in g}
    for p in engine.module.parameters():  # frozen stage-3 params are in no group
        if getattr(p, "zs_shard", None) is not None:
            shards.setdefault(id(p.zs_shard), p.zs_shard)
    for s in shards.values():
        if s.store is None:
            tensors.append(s.local)
        if s not in offloaded:  # else they are in the offload optimizer's memory
            tensors.append(s.grad)
            if s.master is not None:
                tensors += [s.master, s.master.grad]
    if opt is not None:
        away = {id(s.master) for s in offloaded}
        for key, state in opt.inner.state.items():
            if id(key) not in away:
                tensors += [v for v in state.values() if torch.is_tensor(v)]
    seen: dict[int, int] = {}
    for t in tensors:
        if t is not None and t.numel():
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())

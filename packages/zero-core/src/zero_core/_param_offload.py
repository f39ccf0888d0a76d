"""``zero_optimization.offload_param``: stage-3 partitions kept in CPU memory or on NVMe
between uses.

[Note: parameter offload]
At stage 3 every partitioned parameter's ``shard.local`` (this rank's partition, in the
compute dtype) normally stays on the device. Under ``offload_param`` a *store* owns it
instead, and ``shard.store`` points at that store. The gather path asks the store for a
device copy of the partition just before the all-gather (``fetch``); the prefetch (forward
and backward) fetches upcoming partitions early, together with their gathers, and with NVMe
reads them ahead (``read_ahead``) into the pinned buffer pool. After the optimizer step the new
partitions go back through the store (``write_back``), never into a device tensor. So
between uses no partition occupies device memory; the gathered full parameter is released
after use as without offload.

With ``device = "cpu"`` ``shard.local`` is a CPU tensor (page-locked with ``pin_memory``
when there is a CUDA device to copy to). With ``device = "nvme"`` the first partitions in
model order, up to ``max_in_cpu`` elements, stay in CPU memory as with ``"cpu"``; the others
live in two slot files each under ``nvme_path/<run dir>/rank<r>/params/``, and
``shard.local`` is a copy-on-write memory map of the current slot, so code that reads it
(building the fp32 masters) pages it in from the file. A fetch reads the file through
zero-aio into one of ``buffer_count`` pinned buffers, each at most ``buffer_size``
elements.

[Note: parameter write-back commits on every rank or on none]
A write-back writes each on-disk partition to its *other* slot, then the ranks vote (see
[Note: a swapped step commits on every rank or on none] in ``zero_core._swap``). If every
rank wrote everything, the other slots become current. If any failed (a full disk), no
slot changes anywhere: the files keep the previous weights whole, and the new weights stay
in CPU memory (the model computes with them, so the step stands and training is exact).
Writing them is retried, again on every rank at once, when a partition is next fetched;
if that fails too, the fetch (the forward) raises naming the file, with nothing changed,
and calling it again once there is room continues where it stopped.
"""

from __future__ import annotations

import contextlib
import functools
import os
import weakref
from collections.abc import Iterable
from typing import Any

import torch

from . import _aio, _dist
from ._shard import ParamShard
from ._swap import Slot, all_ranks_ok, make_run_dir, remove_dir

__all__ = ["CpuParamStore", "NvmeParamStore", "make_param_store"]

_WHERE = "zero_optimization.offload_param"


def make_param_store(
    config: Any, shards: list[ParamShard], handle_options: dict[str, Any]
) -> CpuParamStore | None:
    """The store ``offload_param`` asks for, owning the partitions of ``shards`` (the
    stage-3 ones among them), or None without the block.

    Raises:
        ValueError: a partition larger than ``buffer_size``; an ``nvme_path`` that is
            missing or not writable.
        ImportError: NVMe offload without zero-aio installed.
    """
    block = config.zero_optimization.offload_param
    if block is None:
        return None
    partitioned = [s for s in shards if s.local is not None]
    if block.device == "cpu":
        return CpuParamStore(partitioned, pin_memory=block.pin_memory)
    handle = _aio.aio("aio_handle")  # before anything is created: fails without zero-aio
    return NvmeParamStore(
        partitioned,
        nvme_path=str(block.nvme_path),
        new_handle=functools.partial(handle, **handle_options),
        buffer_count=block.buffer_count,
        buffer_size=block.buffer_size,
        max_in_cpu=block.max_in_cpu,
        pin_memory=block.pin_memory,
    )


class CpuParamStore:
    """Partitions in CPU memory; a fetch copies one to the device.

    Args:
        shards: the stage-3 shards whose ``local`` it takes over.
        pin_memory: page-locked memory (only when CUDA is there to copy to).
    """

    def __init__(self, shards: list[ParamShard], *, pin_memory: bool) -> None:
        self.pin = pin_memory and torch.cuda.is_available()
        self.shards = shards
        #: partitions copied to the device so far (a fetch is a copy, never the stored tensor)
        self.fetches = 0
        for s in shards:
            s.local = self._in_memory(s.local)
            s.store = self

    def _in_memory(self, t: torch.Tensor) -> torch.Tensor:
        out = t.detach().to("cpu", copy=True)
        return out.pin_memory() if self.pin else out

    def holds(self, s: ParamShard) -> bool:
        return s.store is self

    # -- the gather path -------------------------------------------------------------------
    def read_ahead(self, shards: Iterable[ParamShard]) -> None:
        """Nothing to read: a CPU partition is fetched by the prefetch's gather itself."""

    def fetch(self, s: ParamShard, device: torch.device) -> torch.Tensor:
        """A device copy of ``s``'s partition (the all-gather's input)."""
        self.fetches += 1
        return s.local.to(device, copy=True, non_blocking=self.pin)

    # -- updates ---------------------------------------------------------------------------
    @torch.no_grad()
    def write_back(self, updates: list[tuple[ParamShard, torch.Tensor]]) -> None:
        """Store each shard's new weights (any float dtype; cast to the partition's)."""
        for s, weights in updates:
            s.local.copy_(weights)

    def close(self) -> None:
        """Nothing to free: the partitions go with the shards."""


class NvmeParamStore(CpuParamStore):
    """Partitions in two-slot files on NVMe, read through zero-aio's pinned buffers (the
    first ``max_in_cpu`` elements stay in CPU memory). See the Notes above."""

    def __init__(
        self,
        shards: list[ParamShard],
        *,
        nvme_path: str,
        new_handle: Any,
        buffer_count: int,
        buffer_size: int,
        max_in_cpu: int,
        pin_memory: bool,
    ) -> None:
        in_cpu, on_disk, used = [], [], 0
        for s in shards:
            if used + s.shard_numel <= max_in_cpu:
                in_cpu.append(s)
                used += s.shard_numel
            else:
                on_disk.append(s)
        too_big = [s for s in on_disk if s.shard_numel > buffer_size]
        if too_big:
            s = max(too_big, key=lambda s: s.shard_numel)
            raise ValueError(
                f"{_WHERE}.buffer_size = {buffer_size} elements is smaller than the partition "
                f"of {s.name!r} on this rank ({s.shard_numel} elements); raise buffer_size to "
                f"at least {s.shard_numel}, or raise {_WHERE}.max_in_cpu to keep it in CPU memory"
            )
        rank_dir = make_run_dir(nvme_path, _dist.rank(), where=f"{_WHERE}.nvme_path")
        self.rank_dir = rank_dir
        self._cleanup = weakref.finalize(self, remove_dir, rank_dir)
        self.dir = os.path.join(rank_dir, "params")
        os.makedirs(self.dir)
        super().__init__(in_cpu, pin_memory=pin_memory)
        self.in_cpu = in_cpu
        self.on_disk = on_disk
        self.index = {id(s): k for k, s in enumerate(on_disk)}
        self.current = [0] * len(on_disk)  # each partition's current slot file
        self.dirty: set[int] = set()  # on-disk partitions whose new weights are in memory
        self.slots = [Slot(new_handle()) for _ in range(buffer_count if on_disk else 0)]
        self.free = list(self.slots)
        self.reading: dict[int, Slot] = {}  # id(shard) -> the slot reading it ahead
        self.shards = shards
        for s in on_disk:
            s.store = self
        error = None
        try:
            self._write(on_disk, [s.local for s in on_disk], slot_of=lambda k: 0)
        except OSError as exc:
            error = exc
        if not all_ranks_ok(error):
            self.close()
            raise error or OSError(f"{_WHERE}: another rank could not write its partitions")
        for s in on_disk:
            s.local = self._mapped(s)

    def path(self, s: ParamShard, slot: int) -> str:
        return os.path.join(self.dir, f"param{self.index[id(s)]}.{slot}")

    def _mapped(self, s: ParamShard) -> torch.Tensor:
        """The partition as its current file holds it, memory-mapped copy-on-write."""
        k = self.index[id(s)]
        return torch.from_file(
            self.path(s, self.current[k]), shared=False, size=s.shard_numel, dtype=s.local.dtype
        )

    def _on_disk(self, s: ParamShard) -> bool:
        k = self.index.get(id(s))
        return k is not None and k not in self.dirty

    def _check_open(self) -> None:
        if not self._cleanup.alive:
            raise RuntimeError(
                f"the NVMe parameter files under {self.rank_dir} were removed (the engine was "
                f"destroyed); build a new engine to train again"
            )

    # -- the gather path -------------------------------------------------------------------
    def read_ahead(self, shards: Iterable[ParamShard]) -> None:
        """Start reading the on-disk partitions of ``shards``, in order, into free buffers
        (one buffer is always left for a fetch that was not read ahead)."""
        if self.dirty or not self._cleanup.alive:
            return
        for s in shards:
            if len(self.free) <= 1:
                return
            if self.holds(s) and self._on_disk(s) and id(s) not in self.reading:
                slot = self.free.pop(0)
                self._start_read(slot, s)
                self.reading[id(s)] = slot

    def _start_read(self, slot: Slot, s: ParamShard) -> None:
        buf = slot.fit(s.shard_numel, s.local)
        slot.handle.async_pread(buf, self.path(s, self.current[self.index[id(s)]]))
        slot.busy = True

    def fetch(self, s: ParamShard, device: torch.device) -> torch.Tensor:
        self._check_open()
        if self.dirty:
            self._settle()
        if not self._on_disk(s):
            return super().fetch(s, device)
        self.fetches += 1
        slot = self.reading.pop(id(s), None)
        if slot is None:
            slot = self.free.pop(0)
            self._start_read(slot, s)
        try:
            slot.wait()
            return slot.buffer[: s.shard_numel].to(device, copy=True)
        finally:
            self.free.append(slot)

    def _drop_reads(self) -> None:
        """Forget the partitions read ahead (their files are about to change)."""
        for slot in self.reading.values():
            with contextlib.suppress(OSError):  # a read nobody will use
                slot.wait()
            self.free.append(slot)
        self.reading.clear()

    # -- updates ---------------------------------------------------------------------------
    @torch.no_grad()
    def write_back(self, updates: list[tuple[ParamShard, torch.Tensor]]) -> None:
        """Store new weights: in memory for the partitions kept there, to the other slot
        files for the rest, committed on every rank or none (see [Note: parameter write-back
        commits on every rank or on none]). A failed commit keeps them in memory."""
        self._check_open()
        self._drop_reads()
        disk = [(s, w) for s, w in updates if id(s) in self.index]
        super().write_back([(s, w) for s, w in updates if id(s) not in self.index])
        if disk:
            self._commit([s for s, _ in disk], [w for _, w in disk])

    def _settle(self) -> None:
        """Write the partitions a failed write-back left in memory (every rank at once)."""
        pending = [s for s in self.on_disk if self.index[id(s)] in self.dirty]
        self._drop_reads()
        self._commit(pending, [s.local for s in pending])
        if self.dirty:
            raise self.error

    def _commit(self, shards: list[ParamShard], weights: list[torch.Tensor]) -> None:
        error = None
        try:
            self._write(shards, weights, slot_of=lambda k: 1 - self.current[k])
        except OSError as exc:
            error = exc
        if all_ranks_ok(error):
            for s in shards:
                k = self.index[id(s)]
                self.current[k] = 1 - self.current[k]
                self.dirty.discard(k)
                s.local = self._mapped(s)
            return
        for s, w in zip(shards, weights):  # the files keep the old weights; memory the new
            if w is not s.local:  # (a retry writes what memory already holds)
                s.local = w.to("cpu", s.local.dtype, copy=True).reshape(-1)
            self.dirty.add(self.index[id(s)])
        cause = (
            f"writing a partition failed ({error})"
            if error is not None
            else "another rank failed to write its partitions"
        )
        self.error = OSError(
            getattr(error, "errno", None),
            f"NVMe parameter offload: {cause}; no parameter file changed on any rank (they "
            f"hold the previous weights), the new weights are kept in CPU memory and the "
            f"write is retried when a parameter is next fetched: free space under "
            f"{self.rank_dir} and call again",
        )

    def _write(self, shards: list[ParamShard], weights: list[torch.Tensor], slot_of: Any) -> None:
        """Write each partition through the pool, round robin, to ``slot_of(index)``."""
        try:
            for i, (s, w) in enumerate(zip(shards, weights)):
                slot = self.slots[i % len(self.slots)]
                slot.wait()  # its previous write
                buf = slot.fit(s.shard_numel, s.local)
                buf.copy_(w.reshape(-1))
                slot.handle.async_pwrite(buf, self.path(s, slot_of(self.index[id(s)])))
                slot.busy = True
        finally:
            first: OSError | None = None
            for slot in self.slots:
                try:
                    slot.wait()
                except OSError as exc:
                    first = first or exc
            if first is not None:
                raise first

    def close(self) -> None:
        """Delete this rank's parameter files now (also done at interpreter exit)."""
        self._drop_reads()
        self._cleanup()

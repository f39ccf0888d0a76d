"""Optimizer records on NVMe: swap files, a pinned buffer pool, and steps that commit or not.

[Note: a swapped step commits on every rank or on none]
Every sub-group's *record* (its fp32 masters and optimizer-state tensors, one flat fp32
array) has two files, slot 0 and slot 1, of which one is *current*. A step reads each record
from its current slot into a pinned buffer, lets the optimizer update it there, and writes
it to the *other* slot; the current slots are not written during a step. Once every write
has finished, the ranks agree (one all-reduce of a failure flag): if all succeeded, every
record's other slot becomes current; if any rank failed (disk full, an I/O error, an error
in the update), no slot changes on any rank, so the files still hold the previous step's
state, and the step raises everywhere. This costs twice the disk space of the records; in
exchange a full disk never leaves half of the model updated or a record half written.

[Note: the swap pipeline]
The pool holds ``buffer_count`` buffers, one record each, and one ``aio_handle`` per buffer
(so waiting for one buffer's transfer does not wait for the others'). With
``pipeline_read``, records are read ahead into every free buffer, so reading the next
sub-group overlaps the update of the current one; with ``pipeline_write``, a buffer's write
is only waited for when the buffer is needed again, so writing overlaps the next update.
Without them (DeepSpeed's defaults), each record is read, updated and written in turn.

Between steps the records are not in memory: ``mapped(k)`` maps the current slot's file
read-only in effect (copy-on-write), so code that reads the masters between steps (a
checkpoint save) pages them in from the file, and writes to the mapping never reach it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import weakref
from collections.abc import Callable
from typing import Any

import torch

from . import _dist

__all__ = ["Slot", "SwapFiles", "all_ranks_ok", "make_run_dir", "remove_dir"]

_F32 = torch.empty(0, dtype=torch.float32)


def make_run_dir(
    nvme_path: str, rank: int, where: str = "zero_optimization.offload_optimizer.nvme_path"
) -> str:
    """Create ``nvme_path/zerospeed-offload-<token>/rank<rank>/`` (the token is rank 0's,
    the same on every rank) and return it; ``where`` is the config key errors name.

    Raises:
        ValueError: ``nvme_path`` does not exist, is not a directory or is not writable.
    """
    if not os.path.exists(nvme_path):
        raise ValueError(
            f"{where}: {nvme_path!r} does not exist; create it or point nvme_path at a "
            f"directory on the NVMe drive"
        )
    if not os.path.isdir(nvme_path):
        raise ValueError(f"{where}: {nvme_path!r} is not a directory; give a directory")
    token = torch.tensor([secrets.randbits(62)], dtype=torch.int64)
    _dist.broadcast(token, 0)
    run_dir = os.path.join(nvme_path, f"zerospeed-offload-{int(token):016x}")
    rank_dir = os.path.join(run_dir, f"rank{rank}")
    try:
        os.makedirs(rank_dir)
        probe = os.path.join(rank_dir, ".probe")
        with open(probe, "wb") as f:
            f.write(b"\0")
        os.remove(probe)
    except OSError as exc:
        raise ValueError(
            f"{where}: cannot write under {nvme_path!r} ({exc.strerror or exc}); give a "
            f"directory this process can write to"
        ) from exc
    return rank_dir


def all_ranks_ok(error: BaseException | None) -> bool:
    """Whether no rank failed (``error`` is this rank's failure): one all-reduce that every
    rank must reach, so that all of them commit or none does."""
    failed = torch.tensor([0 if error is None else 1], dtype=torch.int32)
    _dist.all_reduce_max(failed)
    return not int(failed)


def remove_dir(rank_dir: str) -> None:
    shutil.rmtree(rank_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # the run directory goes with its last rank
        os.rmdir(os.path.dirname(rank_dir))


class Slot:
    """One pool buffer and the handle that moves it."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.buffer: torch.Tensor = _F32
        self.record = -1  # the record it holds (or is reading), -1: none
        self.busy = False  # a transfer was queued and not waited for

    def fit(self, numel: int, like: torch.Tensor = _F32) -> torch.Tensor:
        """The first ``numel`` elements of the buffer, as ``like``'s dtype (grown if needed)."""
        if self.buffer.numel() < numel or self.buffer.dtype != like.dtype:
            self.buffer = _F32  # drop the old memory before taking more
            self.buffer = self.handle.new_cpu_locked_tensor(numel, like)
        return self.buffer[:numel]

    def wait(self) -> None:
        if self.busy:
            self.busy = False
            self.handle.wait()


class SwapFiles:
    """The records of this rank's sub-groups, two slot files each (see the Notes above).

    Args:
        rank_dir: this rank's directory (from :func:`make_run_dir`); removed with the
            object or at interpreter exit.
        new_handle: builds one ``aio_handle`` (zero-aio's, configured by the ``"aio"``
            block).
        buffer_count: buffers in the pool (at least 1).
        pipeline_read, pipeline_write: overlap reads / writes with updates.
    """

    def __init__(
        self,
        rank_dir: str,
        new_handle: Callable[[], Any],
        buffer_count: int,
        pipeline_read: bool,
        pipeline_write: bool,
    ) -> None:
        self.rank_dir = rank_dir
        self._cleanup = weakref.finalize(self, remove_dir, rank_dir)
        self.slots = [Slot(new_handle()) for _ in range(max(1, buffer_count))]
        self.pipeline_read = pipeline_read
        self.pipeline_write = pipeline_write
        self.sizes: list[int] = []  # elements of each record
        self.current: list[int] = []  # each record's current slot file, 0 or 1

    def path(self, k: int, slot: int) -> str:
        return os.path.join(self.rank_dir, f"subgroup{k}.{slot}")

    def remove(self) -> None:
        """Delete this rank's swap files now (also done when the object goes away or the
        interpreter exits); no step can run afterwards."""
        self._cleanup()

    def check_open(self) -> None:
        if not self._cleanup.alive:
            raise RuntimeError(
                f"the NVMe swap files under {self.rank_dir} were removed (the optimizer was "
                f"closed); build a new engine to train again"
            )

    # -- records ---------------------------------------------------------------------------
    def add(self, flat: torch.Tensor) -> int:
        """Write a new record (a 1D fp32 tensor) to its slot 0; returns its index."""
        k = len(self.sizes)
        slot = self.slots[0]
        slot.wait()
        buf = slot.fit(flat.numel())
        buf.copy_(flat)
        slot.handle.sync_pwrite(buf, self.path(k, 0))
        self.sizes.append(flat.numel())
        self.current.append(0)
        return k

    def mapped(self, k: int) -> torch.Tensor:
        """Record ``k`` as it is in its current file, memory-mapped copy-on-write."""
        return torch.from_file(
            self.path(k, self.current[k]), shared=False, size=self.sizes[k], dtype=torch.float32
        )

    # -- a step ----------------------------------------------------------------------------
    def step(self, update: Callable[[int, torch.Tensor], torch.Tensor | None]) -> None:
        """Read every record, ``update(k, record)`` it in place, write it to its other slot,
        and commit on every rank or on none (see [Note: a swapped step commits on every
        rank or on none]). ``update`` may return a new flat tensor to write instead (the
        record's layout changed: optimizer state created this step).

        Raises:
            OSError: a read or write failed on this rank (naming the file) or on another
                rank; nothing was committed, the files hold the previous step's state.
        """
        self.check_open()
        new_sizes = list(self.sizes)
        error: BaseException | None = None
        try:
            self._run(update, new_sizes)
        except BaseException as exc:  # every rank must reach the vote below
            error = exc
            self._drain()
        ok = all_ranks_ok(error)
        if isinstance(error, OSError):
            raise OSError(
                error.errno,
                f"NVMe offload: swapping optimizer state under {self.rank_dir} failed "
                f"({error}); the step was refused on every rank and the optimizer state is the "
                f"previous step's (its swap files are untouched): free space there, or fix the "
                f"device, and continue with the next step",
            ) from error
        if error is not None:
            raise error
        if not ok:
            raise OSError(
                "NVMe offload: another rank failed to swap its optimizer state this step; "
                "the step was refused on every rank and the optimizer state is the previous "
                "step's (see that rank's error)"
            )
        self.sizes = new_sizes
        self.current = [1 - c for c in self.current]

    def _run(
        self, update: Callable[[int, torch.Tensor], torch.Tensor | None], new_sizes: list[int]
    ) -> None:
        n, pool = len(self.sizes), len(self.slots)
        # records read ahead during an update: the other buffers, less the one being written
        ahead = max(0, pool - (2 if self.pipeline_write else 1)) if self.pipeline_read else 0
        next_read = 0
        for slot in self.slots:
            slot.record = -1

        def read_until(limit: int) -> None:
            nonlocal next_read
            while next_read < min(n, limit):
                slot = self.slots[next_read % pool]
                slot.wait()  # the write of the record it held before
                buf = slot.fit(self.sizes[next_read])
                slot.handle.async_pread(buf, self.path(next_read, self.current[next_read]))
                slot.record, slot.busy = next_read, True
                next_read += 1

        for k in range(n):
            read_until(k + 1 + ahead)
            slot = self.slots[k % pool]
            assert slot.record == k, (slot.record, k)
            slot.wait()
            record = slot.buffer[: self.sizes[k]]
            replaced = update(k, record)
            source = record if replaced is None else replaced
            new_sizes[k] = source.numel()
            slot.handle.async_pwrite(source, self.path(k, 1 - self.current[k]))
            slot.busy = True
            # ``replaced`` is a temporary the write needs until it is done
            if not self.pipeline_write or replaced is not None:
                slot.wait()
        for slot in self.slots:
            slot.wait()

    def _drain(self) -> None:
        """Let every queued transfer finish (their buffers stay in use until then)."""
        for slot in self.slots:
            with contextlib.suppress(OSError):
                slot.wait()

"""Reading a ``save`` file: into new tensors (``load``, ``load_tensors``) or into the
caller's (``load_into``), every tensor checksum-verified.

[Note: one pass over the file, copies and checksums behind the disk]
A read is planned as jobs in file order, each one request of at most a chunk
(``block_size * queue_depth * intra_op_parallelism`` of the handle, within 4-32 MiB):

* a *direct* job reads a stretch of one tensor straight into its destination, which sits at
  the same position within a page as the tensor in the file (see [Note: reading straight
  into a tensor] in ``_memory``), so the bulk moves with O_DIRECT and nothing is copied.
  ``load`` and ``load_tensors`` allocate their results that way, in huge pages.
* a *staged* job reads a stretch of the file into a staging buffer lined up with the file
  (so also with O_DIRECT; huge pages), then copies each tensor's part of it out: for runs
  of small tensors, which one request then fetches together, for destinations that do not
  line up, and by default for all of ``load_into``'s. Memory zero-aio did not allocate is
  usually 4 KiB pages scattered over physical memory, which a device moves slower than
  huge pages (see [Note: huge pages for I/O buffers] in csrc/host_buffer.hpp): reading a
  256 MiB tensor into lined-up ``torch.empty`` memory measured 0.93 GB/s here, through
  staging and a copy 1.27 GB/s (and a whole checkpoint load 2.7 s against 2.3 s).
  ``direct=True`` reads lined-up destinations in place instead, for memory that is itself
  huge-page backed (``new_cpu_locked_tensor``) or when CPU time is scarcer than disk time.

Job k+1 is in flight while job k is copied and checksummed, so on a machine with a core to
spare the copies and checksums cost nothing next to the disk. Each tensor's CRC-32C is
extended part by part (``crc32c_combine``) and compared when its last byte has arrived.
Jobs k and k+1 never use the same one of the two staging buffers. 32 MiB chunks measured
fastest here (4 MiB: 0.70 GB/s, 16 MiB: 1.09, 32 MiB: 1.27, 64 MiB: 0.83, where faulting
in two 64 MiB staging buffers costs more than larger requests gain).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import torch

from . import _C
from ._format import SMALL_TENSOR_BYTES, ChecksumError, TensorEntry, _crc, read_index
from ._handle import aio_handle, default_handle, default_threads
from ._memory import PAGE, host_bytes

__all__ = ["load", "load_into", "load_tensors"]

_MIN_CHUNK = 4 << 20
_MAX_CHUNK = 32 << 20
#: Staged tensors further apart than this in the file are fetched by separate requests.
_MAX_GAP = 1 << 20


class _Target(NamedTuple):
    """One tensor to read: its index entry and its destination's bytes."""

    entry: TensorEntry
    dest: torch.Tensor  # uint8, 1-D, entry.nbytes long


class _Part(NamedTuple):
    """The bytes of target ``slot`` at ``start`` (relative to its job's file offset)."""

    slot: int
    start: int
    nbytes: int
    dest: torch.Tensor | None  # staged: where to copy them; direct: None (already there)


class _Job(NamedTuple):
    """One request: ``nbytes`` at file ``offset``, into ``into`` (direct) or staging."""

    offset: int
    nbytes: int
    into: torch.Tensor | None
    parts: list[_Part]


def _chunk_bytes(h: aio_handle) -> int:
    n = h.get_block_size() * h.get_queue_depth() * h.get_intra_op_parallelism()
    return min(max(n, _MIN_CHUNK), _MAX_CHUNK) // PAGE * PAGE


def _pieces(offset: int, nbytes: int, chunk: int) -> Iterable[tuple[int, int]]:
    """(start, length) within a tensor: every piece after the first starts on a page of the
    file, so direct pieces stay lined up."""
    start, length = 0, chunk - offset % PAGE
    while start < nbytes:
        yield start, min(length, nbytes - start)
        start += length
        length = chunk


def _plan(targets: list[_Target], chunk: int, direct: bool) -> list[_Job]:
    """The jobs (see the Note) in file order; ``direct``: lined-up destinations of 64 KiB
    or more are read in place."""
    jobs: list[_Job] = []
    group: list[int] = []  # small staged targets fetched by one request

    def close_group() -> None:
        if group:
            first, last = targets[group[0]].entry, targets[group[-1]].entry
            end = last.offset + last.nbytes
            parts = [
                _Part(i, targets[i].entry.offset - first.offset, targets[i].entry.nbytes,
                      targets[i].dest)
                for i in group
            ]  # fmt: skip
            jobs.append(_Job(first.offset, end - first.offset, None, parts))
            group.clear()

    for i in sorted(range(len(targets)), key=lambda i: targets[i].entry.offset):
        e, dest = targets[i]
        if e.nbytes == 0:
            continue
        in_place = (
            direct and e.nbytes >= SMALL_TENSOR_BYTES and dest.data_ptr() % PAGE == e.offset % PAGE
        )
        if in_place or e.nbytes > chunk // 2:
            close_group()
            for start, n in _pieces(e.offset, e.nbytes, chunk):
                part = dest[start : start + n]
                if in_place:
                    jobs.append(_Job(e.offset + start, n, part, [_Part(i, 0, n, None)]))
                else:
                    jobs.append(_Job(e.offset + start, n, None, [_Part(i, 0, n, part)]))
            continue
        if group:
            first, prev = targets[group[0]].entry, targets[group[-1]].entry
            too_far = e.offset - (prev.offset + prev.nbytes) > _MAX_GAP
            if too_far or e.offset + e.nbytes - first.offset > chunk:
                close_group()
        group.append(i)
    close_group()
    return jobs


def _read(path: str, targets: list[_Target], h: aio_handle, verify: bool, direct: bool) -> None:
    """Run the plan (see the Note); raise ``ChecksumError`` for the first corrupt tensor."""
    if verify:
        for t in targets:
            if t.entry.nbytes == 0 and t.entry.crc32c != 0:
                _mismatch(path, t.entry, 0)
    jobs = _plan(targets, _chunk_bytes(h), direct)
    staged = [j.nbytes for j in jobs if j.into is None]
    staging = [host_bytes(max(staged) + PAGE) for _ in range(min(2, len(staged)))]
    crcs = [0] * len(targets)
    left = [t.entry.nbytes for t in targets]
    threads = default_threads()

    def submit(k: int) -> torch.Tensor:
        job = jobs[k]
        if job.into is not None:
            buf = job.into
        else:  # lined up with the file, so the bulk of a staged read is O_DIRECT too
            at = job.offset % PAGE
            buf = staging[k % len(staging)][at : at + job.nbytes]
        h.async_pread(buf, path, file_offset=job.offset)
        return buf

    in_flight = False
    try:
        if jobs:
            buf, in_flight = submit(0), True
        for k, job in enumerate(jobs):
            in_flight = False  # wait() returns (or raises) only once job k has finished
            h.wait()
            done = buf
            if k + 1 < len(jobs):
                buf, in_flight = submit(k + 1), True
            for part in job.parts:
                got = done[part.start : part.start + part.nbytes]
                if part.dest is not None:
                    part.dest.copy_(got)
                if not verify:
                    continue
                crc = _crc(got.data_ptr(), part.nbytes, threads)
                crcs[part.slot] = _C.crc32c_combine(crcs[part.slot], crc, part.nbytes)
                left[part.slot] -= part.nbytes
                entry = targets[part.slot].entry
                if left[part.slot] == 0 and crcs[part.slot] != entry.crc32c:
                    _mismatch(path, entry, crcs[part.slot])
    finally:
        if in_flight:  # its buffer must not be freed under it; its own failure is secondary
            with contextlib.suppress(OSError):
                h.wait()


def _mismatch(path: str, e: TensorEntry, got: int) -> None:
    raise ChecksumError(
        f"checksum mismatch in tensor {e.name!r} ({e.nbytes} bytes at offset {e.offset}): "
        f"stored {e.crc32c:08x}, computed {got:08x}; the file is corrupt",
        path,
        e.name,
        e.offset,
    )


def _fresh(entries: list[TensorEntry], pin: bool) -> list[torch.Tensor]:
    """New tensors for ``entries``: large ones lined up with the file, each in memory of its
    own; small ones (copied out of a shared request anyway) from the heap, or from one
    locked block when ``pin``."""
    out: list[torch.Tensor | None] = [None] * len(entries)
    small = [i for i, e in enumerate(entries) if 0 < e.nbytes < SMALL_TENSOR_BYTES]
    pool = host_bytes(sum(-(-entries[i].nbytes // 64) * 64 for i in small), pin=True) if (
        pin and small
    ) else None  # fmt: skip
    at = 0
    for i, e in enumerate(entries):
        if e.nbytes == 0 or (pool is None and e.nbytes < SMALL_TENSOR_BYTES):
            out[i] = torch.empty(e.shape, dtype=e.dtype)
            continue
        if e.nbytes < SMALL_TENSOR_BYTES:
            raw, at = pool[at : at + e.nbytes], at + -(-e.nbytes // 64) * 64
        else:
            raw = host_bytes(e.nbytes, phase=e.offset, pin=pin)
        out[i] = raw.view(e.dtype).view(e.shape)
    return out  # type: ignore[return-value]


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).view(torch.uint8)


def _entries_for(
    path: str, names: Iterable[str] | None, entries: list[TensorEntry] | None
) -> list[TensorEntry]:
    found = entries if entries is not None else read_index(path)[0]
    if names is None:
        return list(found)
    by_name = {e.name: e for e in found}
    wanted = list(dict.fromkeys(names))
    for n in wanted:
        if n not in by_name:
            held = ", ".join(list(by_name)[:8]) + (", ..." if len(by_name) > 8 else "")
            raise KeyError(f"{path} holds no tensor {n!r} (it holds: {held})")
    return [by_name[n] for n in wanted]


def load(
    path: str | os.PathLike,
    *,
    pin_memory: bool = False,
    verify: bool = True,
    handle: aio_handle | None = None,
) -> dict[str, torch.Tensor]:
    """Read a file written by ``save``: ``{name: tensor}`` in the saved order.

    Each tensor of 64 KiB or more gets memory of its own, allocated at the position within
    a page its bytes have in the file, and is read straight into it with O_DIRECT; smaller
    ones come in shared requests and are copied out. ``pin_memory`` page-locks the results
    (CUDA-pins them when CUDA is available; small ones then share one locked block).
    ``verify`` checks every tensor's CRC-32C and raises ``ChecksumError`` (naming the
    tensor, offset and path) on a mismatch. A file shorter than its index says raises
    ``OSError`` with errno ``ENODATA``. ``handle`` must have no operations of its own
    queued (this waits on it); by default this thread's shared handle.
    """
    return load_tensors(path, None, pin_memory=pin_memory, verify=verify, handle=handle)


def load_tensors(
    path: str | os.PathLike,
    names: Iterable[str] | None,
    *,
    pin_memory: bool = False,
    verify: bool = True,
    handle: aio_handle | None = None,
    entries: list[TensorEntry] | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors ``names`` (all when ``None``) of a file written by ``save``, in the order
    asked, read as ``load`` reads them: only their bytes are fetched. ``entries``
    (``read_index(path)[0]``, if the caller has it) saves reading the index again.

    Raises ``KeyError`` naming a tensor the file does not hold (and the ones it does), and
    what ``load`` raises.
    """
    path = os.fsdecode(os.fspath(path))
    entries = _entries_for(path, names, entries)
    tensors = _fresh(entries, pin_memory)
    targets = [_Target(e, _as_bytes(t)) for e, t in zip(entries, tensors)]
    _read(path, targets, handle if handle is not None else default_handle(), verify, True)
    return {e.name: t for e, t in zip(entries, tensors)}


def _check_destinations(path: str, entries: list[TensorEntry], tensors: list[object]) -> None:
    """Every destination must be able to take its tensor's bytes as they are (else raise,
    naming it and the fix); none may share memory with another."""
    spans = []
    for e, t in zip(entries, tensors):
        what = f"tensors[{e.name!r}]"
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what} is a {type(t).__name__}, not a torch.Tensor")
        if t.device.type != "cpu" or t.layout is not torch.strided:
            raise ValueError(
                f"{what} is a {t.layout} tensor on {t.device}; zero-aio reads into dense CPU "
                f"tensors: read into a CPU tensor, then copy it where it belongs"
            )
        if t.dtype != e.dtype or tuple(t.shape) != e.shape:
            raise ValueError(
                f"{what} is {t.dtype} {list(t.shape)} but {path} holds {e.dtype} "
                f"{list(e.shape)} under that name; pass a tensor of that dtype and shape"
            )
        if not t.is_contiguous() or t.is_conj() or t.is_neg():
            raise ValueError(
                f"{what} is not one contiguous block of plain values (a view with strides, "
                f"or a lazily conjugated/negated tensor); read into a contiguous tensor and "
                f"copy it into place"
            )
        if e.nbytes:
            spans.append((t.data_ptr(), t.data_ptr() + e.nbytes, e.name))
    spans.sort()
    for (_, end, a), (start, _, b) in itertools.pairwise(spans):
        if start < end:
            raise ValueError(f"tensors[{a!r}] and tensors[{b!r}] share memory; give each its own")


def load_into(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    *,
    verify: bool = True,
    handle: aio_handle | None = None,
    entries: list[TensorEntry] | None = None,
    direct: bool = False,
) -> dict[str, torch.Tensor]:
    """Read the tensors named by ``tensors``' keys from a file written by ``save`` into the
    tensors given (the rest of the file is not read); returns them, as a dict.

    For a caller that already holds the memory the values belong in (an optimizer's master
    weights and states when resuming). The bytes arrive with O_DIRECT in zero-aio's
    huge-page staging buffers and are copied into place while the next request is in
    flight, which measured faster than O_DIRECT into ordinary 4 KiB-page memory (see
    [Note: one pass over the file, copies and checksums behind the disk]). ``direct=True``
    reads each destination that sits at the same position within a page as its bytes in
    the file straight into it, copying nothing: for huge-page memory such as
    ``new_cpu_locked_tensor``'s, or when CPU time is scarcer than disk time.

    Each destination must be a dense, contiguous CPU tensor of the saved dtype and shape,
    none sharing memory with another; anything else raises before a byte is read, naming
    the tensor. ``entries`` (``read_index(path)[0]``, if the caller has it) saves reading
    the index again.

    Raises ``KeyError`` for a name the file does not hold, ``ChecksumError`` (after the
    bytes have landed: the destination then holds them as they are on disk) when
    ``verify`` and a tensor is corrupt, and ``OSError`` naming path, offset and errno when
    the read fails.
    """
    path = os.fsdecode(os.fspath(path))
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a dict of name -> tensor, got {type(tensors).__name__}")
    found = _entries_for(path, tensors.keys(), entries)
    given = [tensors[e.name] for e in found]
    _check_destinations(path, found, given)
    targets = [_Target(e, _as_bytes(t)) for e, t in zip(found, given)]
    _read(path, targets, handle if handle is not None else default_handle(), verify, direct)
    return dict(zip((e.name for e in found), given))

"""``load_tensors``: some tensors of a ``save`` file, each read alone and checksum-verified.

``load`` reads a file's whole data region in one request, which is what a reader that wants
everything should do. A reader that needs a few tensors of a large file (a checkpoint loaded
at another world size, a converter streaming one parameter at a time) reads just those: one
request per tensor, all in flight together, into memory that lines up with the file offset
modulo 4096 so the bulk moves with O_DIRECT, then each tensor's CRC-32C is checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch

from ._format import PAGE, ChecksumError, _crc, _default_handle, _default_threads, read_index
from ._handle import aio_handle

__all__ = ["load_tensors"]


def _buffer_like_offset(nbytes: int, offset: int) -> torch.Tensor:
    """``nbytes`` of host memory whose address is congruent to ``offset`` modulo a page."""
    raw = torch.empty(nbytes + PAGE, dtype=torch.uint8)
    skip = (offset - raw.data_ptr()) % PAGE
    return raw[skip : skip + nbytes]


def load_tensors(
    path: str | os.PathLike,
    names: Iterable[str],
    *,
    verify: bool = True,
    handle: aio_handle | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors ``names`` of a file written by ``save``, in the order asked.

    Raises ``KeyError`` naming a tensor the file does not hold (and the ones it does),
    ``ChecksumError`` (naming tensor, offset and path) for corrupt bytes when ``verify``,
    and what ``read_index`` raises for a corrupt index or a file that is not zero-aio's.
    ``handle`` must have no operations of its own queued (this waits on it).
    """
    path = os.fsdecode(os.fspath(path))
    entries = {e.name: e for e in read_index(path)[0]}
    wanted = list(dict.fromkeys(names))
    missing = [n for n in wanted if n not in entries]
    if missing:
        held = ", ".join(list(entries)[:8]) + (", ..." if len(entries) > 8 else "")
        raise KeyError(f"{path} holds no tensor {missing[0]!r} (it holds: {held})")
    buffers = {n: _buffer_like_offset(entries[n].nbytes, entries[n].offset) for n in wanted}
    h = handle if handle is not None else _default_handle(_default_threads())
    try:
        for n in wanted:
            if entries[n].nbytes:
                h.async_pread(buffers[n], path, file_offset=entries[n].offset)
    finally:
        h.wait()
    out = {}
    threads = _default_threads()
    for n in wanted:
        e, buf = entries[n], buffers[n]
        if verify and e.nbytes:
            got = _crc(buf.data_ptr(), e.nbytes, threads)
            if got != e.crc32c:
                raise ChecksumError(
                    f"checksum mismatch in tensor {n!r} ({e.nbytes} bytes at offset "
                    f"{e.offset}): stored {e.crc32c:08x}, computed {got:08x}; the file is corrupt",
                    path,
                    n,
                    e.offset,
                )
        empty = not e.nbytes
        out[n] = torch.empty(e.shape, dtype=e.dtype) if empty else buf.view(e.dtype).view(e.shape)
    return out

"""``save`` / ``load``: named tensors in one checksummed file, moved by an ``aio_handle``.

[Note: the zero-aio tensor file, format 1]
All integers little-endian.

====== ====== =====================================================================
offset size   field
====== ====== =====================================================================
0      8      magic ``b"ZEROAIO\\0"``
8      4      format version (1)
12     4      CRC-32C of the index (the next field's bytes)
16     8      index length ``L`` in bytes
24     L      the index: UTF-8 JSON, see below
D      ...    the data region; ``D = 24 + L`` rounded up to a multiple of 4096
====== ====== =====================================================================

The index is ``{"tensors": [{"name", "dtype", "shape", "offset", "nbytes", "crc32c"}, ...],
"metadata": {str: str}}``; ``dtype`` is the torch name (``"bfloat16"``), ``offset`` counts
from ``D``, ``crc32c`` is the CRC-32C (Castagnoli, as ``zero_aio.crc32c``) of the tensor's
``nbytes`` bytes, which are its elements in row-major order. Gaps between tensors hold
zeros (or are holes). Tensors smaller than 64 KiB come first, packed at 64-byte alignment,
and go to disk with the index in one request; each larger tensor starts at a file offset
congruent to its memory address modulo 4096, so its bulk moves with O_DIRECT straight from
the caller's memory (no staging copy); a reader that allocates each tensor at the same
position within a page reads it back the same way (see ``_read``).

[Note: never a half file]
``save`` writes to a temporary name in the destination directory, waits for every request,
fsyncs the file, renames it over the final name and fsyncs the directory. A failure at any
point (disk full, I/O error, a bad tensor found late) removes the temporary file and leaves
whatever was under the final name untouched.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import struct
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from . import _C
from ._handle import aio_handle, default_handle, default_threads
from ._memory import PAGE, host_bytes

__all__ = ["ChecksumError", "TensorEntry", "crc32c", "read_index", "save"]

MAGIC = b"ZEROAIO\0"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIIQ")
SMALL_TENSOR_BYTES = 64 * 1024
_SMALL_ALIGN = 64
#: The largest index zero-aio will read (a sanity bound against a corrupt length field).
_MAX_INDEX_BYTES = 1 << 30


class ChecksumError(OSError):
    """The bytes on disk are not what was saved (a corrupt index or tensor).

    An ``OSError`` with errno ``EIO`` and the path as ``filename``; ``tensor`` names the
    tensor (``None`` for the index) and ``offset`` its file offset.
    """

    def __init__(self, message: str, path: str, tensor: str | None, offset: int) -> None:
        super().__init__(errno.EIO, message, path)
        self.tensor = tensor
        self.offset = offset


class TensorEntry(NamedTuple):
    """One tensor of a file's index."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  #: file offset of its first byte
    nbytes: int
    crc32c: int


def crc32c(buffer: object, threads: int | None = None) -> int:
    """CRC-32C (Castagnoli) of a contiguous tensor's or buffer's bytes, as stored by ``save``.

    Runs on the CPU's CRC instruction where there is one (``zero_aio._C.crc32c_implementation()``)
    and on up to ``threads`` threads for large buffers; the result never depends on either.
    """
    from ._native import as_buffer

    buf = as_buffer(buffer, for_read=False)
    return _crc(buf.address, buf.nbytes, threads or default_threads())


def _crc(address: int, nbytes: int, threads: int) -> int:
    return _C.crc32c(address, nbytes, threads) if nbytes else 0


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_from_name(name: object, path: str) -> torch.dtype:
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{path}: unknown dtype {name!r} in the index (newer torch needed?)")
    return dtype


def _prepare(tensors: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """Validate names and tensors; return dense, contiguous CPU tensors in order."""
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a dict of name -> tensor, got {type(tensors).__name__}")
    out = []
    for name, t in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r} ({type(name).__name__})")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensors[{name!r}] is a {type(t).__name__}, not a torch.Tensor")
        if t.layout is not torch.strided or t.is_quantized:
            raise ValueError(
                f"tensors[{name!r}] is a {t.layout} / quantized tensor; save dense tensors "
                f"(e.g. .to_dense())"
            )
        if t.device.type == "meta":
            raise ValueError(f"tensors[{name!r}] is on the meta device and holds no data")
        # Views and device tensors are saved by value, as a contiguous host copy.
        out.append((name, t.detach().to("cpu").contiguous()))
    return out


def _layout(tensors: list[tuple[str, torch.Tensor]]) -> tuple[list[int], int]:
    """Data-region offsets per tensor (see the Note on the format) and the region's size."""
    offsets = [0] * len(tensors)
    at = 0
    for i, (_, t) in enumerate(tensors):
        if _is_small(t):
            at = _align(at, _SMALL_ALIGN)
            offsets[i] = at
            at += _nbytes(t)
    small_end = at
    for i, (_, t) in enumerate(tensors):
        if not _is_small(t):
            at += (t.data_ptr() - at) % PAGE  # same position within a page as in memory
            offsets[i] = at
            at += _nbytes(t)
    return offsets, max(at, small_end)


def _fsync_path(path: str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _crc_of_bytes(data: bytes) -> int:
    return _crc(_C.buffer_address(memoryview(data), writable=False), len(data), 1)


def save(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    metadata: Mapping[str, str] | None = None,
    handle: aio_handle | None = None,
) -> None:
    """Write named tensors to ``path`` in zero-aio's checksummed format, atomically.

    Each tensor is saved by value (views and device tensors as contiguous host copies;
    tensors sharing memory are stored separately). ``metadata`` is a small str -> str map
    kept in the index. ``handle`` is the ``aio_handle`` to write with (default: this thread's
    shared one: the best available backend, 1 MiB requests, queue depth 32, up to 8
    threads); ``save`` waits on it, so it must have no operations of its own queued.
    Raises ``OSError`` naming the path on any failure, leaving nothing behind (see [Note:
    never a half file]).
    """
    path = os.fsdecode(os.fspath(path))
    meta = dict(metadata or {})
    for key, value in meta.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata must map str to str, got {key!r}: {value!r}")
    items = _prepare(tensors)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, "the directory to save into does not exist", path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "cannot save over a directory", path)

    offsets, _ = _layout(items)
    threads = default_threads()
    entries = [
        {
            "name": name,
            "dtype": _dtype_name(t.dtype),
            "shape": list(t.shape),
            "offset": off,
            "nbytes": _nbytes(t),
            "crc32c": _crc(t.data_ptr(), _nbytes(t), threads),
        }
        for (name, t), off in zip(items, offsets)
    ]
    index = json.dumps({"tensors": entries, "metadata": meta}, separators=(",", ":")).encode()
    data_start = _align(_PREFIX.size + len(index), PAGE)

    # The prefix, the index and every small tensor go out as one request.
    small = [(t, data_start + off) for (_, t), off in zip(items, offsets) if _is_small(t)]
    large = [(t, data_start + off) for (_, t), off in zip(items, offsets) if not _is_small(t)]
    first_end = max((at + _nbytes(t) for t, at in small), default=data_start)
    first = host_bytes(first_end)
    first.zero_()
    head = _PREFIX.pack(MAGIC, FORMAT_VERSION, _crc_of_bytes(index), len(index)) + index
    first[: len(head)] = torch.frombuffer(bytearray(head), dtype=torch.uint8)
    for t, at in small:
        if _nbytes(t):
            first[at : at + _nbytes(t)] = t.reshape(-1).view(torch.uint8)
    file_size = max([first_end, *(at + _nbytes(t) for t, at in large)])

    name = os.path.basename(path)
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    h = handle if handle is not None else default_handle()
    try:
        try:
            h.async_pwrite(first, tmp, file_offset=0)
            for t, at in large:
                h.async_pwrite(t, tmp, file_offset=at)
        finally:
            h.wait()  # every queued write finishes (or fails) before anything else happens
        landed = os.path.getsize(tmp)
        if landed != file_size:  # never rename a file that is not whole
            raise OSError(errno.EIO, f"wrote {file_size} bytes but the file holds {landed}", tmp)
        _fsync_path(tmp, os.O_RDONLY)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_path(directory, os.O_RDONLY | os.O_DIRECTORY)


def _is_small(t: torch.Tensor) -> bool:
    return _nbytes(t) < SMALL_TENSOR_BYTES


def _read_index_json(path: str) -> tuple[dict[str, Any], int]:
    """The parsed, CRC-checked index and the data region's file offset."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(_PREFIX.size)
        if len(prefix) < _PREFIX.size or prefix[:8] != MAGIC:
            raise ValueError(
                f"{path} is not a zero-aio tensor file (no {MAGIC!r} magic at its start); "
                f"read it with whatever wrote it"
            )
        _, version, stored, index_len = _PREFIX.unpack(prefix)
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{path} has format version {version}; this zero-aio reads version "
                f"{FORMAT_VERSION} (upgrade zero-aio to read newer files)"
            )
        if index_len > min(size - _PREFIX.size, _MAX_INDEX_BYTES):
            raise ChecksumError(
                f"the index length field says {index_len} bytes but the file holds "
                f"{size - _PREFIX.size} after the prefix: truncated or corrupt",
                path,
                None,
                16,
            )
        index = f.read(index_len)
    got = _crc_of_bytes(index)
    if got != stored:
        raise ChecksumError(
            f"checksum mismatch in the index: stored {stored:08x}, computed {got:08x}; "
            f"the file is corrupt",
            path,
            None,
            _PREFIX.size,
        )
    return json.loads(index), _align(_PREFIX.size + index_len, PAGE)


def read_index(path: str | os.PathLike) -> tuple[list[TensorEntry], dict[str, str]]:
    """The tensors (name, dtype, shape, file offset, size, CRC) and the metadata of a file
    written by ``save``, without reading the tensors. Raises ``ChecksumError`` when the
    index is corrupt and ``ValueError`` when the file is not one of ours."""
    path = os.fsdecode(os.fspath(path))
    index, data_start = _read_index_json(path)
    entries = []
    for e in index["tensors"]:
        dtype = _dtype_from_name(e["dtype"], path)
        shape = tuple(int(d) for d in e["shape"])
        numel = 1
        for d in shape:
            numel *= d
        nbytes = int(e["nbytes"])
        offset = data_start + int(e["offset"])
        if nbytes != numel * torch.empty(0, dtype=dtype).element_size():
            raise ChecksumError(
                f"tensor {e['name']!r}: {nbytes} bytes cannot hold shape {shape} of {dtype}",
                path,
                e["name"],
                offset,
            )
        entries.append(TensorEntry(e["name"], dtype, shape, offset, nbytes, int(e["crc32c"])))
    return entries, dict(index["metadata"])

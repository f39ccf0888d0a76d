"""``aio_handle``: DeepSpeed's DeepNVMe handle (names and defaults as its tutorial documents).

[Note: when failures surface]
Opening the file (and, for a read, checking it is long enough) happens at the call, so a
missing directory, an unwritable path or a short file raises there, even for ``async_op``.
Everything that fails during the transfer raises from the synchronous call or from
``wait()``, which first lets every queued operation finish (their buffers are in use until
then) and then raises one ``OSError`` for the first failure, with all of them in
``.failures``. Nothing is counted as completed that did not move every byte.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from typing import Any

import torch

from . import _C
from ._native import Buffer, as_buffer, backends, default_backend

__all__ = ["aio_handle", "default_handle", "default_threads"]

PathLike = str | os.PathLike


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _read_file(path: str, offset: int, nbytes: int) -> bytes:
    with open(path, "rb") as f:
        return os.pread(f.fileno(), nbytes, offset)


class aio_handle:  # noqa: N801 - DeepSpeed's name
    """Reads and writes tensors to files with up to ``queue_depth`` requests in flight.

    ``block_size`` is the request size, ``intra_op_parallelism`` the number of worker threads
    one operation is split across, ``single_submit`` submits requests one by one instead of
    in batches. ``overlap_events`` refills each request slot as soon as its request
    completes; without it a batch of ``queue_depth`` requests completes before the next is
    submitted (the libaio and io_uring backends; threads run one request at a time each).
    A write that extends a file reserves its range with ``fallocate`` first. ``backend`` is one of
    ``zero_aio.available_backends()``; by default the first of libaio, io_uring, threads.
    """

    def __init__(
        self,
        block_size: int = 1048576,
        queue_depth: int = 128,
        single_submit: bool = False,
        overlap_events: bool = False,
        intra_op_parallelism: int = 1,
        backend: str | None = None,
    ) -> None:
        _positive_int(block_size, "block_size")
        if block_size > 1 << 30:
            raise ValueError(f"block_size must be at most 2**30 bytes, got {block_size}")
        _positive_int(queue_depth, "queue_depth")
        _positive_int(intra_op_parallelism, "intra_op_parallelism")
        if backend is None:
            backend = default_backend()
        known = backends()
        if backend not in known or backend == "gds":
            raise ValueError(
                f"unknown backend {backend!r}; choose one of libaio, io_uring, threads"
            )
        if not known[backend].usable:
            raise ValueError(f"backend {backend!r} is not available: {known[backend].reason}")
        self._native = _C.Handle(
            block_size=block_size,
            queue_depth=queue_depth,
            single_submit=bool(single_submit),
            overlap_events=bool(overlap_events),
            intra_op_parallelism=intra_op_parallelism,
            backend=backend,
        )
        self._config = (block_size, queue_depth, bool(single_submit), bool(overlap_events))
        self._intra_op_parallelism = intra_op_parallelism
        self._keep: list[Buffer] = []  # buffers of queued operations, alive until wait()
        self._to_validate: list[tuple[Buffer, str, int, bool]] = []
        self._locked: dict[int, Any] = {}  # data_ptr -> HostBuffer of new_cpu_locked_tensor

    def __del__(self) -> None:
        # Runs before the attributes (and so the kept buffers) are released: queued
        # operations must finish before their memory can go.
        native = getattr(self, "_native", None)
        if native is not None:
            native.drain()

    @property
    def backend(self) -> str:
        """The backend this handle runs on."""
        return self._native.backend

    # -- configuration getters (DeepSpeed names) -------------------------------------------
    def get_block_size(self) -> int:
        return self._config[0]

    def get_queue_depth(self) -> int:
        return self._config[1]

    def get_single_submit(self) -> bool:
        return self._config[2]

    def get_overlap_events(self) -> bool:
        return self._config[3]

    def get_intra_op_parallelism(self) -> int:
        return self._intra_op_parallelism

    # -- I/O ---------------------------------------------------------------------------------
    def pread(
        self,
        buffer: object,
        filename: PathLike,
        validate: bool = False,
        async_op: bool = False,
        file_offset: int = 0,
    ) -> int:
        """Read ``buffer``'s size in bytes from ``filename`` at ``file_offset`` into it.

        Returns 1 (operations completed) when synchronous, 0 when queued (see ``wait()``).
        """
        return self._io(buffer, filename, validate, async_op, file_offset, is_read=True)

    def pwrite(
        self,
        buffer: object,
        filename: PathLike,
        validate: bool = False,
        async_op: bool = False,
        file_offset: int = 0,
    ) -> int:
        """Write ``buffer`` to ``filename`` at ``file_offset`` (created if missing, never
        truncated). Returns 1 when synchronous, 0 when queued (see ``wait()``)."""
        return self._io(buffer, filename, validate, async_op, file_offset, is_read=False)

    def sync_pread(self, buffer: object, filename: PathLike, file_offset: int = 0) -> int:
        return self.pread(buffer, filename, False, False, file_offset)

    def sync_pwrite(self, buffer: object, filename: PathLike, file_offset: int = 0) -> int:
        return self.pwrite(buffer, filename, False, False, file_offset)

    def async_pread(self, buffer: object, filename: PathLike, file_offset: int = 0) -> int:
        return self.pread(buffer, filename, False, True, file_offset)

    def async_pwrite(self, buffer: object, filename: PathLike, file_offset: int = 0) -> int:
        return self.pwrite(buffer, filename, False, True, file_offset)

    def read(self, buffer: object, filename: PathLike, validate: bool = False) -> int:
        """Synchronous read of the start of ``filename`` (DeepSpeed's ``read``)."""
        return self.pread(buffer, filename, validate, False, 0)

    def write(self, buffer: object, filename: PathLike, validate: bool = False) -> int:
        """Synchronous write at the start of ``filename`` (DeepSpeed's ``write``)."""
        return self.pwrite(buffer, filename, validate, False, 0)

    def wait(self) -> int:
        """Wait for every queued operation; return how many completed.

        Raises ``OSError`` (naming path, offset and errno; all failures in ``.failures``) if
        any failed, after all of them have finished.
        """
        try:
            completed = self._native.wait()
        finally:
            keep, self._keep = self._keep, []
            checks, self._to_validate = self._to_validate, []
        for buf, path, offset, is_read in checks:
            self._check(buf, path, offset, is_read)
        del keep
        return completed

    def _io(
        self,
        buffer: object,
        filename: PathLike,
        validate: bool,
        async_op: bool,
        file_offset: int,
        *,
        is_read: bool,
    ) -> int:
        path = os.fspath(filename)
        if not isinstance(path, str):
            path = os.fsdecode(path)
        if isinstance(file_offset, bool) or not isinstance(file_offset, int) or file_offset < 0:
            raise ValueError(f"file_offset must be a non-negative int, got {file_offset!r}")
        buf = as_buffer(buffer, for_read=is_read)
        if buf.nbytes == 0:
            raise ValueError(
                f"zero-length {'read' if is_read else 'write'} of {path!r}: the buffer holds "
                f"no bytes, so there is nothing to transfer"
            )
        if async_op:
            self._native.submit(path, buf.address, buf.nbytes, file_offset, is_read)
            self._keep.append(buf)
            if validate:
                self._to_validate.append((buf, path, file_offset, is_read))
            return 0
        self._native.run(path, buf.address, buf.nbytes, file_offset, is_read)
        if validate:
            self._check(buf, path, file_offset, is_read)
        return 1

    @staticmethod
    def _check(buf: Buffer, path: str, offset: int, is_read: bool) -> None:
        """``validate=True``: compare the buffer with the file through plain buffered I/O."""
        on_disk = _read_file(path, offset, buf.nbytes)
        in_memory = ctypes.string_at(buf.address, buf.nbytes)
        if on_disk != in_memory:
            diff = next(
                (i for i, (a, b) in enumerate(zip(on_disk, in_memory)) if a != b),
                min(len(on_disk), len(in_memory)),
            )
            raise OSError(
                errno.EIO,
                f"validation after {'read' if is_read else 'write'} failed: file and buffer "
                f"differ first at file offset {offset + diff}",
                path,
            )

    # -- pinned host memory ----------------------------------------------------------------
    def new_cpu_locked_tensor(self, numel: int, example_tensor: torch.Tensor) -> torch.Tensor:
        """A 1-D CPU tensor of ``numel`` elements of ``example_tensor.dtype`` in page-aligned,
        mlock-ed (when RLIMIT_MEMLOCK allows) memory, zero-filled; its memory lives as long
        as the tensor or any view of it does. From 2 MiB on it is backed by transparent huge
        pages where the kernel has them, so each request is one physical segment (see
        [Note: huge pages for I/O buffers] in csrc/host_buffer.hpp)."""
        if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
            raise ValueError(f"numel must be a non-negative int, got {numel!r}")
        dtype = example_tensor.dtype
        nbytes = numel * torch.empty(0, dtype=dtype).element_size()
        owner = _C.HostBuffer(nbytes, lock=True)
        if numel == 0:
            return torch.empty(0, dtype=dtype)
        tensor = torch.frombuffer(owner, dtype=dtype, count=numel)
        self._locked[tensor.data_ptr()] = owner
        return tensor

    def free_cpu_locked_tensor(self, tensor: torch.Tensor) -> bool:
        """Drop the handle's reference to a tensor from ``new_cpu_locked_tensor``.

        The memory is unlocked and freed when the last tensor over it is gone, never under a
        live tensor (see csrc/host_buffer.hpp). Raises if ``tensor`` did not come from this handle.
        """
        if self._locked.pop(tensor.data_ptr(), None) is None and tensor.numel():
            raise ValueError("tensor was not allocated by this handle's new_cpu_locked_tensor")
        return True


def default_threads() -> int:
    """Worker threads of the default handle (and of checksums): the CPUs, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


_local = threading.local()
#: Handles inherited through fork: their worker threads do not exist in the child, so they
#: are kept here, never destroyed (destroying one would join threads that are not there).
_orphans: list[aio_handle] = []


def default_handle() -> aio_handle:
    """The handle ``save`` and the loaders use when given none, made once per thread.

    Making a handle sets up a queue and starts threads per call, a fixed cost that dominated
    small transfers. One per thread, because ``wait()`` takes every operation queued on a
    handle, so two threads must not share one; remade in a forked child.
    """
    h = getattr(_local, "handle", None)
    if h is not None and _local.pid == os.getpid():
        return h
    if h is not None:
        _orphans.append(h)
    _local.handle = h = aio_handle(queue_depth=32, intra_op_parallelism=default_threads())
    _local.pid = os.getpid()
    return h

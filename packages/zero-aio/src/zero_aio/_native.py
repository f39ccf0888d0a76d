"""The boundary to the compiled engines: every check that keeps C++ from touching bad memory.

[Note: what crosses into C++]
The extension receives an integer address and a byte count, never a tensor, so it links no
torch and one wheel serves every torch version. That is only safe because this module checks
that the buffer is one dense block of host memory (a contiguous CPU tensor, or a contiguous
buffer-protocol object), writable when it is read into, and the caller (``aio_handle``) keeps
the object referenced until the operation is done: to the end of a synchronous call, or until
``wait()`` for an asynchronous one. A memoryview held that long also stops a ``bytearray``
from being resized under the I/O.
"""

from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple

import torch

from . import _C

__all__ = [
    "BackendInfo",
    "Buffer",
    "as_buffer",
    "available_backends",
    "backends",
    "default_backend",
]

#: Preference order when no backend is named: DeepSpeed's choice first.
BACKEND_ORDER = ("libaio", "io_uring", "threads")


class BackendInfo(NamedTuple):
    """What ``backends()`` says about one backend."""

    built: bool  #: compiled into this install
    usable: bool  #: built, and the kernel accepted a queue just now
    reason: str  #: what it was built against, or why it is missing / refused


def backends() -> dict[str, BackendInfo]:
    """Every backend zero-aio knows, whether it was built, is usable here, and why (not).

    ``threads`` is always built. ``libaio`` and ``io_uring`` are built when their headers were
    found at build time (``apt install libaio-dev liburing-dev``, then reinstall); io_uring
    can still be refused at run time (containers often block it with seccomp). ``gds`` is
    listed so its absence is explicit: there is no GDS backend yet. The kernel is asked once
    per process (probing sets up a queue and a thread of every backend, which every
    ``aio_handle()`` would otherwise pay for again).
    """
    return dict(_probe(os.getpid()))


@functools.lru_cache(maxsize=1)
def _probe(pid: int) -> dict[str, BackendInfo]:
    """The native probe, cached per process (a forked child asks again)."""
    del pid  # the cache key only
    return {name: BackendInfo(*info) for name, info in _C.backends().items()}


def available_backends() -> list[str]:
    """Names of the backends built and usable here, preferred first."""
    found = backends()
    return [name for name in BACKEND_ORDER if found[name].usable]


def default_backend() -> str:
    """The backend ``aio_handle()`` uses unless told: libaio, else io_uring, else threads."""
    return available_backends()[0]


class Buffer(NamedTuple):
    """A checked buffer: the object to keep alive, its address and its size in bytes."""

    keep: Any
    address: int
    nbytes: int


def as_buffer(obj: object, *, for_read: bool, what: str = "buffer") -> Buffer:
    """Check ``obj`` can be read into (``for_read``) or written from, and find its memory."""
    if isinstance(obj, torch.Tensor):
        if obj.device.type != "cpu":
            raise ValueError(
                f"{what} is on {obj.device}; zero-aio moves host memory only (there is no GDS "
                f"backend yet): copy it to a CPU tensor first, e.g. new_cpu_locked_tensor()"
            )
        if obj.layout is not torch.strided:
            raise ValueError(f"{what} is a {obj.layout} tensor; only dense tensors are supported")
        if not obj.is_contiguous():
            raise ValueError(
                f"{what} is not contiguous; file I/O moves one block of memory, so pass "
                f"tensor.contiguous() (and copy back after a read)"
            )
        nbytes = obj.numel() * obj.element_size()
        return Buffer(obj, obj.data_ptr() if nbytes else 0, nbytes)
    try:
        view = memoryview(obj)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{what} must be a torch.Tensor or support the buffer protocol "
            f"(bytearray, numpy array, ...), got {type(obj).__name__}"
        ) from None
    if not view.contiguous:
        raise ValueError(f"{what} is not contiguous; pass a contiguous copy")
    if for_read and view.readonly:
        raise ValueError(
            f"{what} is read-only ({type(obj).__name__}); reading needs a writable buffer "
            f"such as a bytearray or a tensor"
        )
    nbytes = view.nbytes
    address = _C.buffer_address(view, writable=for_read) if nbytes else 0
    return Buffer(view, address, nbytes)

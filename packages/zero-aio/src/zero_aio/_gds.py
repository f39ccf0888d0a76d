"""``gds_handle``: DeepSpeed's GPUDirect Storage handle, which zero-aio does not have yet.

GDS moves data between NVMe and GPU memory without a host bounce buffer, through NVIDIA's
cuFile library. zero-aio 0.1.0 has no cuFile backend, so the class exists only to fail at
construction with the reason and the way forward, instead of an ``AttributeError`` deep in
user code that was written against DeepSpeed.
"""

from __future__ import annotations

from ._native import backends

__all__ = ["gds_handle"]


class gds_handle:  # noqa: N801 - DeepSpeed's name
    """Not available: raises ``NotImplementedError`` saying why and what to use instead."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        reason = backends()["gds"].reason
        raise NotImplementedError(
            f"gds_handle needs the GDS backend, which this zero-aio does not have ({reason}). "
            f"GPUDirect Storage needs an NVIDIA GPU, CUDA and cuFile (NVIDIA's "
            f"nvidia-gds / libcufile-dev packages). Until zero-aio has a GDS backend, copy "
            f"device tensors to host memory (aio_handle().new_cpu_locked_tensor(...)) and "
            f"use aio_handle."
        )

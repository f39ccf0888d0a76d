"""zero-aio: asynchronous tensor I/O to NVMe with DeepSpeed's ``aio_handle`` API.

``aio_handle`` reads and writes tensors (or any buffer-protocol object) at any file offset
and length, with O_DIRECT for the aligned bulk, through libaio, io_uring or a portable
pread/pwrite thread pool (``backends()`` says which were built and why not). Failures raise
``OSError`` naming the path, the offset and the errno.
"""

from ._handle import aio_handle
from ._native import BackendInfo, available_backends, backends, default_backend

__version__ = "0.1.0"

__all__ = [
    "BackendInfo",
    "__version__",
    "aio_handle",
    "available_backends",
    "backends",
    "default_backend",
]

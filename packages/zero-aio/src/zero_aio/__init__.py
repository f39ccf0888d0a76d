"""zero-aio: asynchronous tensor I/O to NVMe with DeepSpeed's ``aio_handle`` API.

``aio_handle`` reads and writes tensors (or any buffer-protocol object) at any file offset
and length, with O_DIRECT for the aligned bulk, through libaio, io_uring or a portable
pread/pwrite thread pool (``backends()`` says which were built and why not). Failures raise
``OSError`` naming the path, the offset and the errno. ``save`` / ``load`` keep named tensors
in one checksummed file written atomically; ``load_into`` reads them into tensors the caller
already has.
"""

from ._format import ChecksumError, TensorEntry, crc32c, read_index, save
from ._gds import gds_handle
from ._handle import aio_handle
from ._native import BackendInfo, available_backends, backends, default_backend
from ._read import load, load_into, load_tensors
from ._report import report

__version__ = "0.1.0"

__all__ = [
    "BackendInfo",
    "ChecksumError",
    "TensorEntry",
    "__version__",
    "aio_handle",
    "available_backends",
    "backends",
    "crc32c",
    "default_backend",
    "gds_handle",
    "load",
    "load_into",
    "load_tensors",
    "read_index",
    "report",
    "save",
]

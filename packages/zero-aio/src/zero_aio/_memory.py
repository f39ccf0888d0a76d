"""Host memory to read into: where a tensor's bytes must sit for O_DIRECT to move them.

[Note: reading straight into a tensor]
O_DIRECT moves bytes between the device and memory only where the memory address and the
file offset agree modulo 4096 (see csrc/transfer.hpp). ``save`` puts each large tensor at a
file offset congruent to its address in memory, so a reader that allocates the result at
the same position within a page reads it with O_DIRECT and copies nothing. ``host_bytes``
allocates such memory, from huge pages when it is large (see csrc/host_buffer.hpp).
"""

from __future__ import annotations

import torch

from . import _C

__all__ = ["PAGE", "host_bytes"]

PAGE = 4096
#: Below this, heap memory is cheaper than a mapping of its own (and huge pages cannot help).
_OWN_MAPPING_BYTES = 1 << 20


def host_bytes(nbytes: int, *, phase: int = 0, pin: bool = False) -> torch.Tensor:
    """``nbytes`` of fresh CPU memory as a uint8 tensor whose address is ``phase`` modulo 4096.

    ``pin`` asks for page-locked memory (CUDA-pinned when CUDA is available, so copies to the
    device can be asynchronous; otherwise mlock-ed as far as RLIMIT_MEMLOCK allows). The
    memory lives as long as any tensor over it.
    """
    phase %= PAGE
    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    if pin and torch.cuda.is_available():  # the CUDA allocator pins whole pages
        raw = torch.empty(nbytes + PAGE, dtype=torch.uint8, pin_memory=True)
        skip = (phase - raw.data_ptr()) % PAGE
        return raw[skip : skip + nbytes]
    if not pin and nbytes + phase < _OWN_MAPPING_BYTES:
        raw = torch.empty(nbytes + PAGE, dtype=torch.uint8)
        skip = (phase - raw.data_ptr()) % PAGE
        return raw[skip : skip + nbytes]
    owner = _C.HostBuffer(nbytes + phase, lock=pin)  # starts on a page (or 2 MiB) boundary
    return torch.frombuffer(owner, dtype=torch.uint8)[phase : phase + nbytes]

"""The boundary to the compiled kernels: every check that keeps C++ from touching bad memory.

[Note: what crosses into C++]
The extension receives integer addresses and element counts, never tensors, so it links no
torch and one wheel serves every torch version. That is only safe because this module checks,
for every tensor of a call, that it is a dense, contiguous CPU tensor of a supported dtype with
exactly as many elements as its param, and the caller keeps every tensor referenced until the
call returns (the call is synchronous; the GIL is released only inside it).
"""

from __future__ import annotations

import torch

from . import _C

__all__ = [
    "DTYPE_CODES",
    "NO_COPY",
    "check_buffer",
    "cpu_features",
    "dtype_code",
    "select_isa",
]

DTYPE_CODES: dict[torch.dtype, int] = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
NO_COPY = 3


def dtype_code(dtype: torch.dtype, what: str) -> int:
    """The kernel's code for ``dtype``; raises naming ``what`` when it is not supported."""
    try:
        return DTYPE_CODES[dtype]
    except KeyError:
        raise TypeError(
            f"{what} has dtype {dtype}; the CPU kernels support float32, bfloat16 and float16"
        ) from None


def check_buffer(tensor: torch.Tensor, like: torch.Tensor, what: str) -> None:
    """Refuse anything the kernel cannot address as ``like.numel()`` contiguous elements."""
    if tensor.device.type != "cpu":
        raise ValueError(f"{what} is on {tensor.device}; the CPU kernels need CPU tensors")
    if tensor.layout is not torch.strided:
        raise ValueError(f"{what} is a {tensor.layout} tensor; only dense tensors are supported")
    if not tensor.is_contiguous():
        raise ValueError(
            f"{what} is not contiguous; the kernels update tensors in place through their "
            f"memory, so pass contiguous tensors (tensor.contiguous())"
        )
    if tensor.shape != like.shape:
        raise ValueError(f"{what} has shape {tuple(tensor.shape)}, expected {tuple(like.shape)}")


def cpu_features() -> dict[str, object]:
    """Which kernel set runs on this CPU, which were compiled in, and which this CPU supports.

    The choice is made once, when the extension loads: the widest compiled set the CPU
    supports (``avx512``, ``avx2``, ``neon``, else ``baseline``), unless the environment
    variable ``ZERO_OPTIM_ISA`` names another supported one.
    """
    return dict(_C.cpu_features())


def select_isa(name: str) -> None:
    """Switch kernel sets (for testing one against another); raises if not usable here."""
    _C.select_isa(name)  # std::invalid_argument arrives as ValueError

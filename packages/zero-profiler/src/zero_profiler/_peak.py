"""Peak dense throughput of known GPUs, for model FLOPS utilization (MFU).

MFU is the flops the model needs per second divided by what the hardware could do. The
table holds vendor datasheet numbers for dense (not 2:4 sparse) tensor-core math; pass
``peak_flops`` yourself for anything else, including CPUs, where no honest single number
exists.
"""

from __future__ import annotations

import torch

__all__ = ["PEAK_FLOPS", "peak_flops_for"]

#: ``(substring of torch.cuda.get_device_name(), dtype) -> peak FLOPS``; the first matching
#: substring wins, so more specific names come first. ``torch.float32`` is plain FP32 (no
#: TF32); bf16 and fp16 are tensor-core numbers with FP32 accumulation.
PEAK_FLOPS: dict[tuple[str, torch.dtype], float] = {
    ("H100 PCIe", torch.bfloat16): 756e12,
    ("H100 PCIe", torch.float16): 756e12,
    ("H100 PCIe", torch.float32): 51e12,
    ("H100", torch.bfloat16): 989.4e12,
    ("H100", torch.float16): 989.4e12,
    ("H100", torch.float32): 66.9e12,
    ("H200", torch.bfloat16): 989.4e12,
    ("H200", torch.float16): 989.4e12,
    ("H200", torch.float32): 66.9e12,
    ("A100", torch.bfloat16): 312e12,
    ("A100", torch.float16): 312e12,
    ("A100", torch.float32): 19.5e12,
    ("L40S", torch.bfloat16): 362.05e12,
    ("L40S", torch.float16): 362.05e12,
    ("L40S", torch.float32): 91.6e12,
    ("A10G", torch.bfloat16): 70e12,
    ("A10G", torch.float16): 70e12,
    ("A10G", torch.float32): 35e12,
    ("A10", torch.bfloat16): 125e12,
    ("A10", torch.float16): 125e12,
    ("A10", torch.float32): 31.2e12,
    ("L4", torch.bfloat16): 121e12,
    ("L4", torch.float16): 121e12,
    ("L4", torch.float32): 30.3e12,
    ("V100", torch.float16): 125e12,
    ("V100", torch.float32): 15.7e12,
    ("T4", torch.float16): 65e12,
    ("T4", torch.float32): 8.1e12,
    ("MI300X", torch.bfloat16): 1307.4e12,
    ("MI300X", torch.float16): 1307.4e12,
    ("MI300X", torch.float32): 163.4e12,
    ("MI250X", torch.bfloat16): 383e12,
    ("MI250X", torch.float16): 383e12,
    ("MI250X", torch.float32): 47.9e12,
}


def peak_flops_for(device_name: str, dtype: torch.dtype) -> float | None:
    """The table's peak FLOPS for a device name and compute dtype, or None if unknown."""
    for (name, table_dtype), flops in PEAK_FLOPS.items():
        if name in device_name and table_dtype == dtype:
            return flops
    return None

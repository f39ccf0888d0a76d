"""DeepSpeed's memory-estimate functions, by name and arguments, on zero-core's accounting.

Notebooks that call ``estimate_zero2_model_states_mem_needs_all_live(model, ...)`` and
friends keep working after an import change. The numbers come from
``estimate_model_states`` (see [Note: model-states formulas]) with 16-bit weights and
Adam, so they describe zero-core; ``additional_buffer_factor`` multiplies the CPU figure
only, as in DeepSpeed. Without offload, stage 3's figures are DeepSpeed's (``4L + 18Ψ/Nd``
per GPU, L the largest layer; CPU for loading). Where they differ, zero-core's engine holds
less or elsewhere, and tests/test_estimate.py measures it:

- stage 2 without offload: ``2Ψ + 16Ψ/Nd`` per GPU, not ``4Ψ + 16Ψ/Nd``: zero-core frees
  each full 16-bit gradient as soon as its bucket is reduced.
- with optimizer offload: CPU memory is counted per node (the node's GPUs x the per-rank
  state), where DeepSpeed's stage-2 function counts ``16Ψ`` whatever the number of nodes.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .._stage3 import is_partitioned
from ._memory import estimate_model_states

__all__ = [
    "estimate_zero2_model_states_mem_needs",
    "estimate_zero2_model_states_mem_needs_all_cold",
    "estimate_zero2_model_states_mem_needs_all_live",
    "estimate_zero3_model_states_mem_needs",
    "estimate_zero3_model_states_mem_needs_all_cold",
    "estimate_zero3_model_states_mem_needs_all_live",
    "model_sizes",
]

#: one row of an options table: (CPU bytes per node, bytes per GPU, the options)
Row = tuple[int, int, dict[str, Any]]

_GIB = 2**30


def _factor(additional_buffer_factor: float) -> float:
    if not additional_buffer_factor >= 1.0:  # also catches NaN
        raise ValueError(
            f"additional_buffer_factor must be >= 1.0 (1.0 adds nothing), got "
            f"{additional_buffer_factor!r}"
        )
    return float(additional_buffer_factor)


def estimate_zero2_model_states_mem_needs(
    total_params: float,
    num_gpus_per_node: int = 1,
    num_nodes: int = 1,
    cpu_offload: bool = True,
    additional_buffer_factor: float = 1.5,
) -> tuple[int, int]:
    """Model-state bytes of a ZeRO-2 job with 16-bit weights and Adam.

    Args:
        total_params: the model's parameter count.
        num_gpus_per_node: ranks per node.
        num_nodes: nodes.
        cpu_offload: the optimizer is offloaded to CPU (``offload_optimizer.device: cpu``).
        additional_buffer_factor: CPU headroom for what the formulas leave out.

    Returns:
        ``(cpu_bytes_per_node, gpu_bytes)``, as DeepSpeed's function of this name.
    """
    factor = _factor(additional_buffer_factor)
    est = estimate_model_states(
        total_params,
        2,
        num_gpus_per_node=num_gpus_per_node,
        num_nodes=num_nodes,
        precision="fp16",
        offload_optimizer="cpu" if cpu_offload else "none",
    )
    return int(est.cpu_per_node * factor), est.device


def estimate_zero3_model_states_mem_needs(
    total_params: float,
    largest_layer_params: float,
    num_gpus_per_node: int = 1,
    num_nodes: int = 1,
    cpu_offload: bool = True,
    cpu_offload_params: bool = True,
    zero_init: bool = True,
    additional_buffer_factor: float = 1.5,
) -> tuple[int, int, int]:
    """Model-state bytes of a ZeRO-3 job with 16-bit weights and Adam.

    Args:
        total_params: the model's parameter count.
        largest_layer_params: the largest module's own parameter count.
        num_gpus_per_node: ranks per node.
        num_nodes: nodes.
        cpu_offload: the optimizer is offloaded to CPU.
        cpu_offload_params: the weights are offloaded to CPU too (only with
            ``cpu_offload``, as in DeepSpeed).
        zero_init: the model is built under ``zero_core.Init``.
        additional_buffer_factor: CPU headroom for what the formulas leave out.

    Returns:
        ``(cpu_bytes_per_node, gpu_bytes, largest_layer_bytes)``, as DeepSpeed's function
        of this name; the last is the working set of one gathered layer and its gradient.
    """
    factor = _factor(additional_buffer_factor)
    est = estimate_model_states(
        total_params,
        3,
        num_gpus_per_node=num_gpus_per_node,
        num_nodes=num_nodes,
        precision="fp16",
        offload_optimizer="cpu" if cpu_offload else "none",
        offload_param="cpu" if cpu_offload and cpu_offload_params else "none",
        largest_layer_params=largest_layer_params,
        zero_init=zero_init,
    )
    return int(est.cpu_per_node * factor), est.device, est.working


def _print_rows(title: str, rows: list[Row]) -> None:
    print(title)
    print("  CPU per node |    per GPU | options")
    for cpu, gpu, options in rows:
        shown = ", ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in options.items())
        print(f"  {cpu / _GIB:9.2f}GiB | {gpu / _GIB:7.2f}GiB | {shown}")


def _setup(total: int, gpus: int, nodes: int, factor: float, largest: int | None = None) -> str:
    layer = f", largest layer {largest:,}" if largest is not None else ""
    return (
        f"Model states of {total:,} parameters{layer} on {nodes} node(s) x "
        f"{gpus} GPU(s), 16-bit weights + Adam (zero-core's accounting; CPU includes "
        f"additional_buffer_factor {factor:g}):"
    )


def estimate_zero2_model_states_mem_needs_all_cold(
    total_params: float,
    num_gpus_per_node: int = 1,
    num_nodes: int = 1,
    additional_buffer_factor: float = 1.5,
) -> list[Row]:
    """Print (and return) the ZeRO-2 estimate with and without optimizer offload, for a
    model that is not built yet."""
    rows: list[Row] = []
    for offload in (True, False):
        cpu, gpu = estimate_zero2_model_states_mem_needs(
            total_params, num_gpus_per_node, num_nodes, offload, additional_buffer_factor
        )
        rows.append((cpu, gpu, {"offload_optimizer": "cpu" if offload else "none"}))
    title = _setup(int(total_params), num_gpus_per_node, num_nodes, additional_buffer_factor)
    _print_rows("ZeRO-2. " + title, rows)
    return rows


def estimate_zero3_model_states_mem_needs_all_cold(
    total_params: float,
    largest_layer_params: float,
    num_gpus_per_node: int = 1,
    num_nodes: int = 1,
    additional_buffer_factor: float = 1.5,
) -> list[Row]:
    """Print (and return) the ZeRO-3 estimate for every combination of weight offload,
    optimizer offload and ``zero_init``, for a model that is not built yet."""
    rows: list[Row] = []
    for params_cpu, optim_cpu in ((True, True), (False, True), (False, False)):
        for zero_init in (True, False):
            cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
                total_params,
                largest_layer_params,
                num_gpus_per_node,
                num_nodes,
                cpu_offload=optim_cpu,
                cpu_offload_params=params_cpu,
                zero_init=zero_init,
                additional_buffer_factor=additional_buffer_factor,
            )
            options = {
                "offload_param": "cpu" if params_cpu else "none",
                "offload_optimizer": "cpu" if optim_cpu else "none",
                "zero_init": zero_init,
            }
            rows.append((cpu, gpu, options))
    title = _setup(
        int(total_params),
        num_gpus_per_node,
        num_nodes,
        additional_buffer_factor,
        int(largest_layer_params),
    )
    _print_rows("ZeRO-3. " + title, rows)
    return rows


def _numel(p: nn.Parameter) -> int:
    return p.zs_shard.numel if is_partitioned(p) else p.numel()  # stage-3 data is empty


def model_sizes(model: nn.Module) -> tuple[int, int]:
    """``(total parameters, largest module's own parameters)`` of a built model; a
    parameter shared by several modules is counted once, and ``Init``-partitioned
    parameters by their full size."""
    total = sum(_numel(p) for p in model.parameters())
    largest = max(
        (sum(_numel(p) for p in m.parameters(recurse=False)) for m in model.modules()),
        default=0,
    )
    return total, largest


def estimate_zero2_model_states_mem_needs_all_live(
    model: nn.Module,
    num_gpus_per_node: int = 1,
    num_nodes: int = 1,
    additional_buffer_factor: float = 1.5,
) -> list[Row]:
    """``estimate_zero2_model_states_mem_needs_all_cold`` with the counts of ``model``."""
    total, _ = model_sizes(model)
    return estimate_zero2_model_states_mem_needs_all_cold(
        total, num_gpus_per_node, num_nodes, additional_buffer_factor
    )


def estimate_zero3_model_states_mem_needs_all_live(
    model: nn.Module,
    num_gpus_per_node: int = 1,
    num_nodes: int = 1,
    additional_buffer_factor: float = 1.5,
) -> list[Row]:
    """``estimate_zero3_model_states_mem_needs_all_cold`` with the counts of ``model``."""
    total, largest = model_sizes(model)
    return estimate_zero3_model_states_mem_needs_all_cold(
        total, largest, num_gpus_per_node, num_nodes, additional_buffer_factor
    )

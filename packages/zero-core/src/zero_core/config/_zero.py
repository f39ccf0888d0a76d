"""The ``"zero_optimization"`` block and its ``offload_param``/``offload_optimizer`` blocks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._errors import ConfigError, join, show
from ._schema import option

__all__ = ["OffloadOptimizerConfig", "OffloadParamConfig", "ZeroConfig", "refuse_zero"]

_DEVICES = ("cpu", "nvme", "none")


@dataclass(frozen=True, kw_only=True)
class OffloadParamConfig:
    """``zero_optimization.offload_param``: keep stage-3 parameters in CPU memory or on NVMe."""

    device: str = option("cpu", choices=_DEVICES)
    """Where parameters live between uses; ``"none"`` turns offload off."""
    nvme_path: str | None = "/local_nvme"
    """Directory on the NVMe device, for ``device = "nvme"``."""
    pin_memory: bool = False
    """Use page-locked CPU memory (faster copies, more memory)."""
    buffer_count: int = option(5, ge=1)
    """Buffers in the pool used to swap parameters from NVMe."""
    buffer_size: int = option(100_000_000, ge=1)
    """Size of each swap buffer, in elements."""
    max_in_cpu: int = option(1_000_000_000, ge=0)
    """Parameter elements kept in CPU memory when offloading to NVMe."""


@dataclass(frozen=True, kw_only=True)
class OffloadOptimizerConfig:
    """``zero_optimization.offload_optimizer``: optimizer state in CPU memory or on NVMe,
    and the optimizer step on the CPU."""

    device: str = option("cpu", choices=_DEVICES)
    """Where optimizer state lives; ``"none"`` turns offload off."""
    nvme_path: str | None = "/local_nvme"
    """Directory on the NVMe device, for ``device = "nvme"``."""
    pin_memory: bool = False
    """Use page-locked CPU memory (faster copies, more memory)."""
    ratio: float = option(1.0, ge=0.0, le=1.0)
    """Fraction of this rank's optimizer sub-groups (by elements, in order) offloaded; the
    rest keep their masters, state and gradients on the device and step there. 0 offloads
    nothing, 1 everything."""
    buffer_count: int = option(4, ge=1)
    """Buffers in the pool used to swap optimizer state from NVMe (at least the number of
    state tensors per parameter: 4 for Adam)."""
    fast_init: bool = False
    """Initialize the optimizer quickly when offloading to NVMe."""
    pipeline_read: bool = False
    """Overlap reading the next sub-group's state from NVMe with the current step."""
    pipeline_write: bool = False
    """Overlap writing the previous sub-group's state to NVMe with the current step."""


@dataclass(frozen=True, kw_only=True)
class ZeroConfig:
    """DeepSpeed's ``"zero_optimization"`` block.

    The ``stage3_*`` names are canonical; DeepSpeed's unprefixed spellings
    (``prefetch_bucket_size``, ...) and ``stage3_gather_fp16_weights_on_model_save`` are
    accepted as aliases, and the legacy booleans ``cpu_offload``, ``cpu_offload_param`` and
    ``cpu_offload_use_pin_memory`` become the offload blocks.
    """

    stage: int = option(0, ge=0, le=3)
    """0: plain data parallel; 1: partition optimizer states; 2: and gradients; 3: and
    parameters."""
    allgather_partitions: bool = True
    """Gather updated parameters with all-gather (true) or a broadcast per rank (false)."""
    allgather_bucket_size: int = option(500_000_000, ge=1)
    """Elements all-gathered at a time."""
    overlap_comm: bool | None = None
    """Overlap gradient reduction with the backward pass. DeepSpeed's default depends on the
    stage (true at stage 3, false below); a loaded config always holds the resolved bool."""
    reduce_scatter: bool = True
    """Average gradients with reduce-scatter (true) or all-reduce (false)."""
    reduce_bucket_size: int = option(500_000_000, ge=1)
    """Elements reduced at a time."""
    contiguous_gradients: bool = True
    """Copy gradients into one contiguous buffer as they are produced."""
    load_from_fp32_weights: bool = True
    """On checkpoint load, rebuild fp32 master weights from their fp32 copies (true) or
    from the 16-bit model weights (false)."""
    grad_hooks: bool = True
    """Stage 1: reduce gradients from backward hooks (true) or after the backward pass."""
    round_robin_gradients: bool = False
    """Stages 1-2 with CPU offload: spread gradient copies to CPU across ranks."""
    offload_param: OffloadParamConfig | None = None
    """Parameter offload (stage 3); None when absent or ``device = "none"``."""
    offload_optimizer: OffloadOptimizerConfig | None = None
    """Optimizer offload (stages 1-3); None when absent or ``device = "none"``."""
    stage3_max_live_parameters: int = option(1_000_000_000, ge=0, aliases=("max_live_parameters",))
    """Stage 3: most parameter elements gathered on a rank at once."""
    stage3_max_reuse_distance: int = option(1_000_000_000, ge=0, aliases=("max_reuse_distance",))
    """Stage 3: keep a gathered parameter if it is used again within this many elements."""
    # DeepSpeed's code default (5e7); its docs table says 5e8, which would prefetch a whole
    # model of that size after the first module.
    stage3_prefetch_bucket_size: int = option(50_000_000, ge=0, aliases=("prefetch_bucket_size",))
    """Stage 3: elements of upcoming parameters prefetched (gathered ahead of use)."""
    stage3_param_persistence_threshold: int = option(
        100_000, ge=0, aliases=("param_persistence_threshold",)
    )
    """Stage 3: parameters with fewer elements stay whole on every rank."""
    stage3_gather_16bit_weights_on_model_save: bool = option(
        False,
        aliases=(
            "stage3_gather_fp16_weights_on_model_save",
            "gather_16bit_weights_on_model_save",
        ),
    )
    """Stage 3: gather full 16-bit weights when saving the model."""
    stage3_module_granularity_threshold: int = option(
        0, ge=0, aliases=("module_granularity_threshold",)
    )
    """Stage 3: fetch the parameters of modules below this granularity (parameters per
    descendant) as one unit; 0 disables it."""
    # The reference shows 1e12 only in an example block; 1e9 is DeepSpeed's default.
    sub_group_size: int = option(1_000_000_000, ge=1)
    """Stage 3: elements per optimizer sub-group stepped at a time."""
    elastic_checkpoint: bool = False
    """Save stage 1-2 checkpoints loadable at another world size; refused when true."""
    ignore_unused_parameters: bool = True
    """Tolerate parameters that get no gradient in a step (false: raise)."""
    zero_hpz_partition_size: int = option(1, ge=1)
    """ZeRO++ hierarchical partitioning group size; 1 disables it (refused above 1)."""
    zero_quantized_weights: bool = False
    """ZeRO++ quantized weight all-gather (refused when true)."""
    zero_quantized_nontrainable_weights: bool = False
    """ZeRO++ quantized frozen weights (refused when true)."""
    zero_quantized_gradients: bool = False
    """ZeRO++ quantized gradient reduce-scatter (refused when true)."""
    log_trace_cache_warnings: bool = False
    """Stage 3: log invalidations of the traced parameter-fetch order."""
    mics_shard_size: int = option(-1, ge=-1)
    """MiCS shard group size; -1 (or 0) disables MiCS (refused when positive)."""
    mics_hierarchical_params_gather: bool = False
    """MiCS hierarchical all-gather (refused when true)."""

    def __post_init__(self) -> None:
        # "none" is a way to write "no offload": one spelling of it is enough.
        for name in ("offload_param", "offload_optimizer"):
            block = getattr(self, name)
            if block is not None and block.device == "none":
                object.__setattr__(self, name, None)
        if self.overlap_comm is None:
            object.__setattr__(self, "overlap_comm", self.stage == 3)
        self._check_offload()

    def _check_offload(self) -> None:
        if self.offload_param is not None and self.stage != 3:
            raise ConfigError(
                f"zero_optimization.offload_param: parameter offload needs stage 3, but "
                f"zero_optimization.stage is {self.stage}"
            )
        block = self.offload_optimizer
        if block is not None and self.stage == 0:
            raise ConfigError(
                "zero_optimization.offload_optimizer: optimizer offload needs stage 1, 2 or "
                "3, but zero_optimization.stage is 0"
            )
        if block is not None and block.device == "nvme" and self.stage != 3:
            raise ConfigError(
                f"zero_optimization.offload_optimizer.device: NVMe offload needs stage 3, but "
                f"zero_optimization.stage is {self.stage}"
            )

    @staticmethod
    def _normalize_json(raw: dict[str, Any], path: str) -> dict[str, Any]:
        """Turn the legacy offload booleans into the offload blocks they stand for."""
        legacy = {}
        for name in ("cpu_offload", "cpu_offload_param", "cpu_offload_use_pin_memory"):
            if name in raw:
                legacy[name] = value = raw.pop(name)
                if not isinstance(value, bool):
                    raise ConfigError(
                        f"{join(path, name)}: expected true or false, got {show(value)}"
                    )
        pin = legacy.get("cpu_offload_use_pin_memory", False)
        for old, new in (
            ("cpu_offload", "offload_optimizer"),
            ("cpu_offload_param", "offload_param"),
        ):
            if legacy.get(old):
                if raw.get(new) is not None:
                    raise ConfigError(
                        f"{join(path, old)}: the legacy {old!r} and {new!r} both configure "
                        f"offload; give only {new!r}"
                    )
                raw[new] = {"device": "cpu", "pin_memory": pin}
        return raw


def refuse_zero(zero: ZeroConfig) -> None:
    """Raise for ZeRO settings zero-core does not implement (yet).

    Raises:
        NotImplementedError: ZeRO++ (hpZ, quantized weights or gradients), MiCS, elastic
            checkpoints.
    """
    refused = (
        ("elastic_checkpoint", zero.elastic_checkpoint, "elastic checkpoints"),
        ("zero_hpz_partition_size", zero.zero_hpz_partition_size > 1, "ZeRO++ hpZ partitioning"),
        ("zero_quantized_weights", zero.zero_quantized_weights, "ZeRO++ quantized weights"),
        (
            "zero_quantized_nontrainable_weights",
            zero.zero_quantized_nontrainable_weights,
            "ZeRO++ quantized frozen weights",
        ),
        ("zero_quantized_gradients", zero.zero_quantized_gradients, "ZeRO++ quantized gradients"),
        ("mics_shard_size", zero.mics_shard_size > 0, "MiCS sharding"),
        (
            "mics_hierarchical_params_gather",
            zero.mics_hierarchical_params_gather,
            "MiCS hierarchical gather",
        ),
    )
    for name, on, what in refused:
        if on:
            value = show(getattr(zero, name))
            raise NotImplementedError(
                f"zero_optimization.{name}: {what} ({name} = {value}) is not implemented by "
                f"zero-core; remove the key"
            )

"""The mixed-precision blocks ``"fp16"``, ``"bf16"`` and ``"amp"``, and which combine."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import ConfigError, show
from ._schema import option

__all__ = ["BF16Config", "FP16Config", "amp_enabled", "check_modes", "refuse_precision"]


@dataclass(frozen=True, kw_only=True)
class FP16Config:
    """DeepSpeed's ``"fp16"`` block: fp16 training with (dynamic) loss scaling."""

    enabled: bool = False
    """Train in fp16 with fp32 master weights."""
    auto_cast: bool = False
    """Cast the module's floating-point inputs to fp16 before its forward."""
    loss_scale: float = option(0.0, ge=0.0)
    """A static loss scale; 0.0 selects dynamic loss scaling."""
    initial_scale_power: int = option(16, ge=0)
    """The dynamic loss scale starts at ``2 ** initial_scale_power``."""
    loss_scale_window: int = option(1000, ge=1)
    """Steps without overflow before the dynamic scale is raised."""
    hysteresis: int = option(2, ge=1)
    """Overflows tolerated before the dynamic scale is lowered."""
    consecutive_hysteresis: bool = False
    """Refill the hysteresis on every step without overflow."""
    min_loss_scale: float = option(1.0, gt=0.0)
    """The dynamic scale never goes below this."""
    fp16_master_weights_and_grads: bool = False
    """Keep master weights and gradients in fp16 (DeepSpeed: ZeRO-2 with CPU offload only);
    refused by zero-core when true."""


@dataclass(frozen=True, kw_only=True)
class BF16Config:
    """DeepSpeed's ``"bf16"`` block (also spelled ``"bfloat16"``): bf16 training with fp32
    master weights and no loss scaling."""

    enabled: bool = False
    """Train in bf16 with fp32 master weights."""


def amp_enabled(raw: Any) -> bool:
    """Whether the ``"amp"`` block turns Apex AMP on.

    Only ``enabled`` is checked: the other keys are Apex's ``amp.initialize`` arguments.

    Raises:
        ConfigError: the block is not an object, or ``enabled`` is not a boolean.
    """
    if raw is None:
        return False
    if not isinstance(raw, Mapping):
        raise ConfigError(f"amp: expected an object ({{...}}), got {show(raw)}")
    enabled = raw.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError(f"amp.enabled: expected true or false, got {show(enabled)}")
    return enabled


def check_modes(fp16: FP16Config, bf16: BF16Config, amp: bool, zero_stage: int) -> None:
    """Refuse the mixed-precision modes that exclude each other.

    Raises:
        ConfigError: fp16 with bf16, amp with fp16 or bf16, amp with ZeRO stage > 0.
    """
    if fp16.enabled and bf16.enabled:
        raise ConfigError(
            "fp16.enabled, bf16.enabled: fp16 and bf16 training exclude each other; enable "
            "one of them"
        )
    for name, block in (("fp16", fp16), ("bf16", bf16)):
        if amp and block.enabled:
            raise ConfigError(
                f"amp.enabled, {name}.enabled: Apex AMP and {name} training exclude each "
                f"other; enable one of them"
            )
    if amp and zero_stage > 0:
        raise ConfigError(
            f"amp.enabled, zero_optimization.stage: Apex AMP does not work with ZeRO "
            f"(stage {zero_stage}); use fp16 or bf16 instead of amp, or stage 0"
        )


def refuse_precision(fp16: FP16Config, amp: bool) -> None:
    """Raise for precision settings zero-core does not implement.

    Raises:
        NotImplementedError: ``amp.enabled`` or ``fp16.fp16_master_weights_and_grads``.
    """
    if amp:
        raise NotImplementedError(
            'amp.enabled: Apex AMP is not implemented by zero-core; use "fp16" or "bf16" '
            "(or torch.autocast in the model)"
        )
    if fp16.fp16_master_weights_and_grads:
        raise NotImplementedError(
            "fp16.fp16_master_weights_and_grads: fp16 master weights are not implemented by "
            "zero-core (master weights are fp32); remove it or set it to false"
        )

"""Hyper-parameter checks shared by every optimizer (errors name the argument)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["adam_family_defaults", "check_betas", "check_nonnegative", "refuse_amsgrad"]


def check_nonnegative(name: str, value: Any) -> float:
    """A finite number >= 0 (learning rates, eps, weight decay)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def check_betas(value: Any, name: str = "betas") -> tuple[float, float]:
    """A pair of numbers each in [0, 1)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (beta1, beta2), got {value!r}")
    out = []
    for i, beta in enumerate(value):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)):
            raise TypeError(f"{name}[{i}] must be a number, got {beta!r}")
        if not 0.0 <= float(beta) < 1.0:
            raise ValueError(f"{name}[{i}] must be in [0, 1), got {beta}")
        out.append(float(beta))
    return out[0], out[1]


def refuse_amsgrad(amsgrad: Any, name: str, hint: str) -> None:
    """Raise for ``amsgrad=True``, which none of zero-optim's optimizers implement."""
    if amsgrad:
        raise ValueError(f"{name} does not implement amsgrad; {hint}")


def adam_family_defaults(
    *,
    lr: Any,
    bias_correction: Any,
    betas: Any,
    eps: Any,
    eps_inside_sqrt: Any,
    weight_decay: Any,
    max_grad_norm: Any,
) -> dict[str, Any]:
    """The checked ``defaults`` the LAMB and 1-bit optimizers share (DeepSpeed gives them the
    same arguments), each bad value named by its key."""
    return {
        "lr": check_nonnegative("lr", lr),
        "bias_correction": bool(bias_correction),
        "betas": check_betas(betas),
        "eps": check_nonnegative("eps", eps),
        "eps_inside_sqrt": bool(eps_inside_sqrt),
        "weight_decay": check_nonnegative("weight_decay", weight_decay),
        "max_grad_norm": check_nonnegative("max_grad_norm", max_grad_norm),
    }

"""Argument checks shared by every schedule.

Every schedule validates all of its arguments *before* it touches the optimizer, so a bad
value raises and leaves the optimizer's param groups exactly as they were. The helpers
here raise errors that name the offending argument and say what would be accepted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch.optim import Optimizer

__all__ = [
    "as_bool",
    "as_count",
    "as_float",
    "check_ordered",
    "per_group",
    "require_optimizer",
]


def require_optimizer(optimizer: Any) -> Optimizer:
    """Return the ``torch.optim.Optimizer`` to schedule.

    DeepSpeed's schedules also accept a wrapper object whose ``.optimizer`` attribute is the
    torch optimizer (its ZeRO and fp16 optimizers look like that); we accept the same so
    scripts written against it keep working.

    Raises:
        TypeError: ``optimizer`` is neither a torch optimizer nor wraps one.
    """
    if isinstance(optimizer, Optimizer):
        return optimizer
    inner = getattr(optimizer, "optimizer", None)
    if isinstance(inner, Optimizer):
        return inner
    raise TypeError(
        f"optimizer must be a torch.optim.Optimizer (or an object whose .optimizer is one), "
        f"got {type(optimizer).__module__}.{type(optimizer).__qualname__}"
    )


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _auto_hint(value: Any) -> str:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return (
            '; "auto" is a placeholder that the launching framework must replace with a '
            "number before the scheduler is built"
        )
    return ""


def as_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    """Check that ``value`` is a finite real number within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {_describe(value)}{_auto_hint(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def as_count(name: str, value: Any, *, minimum: int = 1) -> int:
    """Check that ``value`` is a whole number of steps, at least ``minimum``.

    JSON has one number type, so ``2000.0`` is accepted as ``2000``; ``2000.5`` is not.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be an integer step count, got {_describe(value)}{_auto_hint(value)}"
        )
    if isinstance(value, float):
        if not value.is_integer():
            raise TypeError(f"{name} must be an integer step count, got {value}")
        value = int(value)
    if value < minimum:
        kind = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value}")
    return value


def as_bool(name: str, value: Any) -> bool:
    """Check that ``value`` is a real boolean (not ``"false"``, which is truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, got {_describe(value)}")
    return value


def per_group(
    name: str,
    value: Any,
    num_groups: int,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> list[float]:
    """Broadcast a scalar to every param group, or check a per-group list.

    Raises:
        ValueError: a list whose length is not the number of param groups.
    """
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != num_groups:
            raise ValueError(
                f"{name} has {len(value)} values but the optimizer has {num_groups} param "
                f"groups; give one value per group or a single number for all"
            )
        return [
            as_float(f"{name}[{i}]", v, minimum=minimum, maximum=maximum)
            for i, v in enumerate(value)
        ]
    return [as_float(name, value, minimum=minimum, maximum=maximum)] * num_groups


def check_ordered(low_name: str, lows: list[float], high_name: str, highs: list[float]) -> None:
    """Raise when a lower bound is above its upper bound in any param group."""
    for i, (low, high) in enumerate(zip(lows, highs)):
        if low > high:
            where = f" (param group {i})" if len(lows) > 1 else ""
            raise ValueError(
                f"{low_name}={low} is above {high_name}={high}{where}; the minimum must not "
                f"exceed the maximum"
            )

"""Warmup schedules: WarmupLR, WarmupDecayLR and WarmupCosineLR.

All three share one warmup ramp (:func:`warmup_fraction`): after ``i`` steps it is
``log(i + 1) / log(W)`` ("log") or ``i / W`` ("linear"), reaching 1 at ``W =
max(2, warmup_num_steps)``. ``W`` is never below 2 because the log ramp divides by
``log(W)``; DeepSpeed does the same, so configs with ``warmup_num_steps: 1`` behave alike.
"""

from __future__ import annotations

import math
from typing import Literal

from torch.optim import Optimizer

from ._base import Schedule, warn_at_caller
from ._validate import as_count, as_float, check_ordered, per_group, require_optimizer

__all__ = ["WarmupCosineLR", "WarmupDecayLR", "WarmupLR", "warmup_fraction"]

WarmupType = Literal["log", "linear"]
WARMUP_TYPES: tuple[str, ...] = ("log", "linear")


def warmup_fraction(batch_iteration: int, warmup_num_steps: int, warmup_type: str) -> float:
    """Fraction of the warmup done at ``batch_iteration`` (``warmup_num_steps`` already >= 2)."""
    if batch_iteration >= warmup_num_steps:
        return 1.0
    if warmup_type == "log":
        return math.log(batch_iteration + 1) / math.log(warmup_num_steps)
    return batch_iteration / warmup_num_steps


def _check_warmup(warmup_num_steps: object, warmup_type: object) -> tuple[int, str]:
    steps = as_count("warmup_num_steps", warmup_num_steps)
    if warmup_type not in WARMUP_TYPES:
        raise ValueError(
            f"warmup_type must be one of {', '.join(map(repr, WARMUP_TYPES))}, got {warmup_type!r}"
        )
    return max(2, steps), str(warmup_type)


def _check_total(total_num_steps: object, warmup_num_steps: int) -> int:
    total = as_count("total_num_steps", total_num_steps)
    if total < warmup_num_steps:
        warn_at_caller(
            f"total_num_steps={total} is less than warmup_num_steps={warmup_num_steps}: the "
            f"schedule ends before its warmup does"
        )
    return total


class WarmupLR(Schedule):
    """Ramp each group's lr from ``warmup_min_lr`` to ``warmup_max_lr``, then hold it.

    Args:
        optimizer: the optimizer whose param groups are scheduled.
        warmup_min_lr: lr at the start of warmup; one number or one per param group.
        warmup_max_lr: lr at the end of warmup; one number or one per param group. ``None``
            takes each group's current lr, as DeepSpeed does.
        warmup_num_steps: steps of warmup (values below 2 act as 2).
        warmup_type: ``"log"`` or ``"linear"`` ramp.
        last_batch_iteration: resume position; -1 starts fresh.

    Raises:
        TypeError, ValueError: a bad argument, named in the message; the optimizer is left
            untouched.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_min_lr: float | list[float] = 0.0,
        warmup_max_lr: float | list[float] | None = None,
        warmup_num_steps: int = 1000,
        warmup_type: WarmupType = "log",
        last_batch_iteration: int = -1,
    ) -> None:
        optimizer = require_optimizer(optimizer)
        n = len(optimizer.param_groups)
        if warmup_max_lr is None:
            warmup_max_lr = [float(group["lr"]) for group in optimizer.param_groups]
        self.min_lrs = per_group("warmup_min_lr", warmup_min_lr, n, minimum=0.0)
        self.max_lrs = per_group("warmup_max_lr", warmup_max_lr, n, minimum=0.0)
        check_ordered("warmup_min_lr", self.min_lrs, "warmup_max_lr", self.max_lrs)
        self.warmup_num_steps, self.warmup_type = _check_warmup(warmup_num_steps, warmup_type)
        self._check_more()
        super().__init__(optimizer, last_batch_iteration)

    def _check_more(self) -> None:
        """Hook for subclasses to validate their own arguments before the optimizer changes."""

    def _gamma(self, batch_iteration: int) -> float:
        return warmup_fraction(batch_iteration, self.warmup_num_steps, self.warmup_type)

    def lr_at(self, batch_iteration: int) -> list[float]:
        if batch_iteration < 0:
            return list(self.min_lrs)
        gamma = self._gamma(batch_iteration)
        return [lo + (hi - lo) * gamma for lo, hi in zip(self.min_lrs, self.max_lrs)]


class WarmupDecayLR(WarmupLR):
    """WarmupLR, then a linear decay from ``warmup_max_lr`` to ``warmup_min_lr``.

    The decay factor after warmup is ``max(0, (T - i) / max(1, T - W))`` for
    ``T = total_num_steps``, reaching the minimum at step ``T`` and staying there.

    Args:
        optimizer: the optimizer whose param groups are scheduled.
        total_num_steps: the step at which the decay reaches ``warmup_min_lr``.
        warmup_min_lr: see :class:`WarmupLR`.
        warmup_max_lr: see :class:`WarmupLR` (default 0.001, as in DeepSpeed).
        warmup_num_steps: see :class:`WarmupLR`.
        warmup_type: see :class:`WarmupLR`.
        last_batch_iteration: resume position; -1 starts fresh.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_num_steps: int,
        warmup_min_lr: float | list[float] = 0.0,
        warmup_max_lr: float | list[float] | None = 0.001,
        warmup_num_steps: int = 1000,
        warmup_type: WarmupType = "log",
        last_batch_iteration: int = -1,
    ) -> None:
        self.total_num_steps = total_num_steps
        super().__init__(
            optimizer,
            warmup_min_lr=warmup_min_lr,
            warmup_max_lr=warmup_max_lr,
            warmup_num_steps=warmup_num_steps,
            warmup_type=warmup_type,
            last_batch_iteration=last_batch_iteration,
        )

    def _check_more(self) -> None:
        self.total_num_steps = _check_total(self.total_num_steps, self.warmup_num_steps)

    def _gamma(self, batch_iteration: int) -> float:
        if batch_iteration < self.warmup_num_steps:
            return super()._gamma(batch_iteration)
        remaining = float(self.total_num_steps - batch_iteration)
        return max(0.0, remaining / float(max(1, self.total_num_steps - self.warmup_num_steps)))


class WarmupCosineLR(Schedule):
    """Scale each group's own lr: warm up to 1x, then cosine-anneal to ``cos_min_ratio``.

    The lr is ``initial_lr * ratio``. During warmup the ratio ramps from
    ``warmup_min_ratio`` to 1; afterwards it is ``cos_min_ratio + (1 - cos_min_ratio) *
    (1 + cos(pi * p)) / 2`` with progress ``p = (i - W + 1) / max(1, T - W)`` clamped to 1,
    so it stays at ``cos_min_ratio`` once ``total_num_steps`` is reached. Before the first
    step the lr is 0.

    Args:
        optimizer: the optimizer; each group's lr at construction is its peak lr.
        total_num_steps: the step at which the cosine reaches ``cos_min_ratio``.
        warmup_min_ratio: ratio at the start of warmup, in [0, 1].
        warmup_num_steps: steps of warmup (values below 2 act as 2).
        cos_min_ratio: final ratio, in [0, 1].
        warmup_type: ``"log"`` or ``"linear"`` ramp.
        last_batch_iteration: resume position; -1 starts fresh.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_num_steps: int,
        warmup_min_ratio: float = 0.0,
        warmup_num_steps: int = 1000,
        cos_min_ratio: float = 0.0001,
        warmup_type: WarmupType = "log",
        last_batch_iteration: int = -1,
    ) -> None:
        optimizer = require_optimizer(optimizer)
        self.warmup_min_ratio = as_float(
            "warmup_min_ratio", warmup_min_ratio, minimum=0.0, maximum=1.0
        )
        self.cos_min_ratio = as_float("cos_min_ratio", cos_min_ratio, minimum=0.0, maximum=1.0)
        self.warmup_num_steps, self.warmup_type = _check_warmup(warmup_num_steps, warmup_type)
        self.total_num_steps = _check_total(total_num_steps, self.warmup_num_steps)
        super().__init__(optimizer, last_batch_iteration)

    def ratio_at(self, batch_iteration: int) -> float:
        """The multiplier applied to every group's initial lr at that index."""
        if batch_iteration < 0:
            return 0.0
        if batch_iteration < self.warmup_num_steps:
            ramp = warmup_fraction(batch_iteration, self.warmup_num_steps, self.warmup_type)
            return self.warmup_min_ratio + ramp * (1.0 - self.warmup_min_ratio)
        decay_steps = max(1, self.total_num_steps - self.warmup_num_steps)
        progress = min(1.0, (batch_iteration - self.warmup_num_steps + 1) / decay_steps)
        cosine = (1.0 + math.cos(math.pi * progress)) / 2.0
        return max(0.0, self.cos_min_ratio + (1.0 - self.cos_min_ratio) * cosine)

    def lr_at(self, batch_iteration: int) -> list[float]:
        ratio = self.ratio_at(batch_iteration)
        return [float(base) * ratio for base in self.base_lrs]

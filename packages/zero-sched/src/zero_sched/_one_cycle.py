"""The 1Cycle policy: one triangle of lr (and inverse momentum), then an optional decay.

[Note: 1Cycle shape]
Let ``b = last_batch_iteration + 1`` (batches run so far), ``S1``/``S2`` the two step sizes
and ``S = S1 + S2``. Within a cycle the position is ``x = frac(b / S)``; the scale rises as
``x / (S1/S)`` to 1 at the peak and falls back as ``(1 - x) / (S2/S)``. With a stair count
``n > 0`` the scale is held flat on ``n`` stairs per half: ``floor(n * c / S1) / n`` rising
and ``floor(n * (S - c) / S2) / n`` falling, where ``c = b mod S`` is the integer position
(computing stairs from ``c`` instead of from the float scale keeps an exact peak exact).
lr is ``min + (max - min) * scale`` and momentum ``max_mom - (max_mom - min_mom) * scale``.

Once ``last_batch_iteration >= S`` the cycle is over: with ``decay_step_size > 0`` and a
non-zero rate, ``d = last_batch_iteration - S + 1`` steps into the decay the lr is
``cycle_min_lr / (1 + decay_lr_rate * d / decay_step_size)`` and the momentum
``cycle_max_mom * (1 + decay_mom_rate * d / decay_step_size)``; otherwise they hold at
``cycle_min_lr`` and ``cycle_max_mom``.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer

from ._base import Schedule, warn_at_caller
from ._validate import as_bool, as_count, as_float, check_ordered, per_group, require_optimizer

__all__ = ["OneCycle"]


class OneCycle(Schedule):
    """Leslie Smith's 1Cycle policy with DeepSpeed's arguments. See [Note: 1Cycle shape].

    Momentum is cycled inversely to the lr when ``cycle_momentum`` is true: Adam-style
    optimizers get ``betas[0]`` cycled (``betas[1]`` keeps the optimizer's own value;
    DeepSpeed overwrites it with 0.99), SGD-style optimizers get ``momentum`` cycled. An
    optimizer with neither gets a warning and an lr-only schedule. Right after construction
    the momentum is ``cycle_min_mom``, as in DeepSpeed.

    Args:
        optimizer: the optimizer whose param groups are scheduled.
        cycle_min_lr: lr at the start and end of the cycle; one number or one per group.
        cycle_max_lr: lr at the peak; one number or one per group.
        decay_lr_rate: post-cycle lr decay rate (0 disables the decay).
        cycle_first_step_size: steps from the start to the peak.
        cycle_second_step_size: steps from the peak back down; ``None`` means the same as
            the first.
        cycle_first_stair_count: stairs on the way up; 0 is a continuous ramp.
        cycle_second_stair_count: stairs on the way down; ``None`` means the first count.
        decay_step_size: steps per unit of post-cycle decay; 0 disables the decay.
        cycle_momentum: cycle momentum inversely to the lr.
        cycle_min_mom: momentum at the lr peak; one number or one per group.
        cycle_max_mom: momentum at the cycle ends; one number or one per group.
        decay_mom_rate: post-cycle momentum growth rate (0 disables it).
        last_batch_iteration: resume position; -1 starts fresh.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        cycle_min_lr: float | list[float],
        cycle_max_lr: float | list[float],
        decay_lr_rate: float = 0.0,
        cycle_first_step_size: int = 2000,
        cycle_second_step_size: int | None = None,
        cycle_first_stair_count: int = 0,
        cycle_second_stair_count: int | None = None,
        decay_step_size: int = 0,
        cycle_momentum: bool = True,
        cycle_min_mom: float | list[float] = 0.8,
        cycle_max_mom: float | list[float] = 0.9,
        decay_mom_rate: float = 0.0,
        last_batch_iteration: int = -1,
    ) -> None:
        optimizer = require_optimizer(optimizer)
        n = len(optimizer.param_groups)
        self.min_lrs = per_group("cycle_min_lr", cycle_min_lr, n, minimum=0.0)
        self.max_lrs = per_group("cycle_max_lr", cycle_max_lr, n, minimum=0.0)
        check_ordered("cycle_min_lr", self.min_lrs, "cycle_max_lr", self.max_lrs)
        self.decay_lr_rate = as_float("decay_lr_rate", decay_lr_rate, minimum=0.0)

        self.first_step_size = as_count("cycle_first_step_size", cycle_first_step_size)
        self.second_step_size = (
            self.first_step_size
            if cycle_second_step_size is None
            else as_count("cycle_second_step_size", cycle_second_step_size, minimum=0)
        )
        self.total_size = self.first_step_size + self.second_step_size
        self.first_stair_count = as_count(
            "cycle_first_stair_count", cycle_first_stair_count, minimum=0
        )
        self.second_stair_count = (
            self.first_stair_count
            if cycle_second_stair_count is None
            else as_count("cycle_second_stair_count", cycle_second_stair_count, minimum=0)
        )
        self.decay_step_size = as_count("decay_step_size", decay_step_size, minimum=0)

        self.cycle_momentum = as_bool("cycle_momentum", cycle_momentum)
        self.min_moms = per_group("cycle_min_mom", cycle_min_mom, n, minimum=0.0, maximum=1.0)
        self.max_moms = per_group("cycle_max_mom", cycle_max_mom, n, minimum=0.0, maximum=1.0)
        check_ordered("cycle_min_mom", self.min_moms, "cycle_max_mom", self.max_moms)
        self.decay_mom_rate = as_float("decay_mom_rate", decay_mom_rate, minimum=0.0)
        if self.cycle_momentum:
            self._momentum_key = _momentum_key(optimizer)
            if self._momentum_key is None:
                warn_at_caller(
                    f"cycle_momentum is on but {type(optimizer).__name__} has neither 'betas' "
                    f"nor 'momentum'; only the lr is scheduled (set cycle_momentum=false to "
                    f"silence this)"
                )
                self.cycle_momentum = False
        super().__init__(optimizer, last_batch_iteration)

    @property
    def lr_decays(self) -> bool:
        """Whether the lr decays after the cycle (both a step size and a rate are set)."""
        return self.decay_step_size > 0 and not math.isclose(self.decay_lr_rate, 0.0)

    @property
    def momentum_decays(self) -> bool:
        """Whether the momentum changes after the cycle."""
        return self.decay_step_size > 0 and not math.isclose(self.decay_mom_rate, 0.0)

    def scale_at(self, batch_iteration: int) -> float:
        """Height within the cycle, 0 at the ends and 1 at the peak. See [Note: 1Cycle shape]."""
        # lr and momentum of one step both need the scale: remember the last one.
        memo = self.__dict__.get("_scale_memo")
        if memo is not None and memo[0] == batch_iteration:
            return memo[1]
        scale = self._compute_scale(batch_iteration)
        self.__dict__["_scale_memo"] = (batch_iteration, scale)
        return scale

    def _compute_scale(self, batch_iteration: int) -> float:
        batches = batch_iteration + 1
        position = batches % self.total_size
        rising = position <= self.first_step_size
        stairs = self.first_stair_count if rising else self.second_stair_count
        if stairs > 0:
            if rising:
                level = position * stairs / self.first_step_size
            else:
                level = (self.total_size - position) * stairs / self.second_step_size
            return math.floor(level) / stairs
        step_ratio = self.first_step_size / self.total_size
        x = batches / self.total_size - math.floor(batches / self.total_size)
        if x <= step_ratio:
            return x / step_ratio
        return (x - 1.0) / (step_ratio - 1.0)

    def lr_at(self, batch_iteration: int) -> list[float]:
        if batch_iteration < self.total_size:
            scale = self.scale_at(batch_iteration)
            return [lo + (hi - lo) * scale for lo, hi in zip(self.min_lrs, self.max_lrs)]
        if not self.lr_decays:
            return list(self.min_lrs)
        decay = 1.0 + self.decay_lr_rate * self._decay_interval(batch_iteration)
        return [lo / decay for lo in self.min_lrs]

    def momentum_at(self, batch_iteration: int) -> list[float] | None:
        if not self.cycle_momentum:
            return None
        if batch_iteration < 0:
            return list(self.min_moms)
        if batch_iteration < self.total_size:
            scale = self.scale_at(batch_iteration)
            return [hi - (hi - lo) * scale for lo, hi in zip(self.min_moms, self.max_moms)]
        if not self.momentum_decays:
            return list(self.max_moms)
        growth = 1.0 + self.decay_mom_rate * self._decay_interval(batch_iteration)
        return [hi * growth for hi in self.max_moms]

    def _decay_interval(self, batch_iteration: int) -> float:
        return (batch_iteration - self.total_size + 1) / self.decay_step_size


def _momentum_key(optimizer: Optimizer) -> str | None:
    if "betas" in optimizer.defaults:
        return "betas"
    if "momentum" in optimizer.defaults:
        return "momentum"
    return None

"""The LR range test schedule: an lr that only grows, to find where training diverges."""

from __future__ import annotations

import math

from torch.optim import Optimizer

from ._base import Schedule
from ._validate import as_bool, as_count, as_float, per_group, require_optimizer

__all__ = ["LRRangeTest"]


class LRRangeTest(Schedule):
    """Grow the lr linearly from ``lr_range_test_min_lr``.

    After ``i`` steps the lr is ``min_lr * (1 + step_rate * k)`` with ``k = (i + 1) /
    step_size`` (continuous) or ``floor((i + 1) / step_size)`` (staircase). For the whole
    procedure, run it on a model with :func:`zero_sched.lr_range_test`.

    Args:
        optimizer: the optimizer whose param groups are scheduled.
        lr_range_test_min_lr: starting lr; one number or one per param group.
        lr_range_test_step_size: steps per unit of growth.
        lr_range_test_step_rate: growth per unit.
        lr_range_test_staircase: grow in steps of ``step_size`` instead of continuously.
        last_batch_iteration: resume position; -1 starts fresh.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        lr_range_test_min_lr: float | list[float] = 1e-3,
        lr_range_test_step_size: int = 2000,
        lr_range_test_step_rate: float = 1.0,
        lr_range_test_staircase: bool = False,
        last_batch_iteration: int = -1,
    ) -> None:
        optimizer = require_optimizer(optimizer)
        self.min_lrs = per_group(
            "lr_range_test_min_lr", lr_range_test_min_lr, len(optimizer.param_groups), minimum=0.0
        )
        self.step_size = as_count("lr_range_test_step_size", lr_range_test_step_size)
        self.step_rate = as_float("lr_range_test_step_rate", lr_range_test_step_rate, minimum=0.0)
        self.staircase = as_bool("lr_range_test_staircase", lr_range_test_staircase)
        super().__init__(optimizer, last_batch_iteration)

    def growth_at(self, batch_iteration: int) -> float:
        """The factor multiplying ``lr_range_test_min_lr`` at that index."""
        interval = (batch_iteration + 1) / self.step_size
        if self.staircase:
            interval = math.floor(interval)
        return 1.0 + self.step_rate * interval

    def lr_at(self, batch_iteration: int) -> list[float]:
        growth = self.growth_at(batch_iteration)
        return [lr * growth for lr in self.min_lrs]

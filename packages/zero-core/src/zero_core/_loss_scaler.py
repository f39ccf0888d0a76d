"""Loss scaling for fp16 training: a fixed scale, or DeepSpeed's dynamic scale with hysteresis.

[Note: the dynamic rule]
The scale starts at ``2**initial_scale_power``. A step whose gradients hold an inf or NaN is
skipped; it uses up one unit of hysteresis, and once none is left the scale is halved (never
below ``min_loss_scale``). After ``loss_scale_window`` steps in a row without an overflow the
scale doubles and the hysteresis is refilled; with ``consecutive_hysteresis`` every clean
step refills it, so only overflows in a row lower the scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["LossScaler"]


@dataclass
class LossScaler:
    """``loss_scale > 0`` is a static scale; ``0`` selects the dynamic rule above."""

    loss_scale: float = 0.0
    initial_scale_power: int = 16
    loss_scale_window: int = 1000
    hysteresis: int = 2
    consecutive_hysteresis: bool = False
    min_loss_scale: float = 1.0
    scale_factor: float = 2.0
    cur_scale: float = field(init=False)
    cur_hysteresis: int = field(init=False)
    cur_iter: int = field(init=False, default=0)
    last_overflow_iter: int = field(init=False, default=-1)

    def __post_init__(self) -> None:
        self.dynamic = self.loss_scale == 0
        self.cur_scale = 2.0**self.initial_scale_power if self.dynamic else self.loss_scale
        self.cur_hysteresis = self.hysteresis

    @property
    def loss_scale_value(self) -> float:
        return self.cur_scale

    def update(self, overflow: bool) -> None:
        """Record one step's outcome (call once per optimizer step)."""
        if not self.dynamic:
            self.cur_iter += 1
            return
        if overflow:
            if self.hysteresis == 1 or self.cur_hysteresis == 1:
                self.cur_scale = max(self.cur_scale / self.scale_factor, self.min_loss_scale)
            else:
                self.cur_hysteresis -= 1
            self.last_overflow_iter = self.cur_iter
        else:
            if self.consecutive_hysteresis:
                self.cur_hysteresis = self.hysteresis
            if (self.cur_iter - self.last_overflow_iter) % self.loss_scale_window == 0:
                if not self.consecutive_hysteresis:
                    self.cur_hysteresis = self.hysteresis
                self.cur_scale *= self.scale_factor
        self.cur_iter += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "cur_scale": self.cur_scale,
            "cur_hysteresis": self.cur_hysteresis,
            "cur_iter": self.cur_iter,
            "last_overflow_iter": self.last_overflow_iter,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cur_scale = float(state["cur_scale"])
        self.cur_hysteresis = int(state["cur_hysteresis"])
        self.cur_iter = int(state["cur_iter"])
        self.last_overflow_iter = int(state["last_overflow_iter"])

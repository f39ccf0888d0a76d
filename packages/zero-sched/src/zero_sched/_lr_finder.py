"""Run the LR range test on a real model and suggest OneCycle bounds.

[Note: what the range test suggests]
The lr grows (LRRangeTest schedule) while we train; the loss first falls, then flattens, then
blows up. We smooth the loss with a bias-corrected exponential moving average and stop once
it exceeds ``divergence_factor`` times the best smoothed loss seen, or turns non-finite. The
lr at the lowest smoothed loss is the largest lr that still helped: we suggest it as
``cycle_max_lr`` and a tenth of it as ``cycle_min_lr`` (Smith's rule of thumb for 1Cycle).
If the loss never stopped improving, the suggested maximum is only a lower bound and
``diverged`` is False: rerun with a larger ``lr_range_test_step_rate`` or more steps.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ._plot import plot_png, text_chart
from ._range_test import LRRangeTest
from ._validate import as_bool, as_count, as_float, require_optimizer

__all__ = ["LRRangeTestResult", "lr_range_test"]


@dataclass(frozen=True, slots=True)
class LRRangeTestResult:
    """What :func:`lr_range_test` measured. Lists are aligned: entry ``i`` is step ``i``."""

    lrs: list[float]
    losses: list[float]
    smoothed_losses: list[float]
    #: True when the test stopped because the loss diverged (the suggestion is then an
    #: upper region found by the test, not a lower bound).
    diverged: bool
    suggested_max_lr: float
    suggested_min_lr: float

    def one_cycle_config(self, cycle_first_step_size: int = 2000, **params: Any) -> dict[str, Any]:
        """A ``"scheduler"`` block for OneCycle with the suggested bounds.

        Extra keyword arguments are added to its ``"params"`` (e.g.
        ``cycle_second_step_size``).
        """
        return {
            "type": "OneCycle",
            "params": {
                "cycle_min_lr": self.suggested_min_lr,
                "cycle_max_lr": self.suggested_max_lr,
                "cycle_first_step_size": cycle_first_step_size,
                **params,
            },
        }

    def text_chart(self) -> str:
        """The smoothed loss against step, as text."""
        return text_chart(
            self.smoothed_losses,
            title=f"smoothed loss; lr {self.lrs[0]:.3e} -> {self.lrs[-1]:.3e}",
        )


def _batches(data: Iterable[Any]) -> Iterator[Any]:
    """Yield batches forever, restarting ``data`` when it runs out (if it can restart)."""
    while True:
        produced = False
        for batch in data:
            produced = True
            yield batch
        if not produced or iter(data) is data:
            return


def _default_forward(
    loss_fn: Callable[..., torch.Tensor],
) -> Callable[[torch.nn.Module, Any], torch.Tensor]:
    def forward(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError(
                "each batch must be an (inputs, targets) pair; for other batch layouts pass "
                "forward=lambda model, batch: loss"
            )
        inputs, targets = batch
        return loss_fn(model(inputs), targets)

    return forward


def lr_range_test(
    model: torch.nn.Module,
    loss_fn: Callable[..., torch.Tensor] | None,
    data: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    *,
    lr_range_test_min_lr: float = 1e-5,
    lr_range_test_step_size: int = 1,
    lr_range_test_step_rate: float = 10.0,
    lr_range_test_staircase: bool = False,
    max_steps: int = 100,
    divergence_factor: float = 4.0,
    smoothing: float = 0.9,
    forward: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None,
    restore: bool = True,
    plot_path: str | os.PathLike[str] | None = None,
) -> LRRangeTestResult:
    """Train with a growing lr until the loss diverges; suggest OneCycle lr bounds.

    See [Note: what the range test suggests]. With the defaults the lr grows linearly from
    1e-5 by 1e-4 per step, reaching about 1e-2 after 100 steps.

    Args:
        model: the model to train.
        loss_fn: ``loss_fn(model(inputs), targets)`` for ``(inputs, targets)`` batches;
            ignored when ``forward`` is given.
        data: batches; restarted when exhausted (a one-shot iterator just ends the test).
        optimizer: an optimizer over the model's parameters; its lr is overridden.
        lr_range_test_min_lr: starting lr.
        lr_range_test_step_size: steps per unit of growth.
        lr_range_test_step_rate: growth per unit (the lr is ``min_lr * (1 + rate * k)``).
        lr_range_test_staircase: grow in stairs.
        max_steps: upper bound on training steps.
        divergence_factor: stop when the smoothed loss exceeds this times its minimum.
        smoothing: EMA coefficient in [0, 1) for the loss (0 means no smoothing).
        forward: optional ``forward(model, batch) -> loss`` for other batch layouts.
        restore: put the model's and optimizer's state back afterwards, so the test does not
            leave the model trained with a diverging lr.
        plot_path: write the loss-vs-lr plot to this PNG (needs the ``plot`` extra).

    Returns:
        The per-step lrs and losses, and the suggested ``cycle_min_lr``/``cycle_max_lr``.

    Raises:
        ValueError, TypeError: bad arguments (named); nothing is trained.
        RuntimeError: no batch was produced, or the very first loss is not finite.
    """
    optimizer = require_optimizer(optimizer)
    max_steps = as_count("max_steps", max_steps)
    divergence_factor = as_float("divergence_factor", divergence_factor, minimum=1.0)
    smoothing = as_float("smoothing", smoothing, minimum=0.0)
    if smoothing >= 1.0:
        raise ValueError(f"smoothing must be below 1, got {smoothing}")
    restore = as_bool("restore", restore)
    if forward is None:
        if loss_fn is None:
            raise ValueError("give loss_fn (for (inputs, targets) batches) or forward")
        forward = _default_forward(loss_fn)

    saved_model = copy.deepcopy(model.state_dict()) if restore else None
    saved_optimizer = copy.deepcopy(optimizer.state_dict()) if restore else None
    scheduler = LRRangeTest(
        optimizer,
        lr_range_test_min_lr=lr_range_test_min_lr,
        lr_range_test_step_size=lr_range_test_step_size,
        lr_range_test_step_rate=lr_range_test_step_rate,
        lr_range_test_staircase=lr_range_test_staircase,
    )
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, best, diverged = 0.0, math.inf, False
    was_training = model.training
    model.train()
    try:
        for step, batch in zip(range(max_steps), _batches(data)):
            lr = float(optimizer.param_groups[0]["lr"])
            optimizer.zero_grad(set_to_none=True)
            loss = forward(model, batch)
            value = float(loss.detach())
            if not math.isfinite(value):
                if step == 0:
                    raise RuntimeError(
                        f"the first loss is {value} at lr {lr:.3e}; lower lr_range_test_min_lr"
                    )
                diverged = True
                break
            loss.backward()
            optimizer.step()
            scheduler.step()
            average = smoothing * average + (1.0 - smoothing) * value
            current = average / (1.0 - smoothing ** (step + 1))
            lrs.append(lr)
            losses.append(value)
            smoothed.append(current)
            best = min(best, current)
            if current > divergence_factor * best:
                diverged = True
                break
    finally:
        model.train(was_training)
        if restore:
            model.load_state_dict(saved_model)
            optimizer.load_state_dict(saved_optimizer)
    if not lrs:
        raise RuntimeError("data produced no batch; the range test needs at least one")
    best_step = min(range(len(smoothed)), key=smoothed.__getitem__)
    result = LRRangeTestResult(
        lrs=lrs,
        losses=losses,
        smoothed_losses=smoothed,
        diverged=diverged,
        suggested_max_lr=lrs[best_step],
        suggested_min_lr=lrs[best_step] / 10.0,
    )
    if plot_path is not None:
        plot_png(
            plot_path,
            [("loss", losses), ("smoothed loss", smoothed)],
            title="LR range test",
            x=lrs,
            xlabel="learning rate",
            log_x=True,
        )
    return result

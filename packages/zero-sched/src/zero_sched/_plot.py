"""Trace a schedule without training, and draw it as text or as a PNG.

The text chart needs nothing beyond the standard library; the PNG needs matplotlib, which
is the optional ``plot`` extra (``pip install "zero-sched[plot]"``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._config import build_scheduler

__all__ = ["ScheduleTrace", "describe", "plot_png", "save_png", "text_chart", "trace_schedule"]


@dataclass(frozen=True, slots=True)
class ScheduleTrace:
    """The values a schedule writes into the optimizer, step by step.

    ``lrs[i]`` is the lr used by optimizer step ``i`` (index 0 is the value set at
    construction, before any ``scheduler.step()``).
    """

    name: str
    lrs: list[float]
    #: Momentum (or Adam beta1) per step, or ``None`` when the schedule does not cycle it.
    momenta: list[float] | None


def _optimizer_for(config: Mapping[str, Any], base_lr: float | None) -> torch.optim.Optimizer:
    """A one-parameter optimizer standing in for the user's.

    Adam-style ``betas`` are used so OneCycle's momentum cycling shows; the lr is the
    ``--lr`` given, else the config's optimizer lr, else 1e-3.
    """
    if base_lr is None:
        optimizer_block = config.get("optimizer", {}) if isinstance(config, Mapping) else {}
        base_lr = optimizer_block.get("params", {}).get("lr", 1e-3)
    param = torch.nn.Parameter(torch.zeros(1))
    return torch.optim.AdamW([param], lr=base_lr)


def trace_schedule(
    config: Mapping[str, Any], steps: int, base_lr: float | None = None
) -> ScheduleTrace:
    """Build the schedule a config describes and record ``steps`` optimizer steps of it.

    Args:
        config: a scheduler block or a whole DeepSpeed config containing one.
        steps: number of optimizer steps to record (at least 1).
        base_lr: the optimizer lr (matters for WarmupCosineLR and WarmupLR without
            ``warmup_max_lr``); defaults to the config's optimizer lr, else 1e-3.

    Raises:
        SchedulerConfigError: the config does not describe a valid schedule.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    optimizer = _optimizer_for(config, base_lr)
    scheduler = build_scheduler(optimizer, config)
    group = optimizer.param_groups[0]
    cycled = scheduler.get_mom() is not None
    lrs: list[float] = []
    momenta: list[float] = []
    for _ in range(steps):
        lrs.append(float(group["lr"]))
        momenta.append(float(group["betas"][0]))
        scheduler.step()
    return ScheduleTrace(type(scheduler).__name__, lrs, momenta if cycled else None)


def _format(value: float) -> str:
    return f"{value:.3e}"


def text_chart(values: Sequence[float], *, title: str, width: int = 64, height: int = 12) -> str:
    """Draw ``values`` against step as a block of text, with y labels and x ticks."""
    if not values:
        raise ValueError("nothing to draw: values is empty")
    lo, hi = min(values), max(values)
    span = hi - lo
    columns = min(width, len(values))
    rows = [[" "] * columns for _ in range(height)]

    def level(v: float) -> int:
        return 0 if span == 0 else round((v - lo) / span * (height - 1))

    # Each column covers a run of steps and marks every level its values reach, so a peak
    # or a single-step jump is never lost to sampling.
    for c in range(columns):
        start = c * len(values) // columns
        stop = max(start + 1, (c + 1) * len(values) // columns)
        bucket = values[start:stop]
        for r in range(level(min(bucket)), level(max(bucket)) + 1):
            rows[height - 1 - r][c] = "*"
    label_width = len(_format(hi))
    lines = [title]
    for r, row in enumerate(rows):
        if r == 0:
            label = _format(hi)
        elif r == height - 1:
            label = _format(lo)
        else:
            label = ""
        lines.append(f"{label:>{label_width}} |{''.join(row)}")
    lines.append(" " * label_width + " +" + "-" * columns)
    last = str(len(values) - 1)
    lines.append(" " * label_width + "  0" + last.rjust(columns - 1) + "  (step)")
    return "\n".join(lines)


def plot_png(
    path: str | os.PathLike[str],
    panels: Sequence[tuple[str, Sequence[float]]],
    *,
    title: str,
    x: Sequence[float] | None = None,
    xlabel: str = "step",
    log_x: bool = False,
) -> None:
    """Draw one panel per ``(y label, values)`` pair, sharing the x axis, into a PNG.

    The file is written under a temporary name and renamed, so ``path`` never holds a
    half-written image.

    Raises:
        ImportError: matplotlib is missing; the message gives the pip command.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError('writing a PNG needs matplotlib: pip install "zero-sched[plot]"') from exc
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(8, 3 * len(panels)), sharex=True, squeeze=False
    )
    for (label, values), (axis,) in zip(panels, axes):
        axis.plot(range(len(values)) if x is None else x, values)
        axis.set_ylabel(label)
    axes[0][0].set_title(title)
    axes[-1][0].set_xlabel(xlabel)
    if log_x:
        axes[-1][0].set_xscale("log")
    fig.tight_layout()
    target = os.fspath(path)
    fd, tmp = tempfile.mkstemp(
        prefix=".plot-", suffix=".png", dir=os.path.dirname(os.path.abspath(target))
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png")
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    finally:
        plt.close(fig)


def save_png(trace: ScheduleTrace, path: str | os.PathLike[str]) -> None:
    """Plot the lr (and momentum, when cycled) of ``trace`` to a PNG at ``path``."""
    panels: list[tuple[str, Sequence[float]]] = [("learning rate", trace.lrs)]
    if trace.momenta is not None:
        panels.append(("momentum / beta1", trace.momenta))
    plot_png(path, panels, title=trace.name)


def describe(trace: ScheduleTrace) -> str:
    """A short numeric summary: first, peak, and last values."""
    peak = max(range(len(trace.lrs)), key=trace.lrs.__getitem__)
    parts = [
        f"{trace.name}: {len(trace.lrs)} steps",
        f"lr first {_format(trace.lrs[0])}, peak {_format(trace.lrs[peak])} at step {peak}, "
        f"last {_format(trace.lrs[-1])}",
    ]
    if trace.momenta is not None:
        parts.append(
            f"momentum first {trace.momenta[0]:.4f}, min {min(trace.momenta):.4f}, "
            f"last {trace.momenta[-1]:.4f}"
        )
    return "\n".join(parts)

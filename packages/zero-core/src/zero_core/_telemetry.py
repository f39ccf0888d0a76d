"""Observers of the training loop: progress line, wall-clock timers, flops profiler, comms
logger and monitors, driven by the config.

[Note: zero-profiler through entry points]
The timers, the flops profiler, the comms logger and the monitors live in zero-profiler,
which declares them in the entry-point group ``zerospeed.profiler``:

=================  =================================================  ====================
entry point        called as                                          used through
=================  =================================================  ====================
``timers``         ``timers()``                                       ``t(name).start()``,
                                                                      ``.stop()``,
                                                                      ``.elapsed()``
``flops_profiler`` ``flops_profiler(model, block)``                   ``begin_step(step)``,
                                                                      ``end_step(...)``,
                                                                      ``.profiler``
``comms_logger``   ``comms_logger(block)`` (returned enabled)         ``log_summary()``,
                                                                      ``reset()``,
                                                                      ``disable()``
``monitor``        ``monitor({block name: block, ...})``              ``write_events()``,
                                                                      ``close()``
=================  =================================================  ====================

zero-core looks them up only when a block that needs them is on, so it still runs with torch
alone; a block switched on without zero-profiler fails at ``initialize`` naming the block and
the install command (see ``require_profiler``).

[Note: what is reported when]
At every optimizer step, on rank 0, the monitors get DeepSpeed's automatic events keyed by
``global_samples``: ``Train/Samples/train_loss`` (rank 0's loss as passed to ``backward``,
averaged over the accumulation window), ``Train/Samples/lr`` (the first param group's, read
after the scheduler stepped, as DeepSpeed reads it), ``Train/Samples/loss_scale`` with fp16,
and with timing on ``Train/Samples/elapsed_time_ms_<phase>`` for this optimizer step (its
micro-steps summed). Every ``steps_per_print`` steps rank 0 prints the progress line, the
phases' mean per optimizer step over the steps since the last print, and the comms logger's
table of that window's collectives (every rank then forgets them). The flops profiler counts
the forwards, backwards and optimizer step of global step ``profile_step`` (0-based, like
``global_steps`` before the step), prints its report once and is dropped.

Timing is on with ``wall_clock_breakdown`` or an enabled ``flops_profiler`` (DeepSpeed's
rule). Phases: ``forward``; ``backward`` (all of ``engine.backward``); ``backward_allreduce``
(time in gradient reduction: bucket packing and the collectives, in the gradient hooks and
the wait at the end of backward); ``backward_inner`` = backward - backward_allreduce; and
``step`` (the optimizer and scheduler step).
"""

from __future__ import annotations

import contextlib
import functools
import time
import weakref
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

import torch
from torch import nn

__all__ = ["PHASES", "Telemetry", "require_profiler"]

GROUP = "zerospeed.profiler"
INSTALL = "pip install zero-profiler"

FORWARD = "forward"
BACKWARD = "backward"
BACKWARD_INNER = "backward_inner"
BACKWARD_ALLREDUCE = "backward_allreduce"
STEP = "step"
#: The timed phases, in print order.
PHASES = (FORWARD, BACKWARD, BACKWARD_INNER, BACKWARD_ALLREDUCE, STEP)

MONITOR_BLOCKS = ("tensorboard", "wandb", "comet", "csv_monitor")

_NOTHING = contextlib.nullcontext()


@functools.cache
def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def _profiler_part(name: str, block: str) -> Callable[..., Any]:
    found = _entry_points()
    if name not in found:
        have = "is not installed" if not found else f"installed has no {name!r}; upgrade it"
        raise ImportError(
            f"{block} is switched on in the config and zero-profiler runs it, but zero-profiler "
            f"{have}: {INSTALL} (or switch {block} off)"
        )
    return found[name].load()


def _enabled(config: Any) -> dict[str, str]:
    """The entry points the config needs -> the block that asks for each (for errors)."""
    on = [b for b in ("flops_profiler", "comms_logger", *MONITOR_BLOCKS) if _is_on(config, b)]
    wanted: dict[str, str] = {}
    if config.wall_clock_breakdown:
        wanted["timers"] = "wall_clock_breakdown"
    elif "flops_profiler" in on:  # the profiler reports the phases' latencies
        wanted["timers"] = "flops_profiler"
    for block in on:
        wanted.setdefault("monitor" if block in MONITOR_BLOCKS else block, block)
    return wanted


def _is_on(config: Any, block: str) -> bool:
    return bool((config.sections.get(block) or {}).get("enabled"))


def require_profiler(config: Any) -> None:
    """Raise ``ImportError`` now if a block that is on needs zero-profiler and it is absent."""
    for name, block in _enabled(config).items():
        _profiler_part(name, block)


class _Interval:
    """Times one phase with a zero-profiler timer; stops it even when the phase raises."""

    __slots__ = ("timer",)

    def __init__(self, timer: Any) -> None:
        self.timer = timer

    def __enter__(self) -> None:
        self.timer.start()

    def __exit__(self, *exc: object) -> None:
        self.timer.stop()


def _release(monitor: Any, comms: Any, flops: Any) -> None:
    """Stop what outlives a step: a profile in progress, the comms logger's wrappers on
    ``torch.distributed``, the monitors' open writers."""
    if flops is not None:
        flops.profiler.end_profile()
    if comms is not None:
        comms.disable()
    if monitor is not None:
        monitor.close()


class Telemetry:
    """What the engine calls around its phases. With every block off it holds nothing but
    the progress line's counters, and each hook costs an attribute check.

    Args:
        config: the parsed config.
        model: the module the flops profiler counts (the user's model, not the engine).
        rank: this process's global rank; only rank 0 prints, profiles and writes.

    Raises:
        ImportError: a block is on and zero-profiler is not installed.
    """

    def __init__(self, config: Any, model: nn.Module, rank: int) -> None:
        self.rank = rank
        self.every = config.steps_per_print
        self.fp16 = bool(config.fp16.enabled)
        wanted = _enabled(config)
        sections = config.sections
        parts = {name: _profiler_part(name, block) for name, block in wanted.items()}
        #: zero-profiler's WallClockTimers, when timing is on
        self.timers: Any = parts["timers"]() if "timers" in parts else None
        #: zero-profiler's StepFlopsProfiler on rank 0 until its step is reported, else None
        self.flops: Any = None
        if "flops_profiler" in parts and rank == 0:
            self.flops = parts["flops_profiler"](model, sections["flops_profiler"])
        #: zero-profiler's MonitorMaster (it writes on rank 0 only), or None
        self.monitor: Any = None
        if "monitor" in parts:
            blocks = {b: sections[b] for b in MONITOR_BLOCKS if sections.get(b)}
            self.monitor = parts["monitor"](blocks)
        #: zero-profiler's CommsLogger, enabled (wrapping torch.distributed), or None
        self.comms: Any = None
        if "comms_logger" in parts:  # last: nothing after it can fail and leave it wrapping
            self.comms = parts["comms_logger"](sections["comms_logger"])
        self._close = (
            weakref.finalize(self, _release, self.monitor, self.comms, self.flops)
            if parts.keys() & {"monitor", "comms_logger", "flops_profiler"}
            else None
        )
        self._profiling = False
        self._losses: list[torch.Tensor] = []  # this accumulation window's, detached
        # since the last print: milliseconds per phase, optimizer steps, samples, start time
        self._window_ms = dict.fromkeys(PHASES, 0.0)
        self._window_steps = 0
        self._window_samples = 0
        self._window_start = time.perf_counter()

    # -- hooks the engine calls ------------------------------------------------------------------
    def timed(self, phase: str) -> contextlib.AbstractContextManager[None]:
        """A context that times ``phase`` (a no-op when timing is off)."""
        if self.timers is None:
            return _NOTHING
        return _Interval(self.timers(phase))

    def before_forward(self, global_step: int) -> None:
        """Start the flops profile at the first forward of the configured step."""
        if (
            self.flops is not None
            and not self._profiling
            and global_step == self.flops.config.profile_step
        ):
            self.flops.begin_step(global_step)
            self._profiling = True

    def record_loss(self, loss: torch.Tensor) -> None:
        """Keep the loss ``backward`` got, for the monitors and the progress line."""
        self._losses.append(loss.detach())

    def after_step(self, engine: Any) -> None:
        """After an optimizer step (``engine.global_steps`` already counts it): finish a
        profile, write the monitors' events, print every ``steps_per_print`` steps."""
        step_ms = self._read_timers()
        if self._profiling:
            self._finish_profile(engine.global_steps - 1, step_ms)
        self._window_steps += 1
        self._window_samples += engine.train_batch_size()
        losses, self._losses = self._losses, []
        printing = engine.global_steps % self.every == 0
        loss = None
        if self.rank == 0 and losses and (printing or self.monitor is not None):
            loss = torch.stack([x.reshape(()) for x in losses]).double().mean().item()
        if self.monitor is not None and self.rank == 0:
            self.monitor.write_events(self._events(engine, loss, step_ms))
        if printing:
            self._print(engine, loss)

    def close(self) -> None:
        """Stop a profile in progress, unwrap ``torch.distributed``, flush and close the
        monitors. Safe to call twice; runs at interpreter exit if never called."""
        if self._close is not None:
            self._close()
        self.flops = self.comms = self.monitor = None
        self._profiling = False

    # -- helpers ---------------------------------------------------------------------------------
    def _read_timers(self) -> dict[str, float]:
        """This optimizer step's milliseconds per phase (timers reset for the next)."""
        if self.timers is None:
            return {}
        ms = {p: self.timers(p).elapsed(reset=True) * 1e3 for p in PHASES if p != BACKWARD_INNER}
        ms[BACKWARD_INNER] = max(ms[BACKWARD] - ms[BACKWARD_ALLREDUCE], 0.0)
        for phase in PHASES:
            self._window_ms[phase] += ms[phase]
        return {p: ms[p] for p in PHASES}

    def _finish_profile(self, step: int, step_ms: dict[str, float]) -> None:
        try:
            self.flops.end_step(
                step,
                backward_latency=step_ms[BACKWARD] / 1e3,
                step_latency=step_ms[STEP] / 1e3,
            )
        finally:
            self.flops = None  # later steps pay nothing
            self._profiling = False

    def _events(
        self, engine: Any, loss: float | None, step_ms: dict[str, float]
    ) -> list[tuple[str, float, int]]:
        samples = engine.global_samples
        events = [("Train/Samples/lr", engine.get_lr()[0], samples)]
        if loss is not None:
            events.insert(0, ("Train/Samples/train_loss", loss, samples))
        if self.fp16:
            events.append(("Train/Samples/loss_scale", engine.loss_scale, samples))
        events += [(f"Train/Samples/elapsed_time_ms_{p}", ms, samples) for p, ms in step_ms.items()]
        return events

    def _print(self, engine: Any, loss: float | None) -> None:
        now = time.perf_counter()
        steps, samples, seconds = self._window_steps, self._window_samples, now - self._window_start
        window_ms = self._window_ms
        self._window_ms = dict.fromkeys(PHASES, 0.0)
        self._window_steps = self._window_samples = 0
        self._window_start = now
        if self.rank == 0:
            line = f"step {engine.global_steps}:"
            if loss is not None:
                line += f" loss {loss:.6g},"
            line += f" lr {engine.get_lr()}, samples/s {samples / seconds if seconds else 0:.1f}"
            if self.fp16:
                line += f", loss scale {engine.loss_scale:g}, skipped {engine.skipped_steps}"
            print(line, flush=True)
            if self.timers is not None:
                means = " | ".join(f"{p}: {window_ms[p] / steps:.2f}" for p in PHASES)
                print(f"time (ms per step, last {steps}) | {means}", flush=True)
            if self.comms is not None:
                print(f"collectives of the last {steps} steps, rank 0:", flush=True)
                self.comms.log_summary(print_fn=lambda text: print(text, flush=True))
        if self.comms is not None:
            self.comms.reset()

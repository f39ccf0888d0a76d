"""Named wall-clock timers for the training loop's phases (``"wall_clock_breakdown"``).

A timer accumulates the intervals between ``start()`` and ``stop()`` until it is read with
a reset, which the engine does once per print interval: ``mean`` is then the average
interval over that window, ``elapsed`` the total. Both ends synchronize the accelerator
(see ``_sync``), so an interval measures the work queued inside it, not its launch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from ._sync import accelerator_synchronizer

__all__ = [
    "BACKWARD",
    "BACKWARD_ALLREDUCE",
    "BACKWARD_INNER",
    "FORWARD",
    "STEP",
    "TRAINING_TIMERS",
    "Timer",
    "WallClockTimers",
]

FORWARD = "forward"
"""The forward pass."""
BACKWARD = "backward"
"""The whole backward pass, gradient reduction included."""
BACKWARD_INNER = "backward_inner"
"""The backward computation without gradient reduction."""
BACKWARD_ALLREDUCE = "backward_allreduce"
"""Gradient reduction across data-parallel ranks."""
STEP = "step"
"""The optimizer step."""

#: The phases the engine reports, in print order (and their monitor labels' suffixes).
TRAINING_TIMERS = (FORWARD, BACKWARD, BACKWARD_INNER, BACKWARD_ALLREDUCE, STEP)


class Timer:
    """One named timer. Starting a running timer, or stopping a stopped one, is an error:
    it means two code paths think they own the same phase."""

    def __init__(self, name: str, sync: Callable[[], None]) -> None:
        self.name = name
        self._sync = sync
        self._started: float | None = None
        self._total = 0.0  # seconds in this window
        self._count = 0  # intervals in this window

    @property
    def running(self) -> bool:
        return self._started is not None

    def start(self) -> None:
        if self._started is not None:
            raise RuntimeError(f"timer {self.name!r} started twice")
        self._sync()
        self._started = time.perf_counter()

    def stop(self) -> None:
        if self._started is None:
            raise RuntimeError(f"timer {self.name!r} stopped without start()")
        self._sync()
        self._total += time.perf_counter() - self._started
        self._count += 1
        self._started = None

    def reset(self) -> None:
        """Start a new window (a running interval keeps running)."""
        self._total = 0.0
        self._count = 0

    def elapsed(self, reset: bool = True) -> float:
        """Seconds accumulated in this window."""
        total = self._total
        if reset:
            self.reset()
        return total

    def mean(self, reset: bool = True) -> float:
        """Average seconds per interval in this window (0 when there was none)."""
        mean = self._total / self._count if self._count else 0.0
        if reset:
            self.reset()
        return mean

    @property
    def count(self) -> int:
        """Intervals completed in this window."""
        return self._count


class WallClockTimers:
    """A set of named timers, created on first use: ``timers("forward").start()``.

    Args:
        synchronize: wait for the accelerator at every start and stop (the default; turn it
            off only to measure launch overhead).
    """

    def __init__(self, synchronize: bool = True) -> None:
        self._sync = accelerator_synchronizer() if synchronize else (lambda: None)
        self.timers: dict[str, Timer] = {}

    def __call__(self, name: str) -> Timer:
        timer = self.timers.get(name)
        if timer is None:
            timer = self.timers[name] = Timer(name, self._sync)
        return timer

    def means_ms(self, names: Iterable[str] | None = None, reset: bool = True) -> dict[str, float]:
        """Average milliseconds per interval of each timer in this window, in ``names``
        order (default: every timer that ran), then reset them."""
        selected = list(self.timers) if names is None else list(names)
        return {n: self.timers[n].mean(reset=reset) * 1e3 for n in selected if n in self.timers}

    def log(
        self,
        names: Iterable[str] | None = None,
        reset: bool = True,
        print_fn: Callable[[str], Any] | None = print,
    ) -> str:
        """Print (and return) ``time (ms) | forward: 12.34 | backward: ...``: per-interval
        averages over the window since the last reset."""
        means = self.means_ms(names, reset=reset)
        text = "time (ms) | " + " | ".join(f"{n}: {ms:.2f}" for n, ms in means.items())
        if print_fn is not None:
            print_fn(text)
        return text

    def events(
        self, step: int, names: Iterable[str] | None = None, reset: bool = True
    ) -> list[tuple[str, float, int]]:
        """The window's averages as monitor events, with DeepSpeed's labels
        (``Train/Samples/elapsed_time_ms_forward``, ...), for ``MonitorMaster.write_events``."""
        means = self.means_ms(names, reset=reset)
        return [(f"Train/Samples/elapsed_time_ms_{n}", ms, step) for n, ms in means.items()]

"""Checkpoint boundaries: device synchronization and per-function timing.

[Note: synchronizing at checkpoint boundaries]
``synchronize_checkpoint_boundary`` waits for the CUDA device at the start and the end of
each checkpoint, in forward and in backward, so the time and memory seen between two
boundaries belong to that checkpoint. CPU work is synchronous already: on a machine without
CUDA in use there is nothing to wait for, and the boundary does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

__all__ = ["CheckpointTimes", "boundary", "device_synchronize", "profile_stats", "reset_profile"]

logger = logging.getLogger("zero_core.checkpointing")


@dataclass(frozen=True)
class CheckpointTimes:
    """How often, and for how long, one checkpointed function ran."""

    forward_calls: int = 0
    """Forward runs (with autograd on or off)."""
    forward_seconds: float = 0.0
    """Their total wall time."""
    recompute_calls: int = 0
    """Recomputations in backward."""
    recompute_seconds: float = 0.0
    """Their total wall time (for ``checkpoint``, the recomputation and the backward pass
    through the recomputed graph; for ``non_reentrant_checkpoint``, the recomputation)."""


_STATS: dict[str, CheckpointTimes] = {}


def profile_stats() -> dict[str, CheckpointTimes]:
    """Times per checkpointed function (by qualified name) since the last
    :func:`reset_profile`, gathered while ``profile`` is configured."""
    return dict(_STATS)


def reset_profile() -> None:
    """Start the timings over."""
    _STATS.clear()


def device_synchronize() -> None:
    """Wait for the current CUDA device (see [Note: synchronizing at checkpoint
    boundaries])."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def function_name(function: object) -> str:
    """The name a function's timings are filed under."""
    name = getattr(function, "__qualname__", None)
    return name if isinstance(name, str) else type(function).__qualname__


@contextlib.contextmanager
def boundary(name: str, phase: str, *, sync: bool, profile: bool) -> Iterator[None]:
    """Run a checkpoint's ``phase`` (``"forward"`` or ``"recompute"``) between two
    boundaries: synchronized when ``sync``, timed into :func:`profile_stats` when
    ``profile``."""
    if sync:
        device_synchronize()
    start = time.perf_counter()
    yield
    if sync:
        device_synchronize()
    if profile:
        seconds = time.perf_counter() - start
        old = _STATS.get(name, CheckpointTimes())
        calls, total = f"{phase}_calls", f"{phase}_seconds"
        _STATS[name] = replace(
            old, **{calls: getattr(old, calls) + 1, total: getattr(old, total) + seconds}
        )
        logger.info("checkpoint %s: %s %.3f ms", name, phase, seconds * 1e3)

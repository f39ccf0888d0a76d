"""Waiting for an accelerator, so wall-clock timings measure work instead of launches."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["accelerator_synchronizer", "synchronize"]


def _noop() -> None:
    return None


def accelerator_synchronizer() -> Callable[[], None]:
    """A function that waits for the current accelerator, or does nothing without one.

    Decided once, up front: timers and hooks call the result on every event, and on a
    CPU-only machine that must cost nothing. Kernels on CUDA (and any other
    ``torch.accelerator``) run asynchronously, so a timer that does not wait measures how
    long it took to *queue* the work.
    """
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and accelerator.is_available():
        return accelerator.synchronize
    if torch.cuda.is_available():
        return torch.cuda.synchronize
    return _noop


def synchronize() -> None:
    """Wait for all queued work on the current accelerator (no-op on CPU-only machines)."""
    accelerator_synchronizer()()

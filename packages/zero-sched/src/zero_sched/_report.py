"""The zero-sched section of ``zerospeed report``."""

from __future__ import annotations

import importlib.util

__all__ = ["report"]


def report() -> dict[str, str]:
    """What this install of zero-sched provides, as label -> value pairs."""
    from . import SCHEDULES, __version__

    has_plot = importlib.util.find_spec("matplotlib") is not None
    return {
        "version": __version__,
        "schedules": ", ".join(SCHEDULES),
        "png plots": "yes" if has_plot else 'no (pip install "zero-sched[plot]")',
    }

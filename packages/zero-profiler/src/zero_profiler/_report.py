"""The zero-profiler section of ``zerospeed report``."""

from __future__ import annotations

import importlib.util

__all__ = ["report"]


def report() -> dict[str, str]:
    """What this install of zero-profiler provides, as label -> value pairs."""
    from . import COLLECTIVES, __version__, supported_operators

    def extra(package: str, name: str) -> str:
        found = importlib.util.find_spec(package) is not None
        return "yes" if found else f'no (pip install "zero-profiler[{name}]")'

    return {
        "version": __version__,
        "flops rules": f"{len(supported_operators())} ATen operators",
        "comms logger": f"{len(COLLECTIVES)} collectives",
        "monitors": "csv; tensorboard "
        + extra("tensorboard", "tensorboard")
        + "; wandb "
        + extra("wandb", "wandb")
        + "; comet "
        + extra("comet_ml", "comet"),
    }

"""The zero-optim section of ``zerospeed report``."""

from __future__ import annotations

__all__ = ["report"]


def report() -> dict[str, str]:
    """What this install of zero-optim provides, as label -> value pairs."""
    from . import __version__
    from ._native import cpu_features
    from ._threads import default_num_threads

    features = cpu_features()
    return {
        "version": __version__,
        "cpu kernels": f"{features['isa']} (compiled: {', '.join(features['compiled'])}; "
        f"this CPU supports: {', '.join(features['supported'])})",
        "threads per step": str(default_num_threads()),
    }

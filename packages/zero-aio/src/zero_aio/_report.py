"""The zero-aio section of ``zerospeed report``."""

from __future__ import annotations

__all__ = ["report"]


def report() -> dict[str, str]:
    """What this install of zero-aio provides, as label -> value pairs: each backend (usable,
    or why not), the default backend and the checksum implementation."""
    from . import _C, __version__
    from ._native import available_backends, backends

    out = {"version": __version__}
    for name, info in backends().items():
        state = "usable" if info.usable else ("built, not usable" if info.built else "missing")
        out[f"backend {name}"] = f"{state}: {info.reason}"
    out["default backend"] = available_backends()[0]
    out["crc32c"] = _C.crc32c_implementation()
    return out

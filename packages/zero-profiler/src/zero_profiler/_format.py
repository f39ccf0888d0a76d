"""Human-readable numbers for reports: ``13.42 G``, ``27.44 M``, ``1.25 ms``."""

from __future__ import annotations

__all__ = [
    "duration_to_string",
    "flops_to_string",
    "macs_to_string",
    "number_to_string",
    "params_to_string",
]

_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))


def number_to_string(value: float, unit: str = "", precision: int = 2) -> str:
    """``value`` with an SI prefix (K, M, G, T; powers of 1000) and ``unit``: ``1.5 GFLOPS``.

    Values below 1000 get no prefix; the space is kept so columns of numbers line up.
    """
    for scale, prefix in _PREFIXES:
        if abs(value) >= scale:
            return f"{round(value / scale, precision):g} {prefix}{unit}"
    return f"{round(value, precision):g} {unit}".rstrip()


def flops_to_string(flops: float, precision: int = 2) -> str:
    """A rate in floating-point operations per second: ``82.21 TFLOPS``."""
    return number_to_string(flops, "FLOPS", precision)


def macs_to_string(macs: float, precision: int = 2) -> str:
    """A count of multiply-accumulates: ``3.14 GMACs``."""
    return number_to_string(macs, "MACs", precision)


def params_to_string(params: float, precision: int = 2) -> str:
    """A parameter count: ``336.23 M``."""
    return number_to_string(params, "", precision)


def duration_to_string(seconds: float, precision: int = 2) -> str:
    """A duration in the largest unit that keeps it at or above 1: ``76.67 ms``, ``34.09 us``."""
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if abs(seconds) >= scale:
            return f"{round(seconds / scale, precision):g} {unit}"
    return f"{round(seconds / 1e-9, precision):g} ns"

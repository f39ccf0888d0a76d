"""Config settings the engine parses but does not act on: refused when they would matter.

[Note: honoured, equivalent, or refused]
Every key ``load_config`` accepts either changes what the engine does, or selects between
strategies that give the same result here (``reduce_scatter``/``allgather_partitions``
false, ``grad_hooks``, ``contiguous_gradients``: zero-core always reduce-scatters into a
contiguous partition; ``stage3_max_live_parameters``/``stage3_max_reuse_distance``: a
parameter is released as soon as its module is done, which any such cap allows), or is
refused here with ``NotImplementedError`` when set to anything but its default. The other
sections belong to other packages: zero-profiler's blocks (flops profiler, comms logger,
monitors, and the timers of ``wall_clock_breakdown``) are run by the engine through
``_telemetry`` and need zero-profiler installed, which is checked here, before any work.
``activation_checkpointing`` is applied by ``initialize`` through ``zero_core.checkpointing``.
"""

from __future__ import annotations

from typing import Any

from ._telemetry import require_profiler

__all__ = ["refuse_unsupported"]

#: zero_optimization keys that must keep their default: (key, default, why).
_ZERO_DEFAULTS = [
    ("stage3_module_granularity_threshold", 0, "module-granularity fetching"),
    ("round_robin_gradients", False, "round-robin gradient copies (an offload option)"),
]


def refuse_unsupported(cfg: Any) -> None:
    """Raise ``NotImplementedError`` naming the first setting the engine would ignore, or
    ``ImportError`` for a block that is on while zero-profiler, which runs it, is missing."""
    zc = cfg.zero_optimization
    for key, default, what in _ZERO_DEFAULTS:
        if getattr(zc, key) != default:
            raise NotImplementedError(
                f"zero_optimization.{key} = {getattr(zc, key)!r}: {what} is not implemented "
                f"in zero-core; remove the key or set it to {default!r}"
            )
    require_profiler(cfg)
    accum = (cfg.sections.get("data_types") or {}).get("grad_accum_dtype")
    if accum not in (None, "fp32"):
        raise NotImplementedError(
            f"data_types.grad_accum_dtype = {accum!r}: zero-core accumulates gradients in fp32 "
            f"partitions (stages 2-3) or the model dtype (stages 0-1); remove the key"
        )

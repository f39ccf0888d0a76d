"""Build a schedule from a DeepSpeed ``"scheduler"`` config block.

The parameter names a schedule accepts are read from its constructor's signature, so the
constructor is the single place a schedule's parameters are declared.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

from torch.optim import Optimizer

from ._base import Schedule
from ._one_cycle import OneCycle
from ._range_test import LRRangeTest
from ._validate import require_optimizer
from ._warmup import WarmupCosineLR, WarmupDecayLR, WarmupLR

__all__ = [
    "SCHEDULES",
    "VALID_LR_SCHEDULES",
    "SchedulerConfigError",
    "build_scheduler",
    "schedule_parameters",
]

#: Every schedule by its DeepSpeed config ``"type"`` name.
SCHEDULES: dict[str, type[Schedule]] = {
    "LRRangeTest": LRRangeTest,
    "OneCycle": OneCycle,
    "WarmupLR": WarmupLR,
    "WarmupDecayLR": WarmupDecayLR,
    "WarmupCosineLR": WarmupCosineLR,
}

VALID_LR_SCHEDULES: list[str] = list(SCHEDULES)


class SchedulerConfigError(ValueError):
    """A ``"scheduler"`` config block that cannot be built; the message says what to fix."""


def schedule_parameters(schedule: type[Schedule]) -> dict[str, inspect.Parameter]:
    """The config ``"params"`` a schedule accepts (its constructor arguments but the optimizer)."""
    params = dict(inspect.signature(schedule.__init__).parameters)
    for name in ("self", "optimizer"):
        params.pop(name, None)
    return params


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _resolve_type(config: Mapping[str, Any]) -> type[Schedule]:
    if "type" not in config:
        raise SchedulerConfigError(
            f"scheduler config has no 'type'; set it to one of {', '.join(VALID_LR_SCHEDULES)}"
        )
    name = config["type"]
    if name not in SCHEDULES:
        raise SchedulerConfigError(
            f"unknown scheduler type {name!r}{_suggest(str(name), VALID_LR_SCHEDULES)}. "
            f"Valid types: {', '.join(VALID_LR_SCHEDULES)}"
        )
    return SCHEDULES[name]


def _check_params(schedule: type[Schedule], params: Any) -> dict[str, Any]:
    if not isinstance(params, Mapping):
        raise SchedulerConfigError(
            f"scheduler 'params' must be an object of parameter names to values, got "
            f"{type(params).__name__}"
        )
    accepted = schedule_parameters(schedule)
    valid = list(accepted)
    for key in params:
        if key not in accepted:
            raise SchedulerConfigError(
                f"{schedule.__name__} has no parameter {key!r}{_suggest(str(key), valid)}. "
                f"Valid parameters: {', '.join(valid)}"
            )
    missing = [
        name
        for name, p in accepted.items()
        if p.default is inspect.Parameter.empty and name not in params
    ]
    if missing:
        raise SchedulerConfigError(
            f"{schedule.__name__} needs {', '.join(missing)} in its 'params'"
        )
    return dict(params)


def build_scheduler(optimizer: Optimizer, config: Mapping[str, Any]) -> Schedule:
    """Build a schedule from ``{"type": ..., "params": {...}}``.

    A whole DeepSpeed config (one with a ``"scheduler"`` key) is accepted too, and its
    ``"scheduler"`` block is used.

    Args:
        optimizer: the optimizer to schedule.
        config: the scheduler block.

    Returns:
        The schedule, already applied to the optimizer (as constructing one does).

    Raises:
        SchedulerConfigError: unknown type or parameter (with the closest valid name), a
            missing required parameter, or a value the schedule rejects.
        TypeError: ``optimizer`` is not a ``torch.optim.Optimizer``.
    """
    optimizer = require_optimizer(optimizer)
    if not isinstance(config, Mapping):
        raise SchedulerConfigError(
            f"scheduler config must be a dict like {{'type': ..., 'params': {{...}}}}, got "
            f"{type(config).__name__}"
        )
    if "scheduler" in config and "type" not in config:
        config = config["scheduler"]
        if not isinstance(config, Mapping):
            raise SchedulerConfigError("the config's 'scheduler' entry must be an object")
    schedule = _resolve_type(config)
    unknown_keys = sorted(set(config) - {"type", "params"})
    if unknown_keys:
        raise SchedulerConfigError(
            f"scheduler config has unexpected keys {unknown_keys}; it takes only 'type' and "
            f"'params'"
        )
    params = _check_params(schedule, config.get("params", {}))
    try:
        return schedule(optimizer, **params)
    except (TypeError, ValueError) as exc:
        raise SchedulerConfigError(f"{schedule.__name__}: {exc}") from exc

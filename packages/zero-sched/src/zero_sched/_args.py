"""Command-line tuning flags with DeepSpeed's names, and merging them into a config.

Unlike DeepSpeed's parser, every flag defaults to ``None`` ("not given"): a flag the user
did not type never overrides a value from the JSON config, while a flag they did type
always does. A config built from flags alone gets the schedule's own constructor defaults
for whatever was not given.
"""

from __future__ import annotations

import argparse
from collections.abc import MutableMapping
from typing import Any

from ._config import VALID_LR_SCHEDULES

__all__ = [
    "add_tuning_arguments",
    "get_config_from_args",
    "get_lr_from_config",
    "override_1cycle_params",
    "override_lr_range_test_params",
    "override_params",
    "override_warmupCosineLR_params",
    "override_warmupLR_params",
    "parse_arguments",
]

_LR_RANGE_TEST_FLAGS = (
    "lr_range_test_min_lr",
    "lr_range_test_step_rate",
    "lr_range_test_step_size",
    "lr_range_test_staircase",
)
_ONE_CYCLE_FLAGS = (
    "cycle_first_step_size",
    "cycle_first_stair_count",
    "cycle_second_step_size",
    "cycle_second_stair_count",
    "decay_step_size",
    "cycle_min_lr",
    "cycle_max_lr",
    "decay_lr_rate",
    "cycle_momentum",
    "cycle_min_mom",
    "cycle_max_mom",
    "decay_mom_rate",
)
_WARMUP_FLAGS = (
    "warmup_min_lr",
    "warmup_max_lr",
    "warmup_num_steps",
    "warmup_type",
    "total_num_steps",
)
_WARMUP_COSINE_FLAGS = (
    "warmup_num_steps",
    "warmup_type",
    "warmup_min_ratio",
    "cos_min_ratio",
    "total_num_steps",
)


def add_tuning_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the "Convergence Tuning" flags (DeepSpeed's names) to ``parser`` and return it."""
    group = parser.add_argument_group("Convergence Tuning", "learning-rate schedule flags")
    group.add_argument(
        "--lr_schedule", type=str, default=None, choices=VALID_LR_SCHEDULES, help="schedule type"
    )
    group.add_argument(
        "--lr_range_test_min_lr",
        type=float,
        default=None,
        help="LRRangeTest starting lr (default 1e-3)",
    )
    group.add_argument(
        "--lr_range_test_step_rate",
        type=float,
        default=None,
        help="LRRangeTest growth per step_size (default 1.0)",
    )
    group.add_argument(
        "--lr_range_test_step_size",
        type=int,
        default=None,
        help="LRRangeTest steps per growth unit (default 2000)",
    )
    group.add_argument(
        "--lr_range_test_staircase",
        action="store_true",
        default=None,
        help="LRRangeTest grows in stairs instead of continuously",
    )
    group.add_argument(
        "--cycle_first_step_size",
        type=int,
        default=None,
        help="OneCycle steps up to the peak (default 2000)",
    )
    group.add_argument(
        "--cycle_first_stair_count",
        type=int,
        default=None,
        help="OneCycle stairs on the way up (default 0, continuous)",
    )
    group.add_argument(
        "--cycle_second_step_size",
        type=int,
        default=None,
        help="OneCycle steps down from the peak (default: first step size)",
    )
    group.add_argument(
        "--cycle_second_stair_count",
        type=int,
        default=None,
        help="OneCycle stairs on the way down (default: first stair count)",
    )
    group.add_argument(
        "--decay_step_size",
        type=int,
        default=None,
        help="OneCycle steps per post-cycle decay unit (default 0, no decay)",
    )
    group.add_argument("--cycle_min_lr", type=float, default=None, help="OneCycle lr lower bound")
    group.add_argument("--cycle_max_lr", type=float, default=None, help="OneCycle lr upper bound")
    group.add_argument(
        "--decay_lr_rate",
        type=float,
        default=None,
        help="OneCycle post-cycle lr decay rate (default 0)",
    )
    group.add_argument(
        "--cycle_momentum",
        action="store_true",
        default=None,
        help="OneCycle cycles momentum inversely to the lr",
    )
    group.add_argument(
        "--cycle_min_mom",
        type=float,
        default=None,
        help="OneCycle momentum lower bound (default 0.8)",
    )
    group.add_argument(
        "--cycle_max_mom",
        type=float,
        default=None,
        help="OneCycle momentum upper bound (default 0.9)",
    )
    group.add_argument(
        "--decay_mom_rate",
        type=float,
        default=None,
        help="OneCycle post-cycle momentum rate (default 0)",
    )
    group.add_argument(
        "--warmup_min_lr",
        type=float,
        default=None,
        help="WarmupLR/WarmupDecayLR starting lr (default 0)",
    )
    group.add_argument(
        "--warmup_max_lr", type=float, default=None, help="WarmupLR/WarmupDecayLR peak lr"
    )
    group.add_argument(
        "--warmup_num_steps", type=int, default=None, help="warmup steps (default 1000)"
    )
    group.add_argument(
        "--warmup_type",
        type=str,
        default=None,
        choices=("log", "linear"),
        help="warmup ramp (default log)",
    )
    group.add_argument(
        "--warmup_min_ratio",
        type=float,
        default=None,
        help="WarmupCosineLR starting ratio (default 0)",
    )
    group.add_argument(
        "--cos_min_ratio",
        type=float,
        default=None,
        help="WarmupCosineLR final ratio (default 1e-4)",
    )
    group.add_argument(
        "--total_num_steps", type=int, default=None, help="WarmupDecayLR/WarmupCosineLR total steps"
    )
    return parser


def parse_arguments(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Parse only the tuning flags from ``argv`` (or ``sys.argv``); return (args, the rest)."""
    parser = add_tuning_arguments(argparse.ArgumentParser(add_help=False))
    return parser.parse_known_args(argv)


def _override(
    args: argparse.Namespace, params: MutableMapping[str, Any], names: tuple[str, ...]
) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            params[name] = value


def override_lr_range_test_params(
    args: argparse.Namespace, params: MutableMapping[str, Any]
) -> None:
    """Copy the LRRangeTest flags the user gave into ``params``."""
    _override(args, params, _LR_RANGE_TEST_FLAGS)


def override_1cycle_params(args: argparse.Namespace, params: MutableMapping[str, Any]) -> None:
    """Copy the OneCycle flags the user gave into ``params``."""
    _override(args, params, _ONE_CYCLE_FLAGS)


def override_warmupLR_params(args: argparse.Namespace, params: MutableMapping[str, Any]) -> None:
    """Copy the WarmupLR / WarmupDecayLR flags the user gave into ``params``."""
    _override(args, params, _WARMUP_FLAGS)


def override_warmupCosineLR_params(
    args: argparse.Namespace, params: MutableMapping[str, Any]
) -> None:
    """Copy the WarmupCosineLR flags the user gave into ``params``."""
    _override(args, params, _WARMUP_COSINE_FLAGS)


_OVERRIDES = {
    "LRRangeTest": _LR_RANGE_TEST_FLAGS,
    "OneCycle": _ONE_CYCLE_FLAGS,
    "WarmupLR": _WARMUP_FLAGS[:-1],
    "WarmupDecayLR": _WARMUP_FLAGS,
    "WarmupCosineLR": _WARMUP_COSINE_FLAGS,
}


def override_params(
    args: argparse.Namespace,
    params: MutableMapping[str, Any],
    schedule_type: str | None = None,
) -> None:
    """Copy the flags the user gave into ``params``.

    With ``schedule_type`` only that schedule's flags are copied, so the result builds
    without unknown-parameter errors; without it every given flag is copied, as in
    DeepSpeed.
    """
    if schedule_type is None:
        names = tuple(dict.fromkeys(n for flags in _OVERRIDES.values() for n in flags))
    else:
        if schedule_type not in _OVERRIDES:
            raise ValueError(
                f"unknown schedule type {schedule_type!r}; valid: {', '.join(VALID_LR_SCHEDULES)}"
            )
        names = _OVERRIDES[schedule_type]
    _override(args, params, names)


def get_config_from_args(args: argparse.Namespace) -> tuple[dict[str, Any] | None, str | None]:
    """Build a scheduler config block from ``--lr_schedule`` and the flags given.

    Returns:
        ``(config, None)``, or ``(None, reason)`` when no valid ``--lr_schedule`` was given.
    """
    schedule = getattr(args, "lr_schedule", None)
    if schedule is None:
        return None, "--lr_schedule not specified on command line"
    if schedule not in _OVERRIDES:
        return (
            None,
            f"{schedule} is not a supported LR schedule; valid: {', '.join(VALID_LR_SCHEDULES)}",
        )
    params: dict[str, Any] = {}
    override_params(args, params, schedule)
    return {"type": schedule, "params": params}, None


def get_lr_from_config(config: MutableMapping[str, Any]) -> tuple[float | None, str]:
    """The peak (or, for LRRangeTest, starting) lr a scheduler block sets.

    Returns:
        ``(lr, "")``, or ``(None, reason)`` when the block defines no lr (WarmupCosineLR
        scales the optimizer's lr; WarmupLR without ``warmup_max_lr`` uses it too).
    """
    if "type" not in config:
        return None, "LR schedule type not defined in config"
    if "params" not in config:
        return None, "LR schedule params not defined in config"
    schedule, params = config["type"], config["params"]
    if schedule not in _OVERRIDES:
        return None, f"{schedule} is not a valid LR schedule"
    if schedule == "LRRangeTest":
        return params.get("lr_range_test_min_lr", 1e-3), ""
    if schedule == "OneCycle":
        if "cycle_max_lr" not in params:
            return None, "OneCycle params have no cycle_max_lr"
        return params["cycle_max_lr"], ""
    if schedule == "WarmupCosineLR":
        return None, "WarmupCosineLR scales the optimizer lr by a ratio, so its params define no lr"
    if "warmup_max_lr" in params:
        return params["warmup_max_lr"], ""
    if schedule == "WarmupDecayLR":
        return 0.001, ""
    return None, "WarmupLR params have no warmup_max_lr; it uses the optimizer's lr"

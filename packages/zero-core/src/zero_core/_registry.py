"""Optimizer and scheduler types by name: filled by sibling packages through entry points.

[Note: why a registry]
zero-core must run with torch alone, yet a DeepSpeed config names ``"CPUAdam"`` or
``"WarmupLR"``, which live in zero-optim and zero-sched. Those packages declare entry points
(groups ``zerospeed.optimizers`` and ``zerospeed.schedulers``, name -> callable) and zero-core
finds them at run time, never importing either package by name. With a sibling absent, a
``torch.optim`` optimizer or ``torch.optim.lr_scheduler`` scheduler still works by its class
name, and a DeepSpeed type name gets an error naming the package that provides it.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any

import torch

__all__ = ["build_optimizer", "build_scheduler", "registered_types"]

OPTIMIZER_GROUP = "zerospeed.optimizers"
SCHEDULER_GROUP = "zerospeed.schedulers"

#: DeepSpeed type names and the package that provides them here.
_PROVIDERS = {
    OPTIMIZER_GROUP: (
        "zero-optim",
        ["Adam", "AdamW", "Lamb", "Lion", "Adagrad", "OneBitAdam", "ZeroOneAdam", "OneBitLamb"],
    ),
    SCHEDULER_GROUP: (
        "zero-sched",
        ["LRRangeTest", "OneCycle", "WarmupLR", "WarmupDecayLR", "WarmupCosineLR"],
    ),
}


def registered_types(group: str) -> dict[str, Any]:
    """Entry points of ``group`` by lower-cased name."""
    return {ep.name.lower(): ep for ep in entry_points(group=group)}


def _torch_classes(module: Any, base: type) -> dict[str, type]:
    return {
        name.lower(): obj
        for name, obj in vars(module).items()
        if inspect.isclass(obj) and issubclass(obj, base) and obj is not base
    }


def _resolve(group: str, type_name: str, torch_classes: dict[str, type]) -> Callable[..., Any]:
    key = type_name.lower()
    found = registered_types(group)
    if key in found:
        return found[key].load()
    package, names = _PROVIDERS[group]
    if key in ("adam", "adamw") and group == OPTIMIZER_GROUP:
        return _torch_adam(key)
    if key in torch_classes:
        return torch_classes[key]
    if key in {n.lower() for n in names}:
        kind = "optimizer" if group == OPTIMIZER_GROUP else "scheduler"
        raise ValueError(
            f"{kind} type {type_name!r} is provided by {package}, which is not installed: "
            f"pip install {package}"
        )
    by_lower = {c.__name__.lower(): c.__name__ for c in torch_classes.values()}
    by_lower |= {ep.name.lower(): ep.name for ep in entry_points(group=group)}
    valid = sorted(by_lower.values(), key=str.lower)
    close = difflib.get_close_matches(key, list(by_lower), n=1)
    hint = f" (did you mean {by_lower[close[0]]!r}?)" if close else ""
    raise ValueError(f"unknown type {type_name!r}{hint}; valid types: {', '.join(valid)}")


def optimizer_factory(type_name: str) -> Callable[..., torch.optim.Optimizer]:
    """What builds the optimizer type ``type_name`` (raises now if there is none)."""
    return _resolve(OPTIMIZER_GROUP, type_name, _torch_classes(torch.optim, torch.optim.Optimizer))


def scheduler_factory(type_name: str) -> Callable[..., Any]:
    """What builds the scheduler type ``type_name`` (raises now if there is none)."""
    base = torch.optim.lr_scheduler.LRScheduler
    return _resolve(SCHEDULER_GROUP, type_name, _torch_classes(torch.optim.lr_scheduler, base))


def _torch_adam(key: str) -> Callable[..., torch.optim.Optimizer]:
    """DeepSpeed's "Adam"/"AdamW" on torch's classes (zero-optim absent): ``adam_w_mode``
    (default true: decoupled weight decay) picks AdamW or Adam, and ``torch_adam`` (asking
    for torch's implementation) is what happens anyway."""

    def build(params: Iterable[Any], **options: Any) -> torch.optim.Optimizer:
        options.pop("torch_adam", None)
        decoupled = options.pop("adam_w_mode", True) or key == "adamw"
        return (torch.optim.AdamW if decoupled else torch.optim.Adam)(params, **options)

    return build


def build_optimizer(
    type_name: str, params: Iterable[Any], options: Mapping[str, Any]
) -> torch.optim.Optimizer:
    """The optimizer a config's ``"optimizer"`` block names, over ``params``."""
    factory = optimizer_factory(type_name)
    try:
        return factory(list(params), **dict(options))
    except TypeError as exc:
        raise ValueError(f"optimizer {type_name!r}: {exc}") from exc


def build_scheduler(type_name: str, optimizer: torch.optim.Optimizer, options: Mapping[str, Any]):
    """The learning-rate schedule a config's ``"scheduler"`` block names, on ``optimizer``."""
    base = torch.optim.lr_scheduler.LRScheduler
    factory = _resolve(SCHEDULER_GROUP, type_name, _torch_classes(torch.optim.lr_scheduler, base))
    try:
        return factory(optimizer, **dict(options))
    except TypeError as exc:
        raise ValueError(f"scheduler {type_name!r}: {exc}") from exc

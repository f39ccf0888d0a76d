"""Build an optimizer from a DeepSpeed ``"optimizer"`` config block.

[Note: how DeepSpeed's optimizer types map here]
``"Adam"`` and ``"AdamW"`` follow DeepSpeed: ``adam_w_mode`` (default true) picks decoupled
weight decay, and type AdamW always decouples; ``torch_adam: true`` asks for
``torch.optim.Adam``/``AdamW`` instead of ours; otherwise params all on CPU get
:class:`CPUAdam` and any others :class:`FusedAdam` (same math, torch's fused kernel on
device). ``"Lamb"`` is :class:`FusedLamb`, ``"Lion"`` :class:`CPULion`/:class:`FusedLion`,
``"Adagrad"`` :class:`CPUAdagrad` on CPU and ``torch.optim.Adagrad`` elsewhere;
``"OneBitAdam"``, ``"ZeroOneAdam"`` and ``"OneBitLamb"`` are :class:`OnebitAdam`,
:class:`ZeroOneAdam` and :class:`OnebitLamb` (they communicate by themselves: see their
``communicates_gradients`` and ``supported_zero_stages`` attributes). Type names
match case-insensitively, as in DeepSpeed. Any other name is looked up in ``torch.optim``.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from ._adagrad import CPUAdagrad
from ._adam import CPUAdam, FusedAdam
from ._lamb import FusedLamb
from ._lion import CPULion, FusedLion
from .onebit import OnebitAdam, OnebitLamb, ZeroOneAdam

__all__ = ["OptimizerConfigError", "build_optimizer", "optimizer_types"]


class OptimizerConfigError(ValueError):
    """An ``"optimizer"`` config block that cannot be built; the message says what to fix."""


def _all_on_cpu(params: list[Any]) -> bool:
    for item in params:
        tensors = item["params"] if isinstance(item, Mapping) else [item]
        if isinstance(tensors, torch.Tensor):
            tensors = [tensors]
        if any(t.device.type != "cpu" for t in tensors):
            return False
    return True


def _torch_optimizers() -> dict[str, type[torch.optim.Optimizer]]:
    found = {}
    for name in dir(torch.optim):
        obj = getattr(torch.optim, name)
        if (
            inspect.isclass(obj)
            and issubclass(obj, torch.optim.Optimizer)
            and obj is not torch.optim.Optimizer
        ):
            found[name.lower()] = obj
    return found


def optimizer_types() -> list[str]:
    """Every type name ``build_optimizer`` accepts (ours first, then torch.optim's)."""
    ours = [
        "Adam", "AdamW", "Lamb", "Lion", "Adagrad",
        "CPUAdam", "FusedAdam", "FusedLamb", "CPULion", "FusedLion", "CPUAdagrad",
        "OneBitAdam", "ZeroOneAdam", "OneBitLamb",
    ]  # fmt: skip
    taken = {name.lower() for name in ours}
    return ours + sorted(
        c.__name__ for c in _torch_optimizers().values() if c.__name__.lower() not in taken
    )


def _check_values(options: dict[str, Any]) -> None:
    for key in ("lr", "eps", "weight_decay"):
        if key in options:
            value = options[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise OptimizerConfigError(
                    f"optimizer params.{key} must be a number, got {value!r}"
                )
            if not math.isfinite(value) or value < 0:
                raise OptimizerConfigError(
                    f"optimizer params.{key} must be a finite number >= 0, got {value}"
                )
    if "betas" in options:
        betas = options["betas"]
        if (
            not isinstance(betas, (list, tuple))
            or len(betas) != 2
            or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                for b in betas
            )
        ):
            raise OptimizerConfigError(
                f"optimizer params.betas must be two numbers in [0, 1), got {betas!r}"
            )
        options["betas"] = tuple(float(b) for b in betas)


def _check_keys(cls: Callable[..., Any], options: dict[str, Any], type_name: str) -> None:
    accepted = [n for n in inspect.signature(cls).parameters if n not in ("params", "self")]
    for key in options:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise OptimizerConfigError(
                f"optimizer type {type_name!r} ({cls.__name__}) has no parameter {key!r}{hint}. "
                f"Valid parameters: {', '.join(accepted)}"
            )


def _choose(
    type_name: str, options: dict[str, Any], on_cpu: bool
) -> Callable[..., torch.optim.Optimizer]:
    """Pick the class for a type and rewrite DeepSpeed-only keys into its arguments."""
    key = type_name.lower()
    if key in ("adam", "adamw"):
        torch_adam = options.pop("torch_adam", False)
        adam_w_mode = options.pop("adam_w_mode", True)
        for flag, value in (("torch_adam", torch_adam), ("adam_w_mode", adam_w_mode)):
            if not isinstance(value, bool):
                raise OptimizerConfigError(
                    f"optimizer params.{flag} must be true or false, got {value!r}"
                )
        decoupled = key == "adamw" or adam_w_mode
        if torch_adam:
            return torch.optim.AdamW if decoupled else torch.optim.Adam
        if on_cpu:
            options["adamw_mode"] = decoupled
            return CPUAdam
        options["adam_w_mode"] = decoupled
        return FusedAdam
    ours: dict[str, Callable[..., torch.optim.Optimizer]] = {
        "cpuadam": CPUAdam,
        "fusedadam": FusedAdam,
        "lamb": FusedLamb,
        "fusedlamb": FusedLamb,
        "lion": CPULion if on_cpu else FusedLion,
        "cpulion": CPULion,
        "fusedlion": FusedLion,
        "adagrad": CPUAdagrad if on_cpu else torch.optim.Adagrad,
        "cpuadagrad": CPUAdagrad,
        "onebitadam": OnebitAdam,
        "zerooneadam": ZeroOneAdam,
        "onebitlamb": OnebitLamb,
    }
    if key in ours:
        return ours[key]
    torch_classes = _torch_optimizers()
    if key in torch_classes:
        return torch_classes[key]
    close = difflib.get_close_matches(type_name, optimizer_types(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise OptimizerConfigError(
        f"unknown optimizer type {type_name!r}{hint}. Valid types: {', '.join(optimizer_types())}"
    )


def build_optimizer(
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], config: Mapping[str, Any]
) -> torch.optim.Optimizer:
    """Build the optimizer a DeepSpeed ``"optimizer"`` block describes.

    See [Note: how DeepSpeed's optimizer types map here]. A whole DeepSpeed config (with an
    ``"optimizer"`` key) is accepted too.

    Args:
        params: the model's params or param groups.
        config: ``{"type": ..., "params": {...}}``.

    Returns:
        The optimizer.

    Raises:
        OptimizerConfigError: unknown type or parameter (with the closest valid name), a
            NaN/negative lr, eps or weight decay, betas outside [0, 1), or any argument the
            optimizer itself refuses (e.g. ``freeze_step: 0``).
    """
    if not isinstance(config, Mapping):
        raise OptimizerConfigError(f"optimizer config must be a dict, got {type(config).__name__}")
    if "optimizer" in config and "type" not in config:
        config = config["optimizer"]
    if "type" not in config:
        raise OptimizerConfigError("optimizer config has no 'type'")
    extra = sorted(set(config) - {"type", "params"})
    if extra:
        raise OptimizerConfigError(
            f"optimizer config has unexpected keys {extra}; it takes 'type' and 'params'"
        )
    options = config.get("params", {})
    if not isinstance(options, Mapping):
        raise OptimizerConfigError(
            "optimizer 'params' must be an object of argument names to values"
        )
    options = dict(options)
    param_list = list(params)
    cls = _choose(str(config["type"]), options, _all_on_cpu(param_list))
    _check_values(options)
    _check_keys(cls, options, str(config["type"]))
    try:
        return cls(param_list, **options)
    except (TypeError, ValueError) as exc:
        raise OptimizerConfigError(f"optimizer {config['type']!r}: {exc}") from exc


def _factory(type_name: str) -> Callable[..., torch.optim.Optimizer]:
    def build(params: Iterable[Any], **options: Any) -> torch.optim.Optimizer:
        return build_optimizer(params, {"type": type_name, "params": options})

    build.__name__ = build.__qualname__ = type_name.lower()
    build.__doc__ = f"Build a {type_name!r} optimizer (entry point for zero-core's registry)."
    return build


# Entry points of the "zerospeed.optimizers" group (see pyproject.toml) point at these.
adam = _factory("Adam")
adamw = _factory("AdamW")
lamb = _factory("Lamb")
lion = _factory("Lion")
adagrad = _factory("Adagrad")
onebitadam = _factory("OneBitAdam")
zerooneadam = _factory("ZeroOneAdam")
onebitlamb = _factory("OneBitLamb")

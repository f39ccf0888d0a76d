"""Parsing DeepSpeed config blocks into typed dataclasses, once, at the boundary.

Every component owns a ``@dataclass`` whose fields are the block's keys (with DeepSpeed's
defaults and a docstring each); :func:`parse_block` fills it from a dict, rejecting unknown
keys with the closest valid one and values of the wrong type, so a typo never silently
turns a feature off.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["ConfigError", "parse_block", "suggest"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A config block with an unknown key or a value of the wrong type; says what to fix."""


def suggest(name: str, valid: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest valid name, or an empty string."""
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_type(block: str, key: str, value: Any, hint: Any) -> None:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return
        hint = next(o for o in options if o is not type(None))
        origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, item) for v in value):
            raise ConfigError(f'"{block}.{key}" must be a list of {item.__name__}, got {value!r}')
        return
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f'"{block}.{key}" must be {hint.__name__}, got {value!r}')


def parse_block(cls: type[T], config: Mapping[str, Any] | T | None, block: str) -> T:
    """Build ``cls`` from a config block.

    Args:
        cls: the block's dataclass.
        config: the block itself (``{"enabled": true, ...}``), a whole DeepSpeed config
            holding it under ``block``, an instance of ``cls`` (returned as is), or None
            (all defaults).
        block: the block's name in a DeepSpeed config, for lookups and messages.

    Raises:
        ConfigError: for unknown keys or values of the wrong type.
    """
    if config is None:
        return cls()
    if isinstance(config, cls):
        return config
    if not isinstance(config, Mapping):
        raise ConfigError(f'"{block}" must be an object, got {type(config).__name__}')
    if block in config and isinstance(config[block], Mapping):
        config = config[block]
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key, value in config.items():
        if key not in hints:
            raise ConfigError(
                f'unknown key "{block}.{key}"{suggest(key, valid)}; valid keys: {", ".join(valid)}'
            )
        _check_type(block, key, value, hints[key])
    return cls(**{k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()})

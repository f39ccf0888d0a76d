"""Reading a config: a dict as is, or a JSON file."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from ._errors import ConfigError

__all__ = ["read_config"]


def read_config(source: Mapping[str, Any] | str | os.PathLike[str] | None) -> Mapping[str, Any]:
    """The config as a mapping.

    Args:
        source: a dict, the path of a JSON file, or None (an empty config).

    Raises:
        ConfigError: the file is missing or unreadable, is not valid JSON (the message gives
            the line and column), repeats a key in an object, or does not hold an object.
    """
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError(
            f"config: expected a dict, the path of a JSON file or None, got {type(source).__name__}"
        )
    path = os.fspath(source)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        hint = ""
        if isinstance(source, str) and source.lstrip().startswith("{"):
            hint = " (this looks like JSON text: pass json.loads(text) instead)"
        raise ConfigError(f"config file {path!r} does not exist{hint}") from None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(f"config file {path!r} cannot be read: {reason}") from None
    try:
        config = json.loads(text, object_pairs_hook=lambda pairs: _object(pairs, path))
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"config file {path!r} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"
        ) from None
    if not isinstance(config, dict):
        raise ConfigError(
            f"config file {path!r} must hold a JSON object ({{...}}), not {type(config).__name__}"
        )
    return config


def _object(pairs: list[tuple[str, Any]], path: str) -> dict[str, Any]:
    """A JSON object; a key given twice is an error (JSON would silently keep the last)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"config file {path!r} gives the key {key!r} twice in one object")
        out[key] = value
    return out

"""The one exception every invalid config raises, and the "did you mean" helper."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from typing import Any

__all__ = ["ConfigError", "join", "show", "suggest"]


class ConfigError(ValueError):
    """A DeepSpeed config that zero-core cannot accept as given.

    The message starts with the dotted path of the offending key (``zero_optimization.stage``)
    and says what would be accepted instead.
    """


def suggest(name: str, valid: Iterable[str], canonical: dict[str, str] | None = None) -> str:
    """`` (did you mean 'x'?)`` for the valid name closest to ``name``, or ``""``.

    Args:
        name: the unknown name.
        valid: every accepted name (aliases included: a typo of an alias is matched too).
        canonical: maps an alias to the name to suggest in its place.
    """
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {(canonical or {}).get(close[0], close[0])!r}?)"


def join(path: str, key: str) -> str:
    """The dotted path of ``key`` inside the block at ``path`` (``""`` is the top level)."""
    return f"{path}.{key}" if path else key


def show(value: Any) -> str:
    """A value as it is written in JSON (``true``, ``"2"``, ``null``), for messages."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)

"""Config dataclasses are their own schema: parse a JSON block into one, and back.

A block is a frozen dataclass whose fields are the block's keys. :func:`option` attaches
what the JSON may hold (aliases, ranges, choices) to a field, and :func:`parse_block` fills
the dataclass from a dict, rejecting unknown keys with the closest valid one and values of
the wrong type or range with the key path, the value and what is expected. A field whose
type is another config dataclass is a nested block and is parsed the same way.

[Note: numbers in DeepSpeed configs]
DeepSpeed configs write sizes as ``5e8``, which JSON parses as a float. An integer field
accepts any float with an integral value and stores the int; ``2.5`` is refused.
Booleans are never numbers: ``1`` is not ``true`` and ``true`` is not ``1``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ._errors import ConfigError, join, show, suggest

__all__ = ["canonical_choice", "meta", "option", "parse_block", "parse_fields", "to_plain"]

T = TypeVar("T")
_NONE = type(None)


def meta(
    *,
    aliases: tuple[str, ...] = (),
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    choices: tuple[Any, ...] | None = None,
    casefold: bool = False,
    bool_strings: bool = False,
    json_type: Any = None,
    convert: Callable[[Any], Any] | None = None,
    export: Callable[[Any], Any] | None = None,
    internal: bool = False,
) -> dict[str, Any]:
    """What a field's JSON key accepts, as ``dataclasses.field(metadata=...)``.

    Args:
        aliases: other names DeepSpeed accepts for the key; the result uses the field name.
        ge: inclusive lower bound.
        gt: exclusive lower bound.
        le: inclusive upper bound.
        choices: the accepted values.
        casefold: match string ``choices`` ignoring case.
        bool_strings: also accept ``"true"``/``"false"`` (some DeepSpeed tools write those).
        json_type: the type the JSON value is checked against when it differs from the
            field's (e.g. a dtype name for a ``torch.dtype`` field).
        convert: turns the checked JSON value into the field's value.
        export: turns the field's value back into JSON (the inverse of ``convert``).
        internal: not a JSON key (set by the loader).
    """
    return {
        "aliases": aliases,
        "ge": ge,
        "gt": gt,
        "le": le,
        "choices": choices,
        "casefold": casefold,
        "bool_strings": bool_strings,
        "json_type": json_type,
        "convert": convert,
        "export": export,
        "internal": internal,
    }


def option(default: Any = dataclasses.MISSING, **rules: Any) -> Any:
    """A field with an immutable ``default`` (none: the key is required) and the
    :func:`meta` ``rules`` of its JSON key."""
    return dataclasses.field(default=default, metadata=meta(**rules))


@dataclasses.dataclass(frozen=True)
class _Key:
    """One JSON key of a block: its field, the type its value is checked against, and rules."""

    name: str
    hint: Any
    meta: Mapping[str, Any]
    required: bool


@functools.cache
def _keys(cls: type) -> dict[str, _Key]:
    hints = typing.get_type_hints(cls)
    keys = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        hint = f.metadata.get("json_type") or hints[f.name]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        keys[f.name] = _Key(f.name, hint, f.metadata, required)
    return keys


@functools.cache
def _names(cls: type) -> dict[str, str]:
    """Every accepted spelling of ``cls``'s keys, mapped to the field name."""
    names = {}
    for key in _keys(cls).values():
        names[key.name] = key.name
        for alias in key.meta.get("aliases", ()):
            names[alias] = key.name
    return names


def parse_fields(
    cls: type, raw: Any, path: str, *, skip: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The checked values of the keys present in ``raw``, by field name.

    Args:
        cls: the block's dataclass.
        raw: the block as given; ``None`` is an empty block.
        path: the block's dotted path, for messages (``""`` at the top level).
        skip: keys the caller parses itself.

    Raises:
        ConfigError: a key that is unknown, given twice (by name and alias) or missing
            while required; a value of the wrong type or out of range.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        where = path or "the config"
        raise ConfigError(f"{where}: expected an object ({{...}}), got {show(raw)}")
    normalize = getattr(cls, "_normalize_json", None)
    if normalize is not None:
        raw = normalize(dict(raw), path)
    keys, names = _keys(cls), _names(cls)
    values: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str):
            raise ConfigError(f"{path or 'the config'}: keys must be strings, got {name!r}")
        if name in skip:
            continue
        field_name = names.get(name)
        if field_name is None:
            raise _unknown(name, path, {**names, **{s: s for s in skip}})
        if field_name in given_as:
            raise ConfigError(
                f"{join(path, name)}: {given_as[field_name]!r} and {name!r} are the same "
                f"setting; give only {field_name!r}"
            )
        given_as[field_name] = name
        values[field_name] = _value(value, keys[field_name], join(path, name))
    for key in keys.values():
        if key.required and key.name not in values:
            raise ConfigError(f"{join(path, key.name)}: required, but missing")
    return values


def parse_block(cls: type[T], raw: Any, path: str) -> T:
    """``cls`` filled from the block ``raw`` (see :func:`parse_fields`)."""
    return cls(**parse_fields(cls, raw, path))


def to_plain(obj: Any) -> Any:
    """A config dataclass (or value) as JSON-serializable data, keys by their field names."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            if f.metadata.get("internal"):
                continue
            value = getattr(obj, f.name)
            export = f.metadata.get("export")
            out[f.name] = export(value) if export is not None else to_plain(value)
        return out
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def _unknown(name: str, path: str, names: dict[str, str]) -> ConfigError:
    where = f"in {path!r}" if path else "at the top level"
    hint = suggest(name, names, names)
    valid = "" if hint else f"; valid keys: {', '.join(sorted(set(names.values())))}"
    return ConfigError(f"{join(path, name)}: unknown key {name!r} {where}{hint}{valid}")


def _value(given: Any, key: _Key, path: str) -> Any:
    value = _typed(given, key.hint, key.meta, path)
    if value is not None:
        _check_range(value, key.hint, key.meta, path, given)
    convert = key.meta.get("convert")
    return convert(value) if convert is not None else value


def _typed(value: Any, hint: Any, meta: Mapping[str, Any], path: str) -> Any:
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        optional = _NONE in args
        (hint,) = (a for a in args if a is not _NONE)
    if value is None:
        if optional:
            return None
        raise _expected(value, hint, meta, path, optional)
    if hint is Any:
        return copy.deepcopy(value)
    if dataclasses.is_dataclass(hint):
        return parse_block(hint, value, path)
    origin = typing.get_origin(hint) or hint
    if origin is bool:
        if isinstance(value, bool):
            return value
        if meta.get("bool_strings") and str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
    elif origin is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
    elif origin is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif origin is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, (list, tuple)):
            (item,) = typing.get_args(hint) or (Any,)
            return [_typed(v, item, {}, f"{path}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, Mapping):
            return copy.deepcopy(dict(value))
    else:  # pragma: no cover - a schema bug, not a config error
        raise TypeError(f"{path}: unsupported schema type {hint!r}")
    raise _expected(value, hint, meta, path, optional)


def _check_range(value: Any, hint: Any, meta: Mapping[str, Any], path: str, given: Any) -> None:
    nullable = typing.get_origin(hint) in (typing.Union, types.UnionType) and _NONE in (
        typing.get_args(hint)
    )
    choices = meta.get("choices")
    if choices is not None:
        if meta.get("casefold") and isinstance(value, str):
            if value.casefold() in (c.casefold() for c in choices if isinstance(c, str)):
                return
        elif value in choices:
            return
        raise _expected(given, hint, meta, path, nullable or None in choices)
    ge, gt, le = meta.get("ge"), meta.get("gt"), meta.get("le")
    low = (ge is not None and value < ge) or (gt is not None and value <= gt)
    if low or (le is not None and value > le):
        raise _expected(given, hint, meta, path, nullable)


def _casefold_choice(value: str, choices: tuple[Any, ...]) -> str:
    return next(c for c in choices if isinstance(c, str) and c.casefold() == value.casefold())


def canonical_choice(choices: tuple[Any, ...]) -> Callable[[Any], Any]:
    """A ``convert`` for a ``casefold`` option: the listed spelling of the value."""
    return lambda value: value if value is None else _casefold_choice(value, choices)


def _expected(
    value: Any, hint: Any, meta: Mapping[str, Any], path: str, optional: bool
) -> ConfigError:
    what = _describe(hint, meta)
    if optional:
        what += " or null"
    message = f"{path}: expected {what}, got {show(value)}"
    if value == "auto":
        message += (
            " ('auto' is a placeholder that the HuggingFace Trainer fills in; zero-core "
            "needs the actual value)"
        )
    return ConfigError(message)


def _describe(hint: Any, meta: Mapping[str, Any]) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = (a for a in typing.get_args(hint) if a is not _NONE)
    choices = meta.get("choices")
    if choices is not None:
        listed = ", ".join(show(c) for c in choices if c is not None)
        case = " (any case)" if meta.get("casefold") else ""
        return f"one of {listed}{case}"
    origin = typing.get_origin(hint) or hint
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        inner = {int: "integers", str: "strings", float: "numbers"}.get(item, "values")
        return f"a list of {inner}"
    if origin is dict or dataclasses.is_dataclass(origin):
        return "an object ({...})"
    what = words.get(origin, str(origin))
    if origin is bool and meta.get("bool_strings"):
        what += ' (or "true"/"false")'
    ge, gt, le = meta.get("ge"), meta.get("gt"), meta.get("le")
    if ge is not None and le is not None:
        return f"{what} from {ge:g} to {le:g}"
    if ge is not None:
        return f"{what} >= {ge:g}"
    if gt is not None:
        return f"{what} > {gt:g}"
    if le is not None:
        return f"{what} <= {le:g}"
    return what

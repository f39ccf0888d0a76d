"""zero-aio's functions, found through entry points: zero-core never imports it by name.

[Note: finding zero-aio]
zero-aio declares its I/O functions in the entry-point group ``zerospeed.aio``
(``aio_handle``, ``save``, ``load``, ``read_index``, ``load_tensors``, ``load_into``).
Checkpoint writes and reads and NVMe offload look them up here, so zero-core still runs
with torch alone, and asking for zero-aio without it installed fails with the command that
installs it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

__all__ = ["INSTALL", "aio", "handle_from_config", "installed"]

GROUP = "zerospeed.aio"
INSTALL = "pip install zero-aio"

#: The "aio" config keys that are ``aio_handle`` arguments of the same name.
_HANDLE_KEYS = (
    "block_size",
    "queue_depth",
    "intra_op_parallelism",
    "single_submit",
    "overlap_events",
    "backend",
)


@functools.cache
def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def installed() -> bool:
    """Whether zero-aio (its entry points) is installed."""
    return bool(_entry_points())


def aio(name: str) -> Callable[..., Any]:
    """zero-aio's ``name`` (``"save"``, ``"aio_handle"``, ...).

    Raises:
        ImportError: zero-aio is not installed (or too old to provide ``name``).
    """
    found = _entry_points()
    if name not in found:
        have = "is not installed" if not found else f"installed has no {name!r}; upgrade it"
        raise ImportError(f"zero-aio {have}: {INSTALL}")
    return found[name].load()


def handle_from_config(aio_section: Mapping[str, Any] | None) -> Any:
    """An ``aio_handle`` built from the keys given in the ``"aio"`` config block, or
    ``None`` (zero-aio's own default handle) when the block gives none of them."""
    given = {k: v for k, v in (aio_section or {}).items() if k in _HANDLE_KEYS}
    return aio("aio_handle")(**given) if given else None

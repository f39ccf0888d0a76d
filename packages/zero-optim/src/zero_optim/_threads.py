"""How many threads an optimizer step uses.

[Note: sharing the CPU between ranks]
With ``torchrun --nproc-per-node=N`` every rank runs its own CPU optimizer step at the same
moment. If each took all cores, N ranks would run N times as many threads as cores and
thrash. So when ``LOCAL_WORLD_SIZE`` (set by torchrun) is above 1, a rank's default is its
share of the node's cores; otherwise it is ``torch.get_num_threads()``, the count the user
already tuned for torch's own CPU ops.
"""

from __future__ import annotations

import os

import torch

__all__ = ["default_num_threads", "resolve_num_threads"]


def _node_cores() -> int:
    return os.cpu_count() or 1


def default_num_threads() -> int:
    """The default thread count; see [Note: sharing the CPU between ranks]."""
    raw = os.environ.get("LOCAL_WORLD_SIZE", "")
    try:
        local_world = int(raw) if raw else 1
    except ValueError:
        local_world = 1
    if local_world > 1:
        return max(1, _node_cores() // local_world)
    return max(1, torch.get_num_threads())


def resolve_num_threads(num_threads: int | None) -> int | None:
    """Validate an explicit thread count; ``None`` means "decide at each step"."""
    if num_threads is None:
        return None
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer or None, got {num_threads!r}")
    return num_threads

"""Message sizes and bandwidths of collectives, with the NCCL-tests conventions.

[Note: bus bandwidth]
Algorithmic bandwidth is ``size / time``. It cannot be compared across collectives or world
sizes, because a ring all-reduce moves ``2 (n-1) / n`` times its buffer over each link while
a broadcast moves it once. NCCL-tests' bus bandwidth rescales by that factor so the number
compares to the hardware's link speed:

============================================  ========================  ===============
collective                                    size S                    busbw / algbw
============================================  ========================  ===============
all_reduce                                    the tensor                2 (n-1) / n
all_gather, all_gather_into_tensor            the whole output          (n-1) / n
reduce_scatter, reduce_scatter_tensor         the whole input           (n-1) / n
all_to_all, all_to_all_single                 the whole input           (n-1) / n
broadcast, reduce, send, recv                 the tensor                1
barrier                                       0                         (no bandwidth)
============================================  ========================  ===============

torch 2.13's ``all_gather_single`` and ``reduce_scatter_single`` are the same collectives
as ``all_gather_into_tensor`` and ``reduce_scatter_tensor`` under new names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["COLLECTIVES", "bus_factor", "message_bytes"]


def _bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_bytes(v) for v in value)
    return 0


#: collective -> (the argument whose bytes are the message size, bus-bandwidth factor(n)).
COLLECTIVES: dict[str, tuple[str | None, Callable[[int], float]]] = {
    "all_reduce": ("tensor", lambda n: 2 * (n - 1) / n),
    "all_gather": ("tensor_list", lambda n: (n - 1) / n),
    "all_gather_into_tensor": ("output_tensor", lambda n: (n - 1) / n),
    "reduce_scatter": ("input_list", lambda n: (n - 1) / n),
    "reduce_scatter_tensor": ("input", lambda n: (n - 1) / n),
    "all_to_all": ("input_tensor_list", lambda n: (n - 1) / n),
    "all_to_all_single": ("input", lambda n: (n - 1) / n),
    "broadcast": ("tensor", lambda n: 1.0),
    "reduce": ("tensor", lambda n: 1.0),
    "send": ("tensor", lambda n: 1.0),
    "recv": ("tensor", lambda n: 1.0),
    "barrier": (None, lambda n: 0.0),
}
# torch 2.13's new names (its old names call them), where this torch has them.
COLLECTIVES.update(
    {
        name: rule
        for name, rule in (
            ("all_gather_single", ("output_tensor", lambda n: (n - 1) / n)),
            ("reduce_scatter_single", ("input", lambda n: (n - 1) / n)),
        )
        if hasattr(torch.distributed, name)
    }
)


def bus_factor(op: str, world_size: int) -> float:
    """busbw / algbw for ``op`` on ``world_size`` ranks (see [Note: bus bandwidth])."""
    return COLLECTIVES[op][1](world_size) if world_size > 0 else 0.0


def message_bytes(op: str, signature: inspect.Signature, args: tuple, kwargs: dict) -> int:
    """The message size of one call, in bytes, per the table in [Note: bus bandwidth]."""
    name = COLLECTIVES[op][0]
    if name is None:
        return 0
    bound = signature.bind_partial(*args, **kwargs).arguments
    return _bytes(bound.get(name))

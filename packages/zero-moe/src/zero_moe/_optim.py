"""Optimizer helpers: tell expert parameters apart and give them their own groups."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

#: DeepSpeed's default cap on the elements of one MoE parameter group.
MAX_GROUP_SIZE = 178956971


def is_moe_param(param: nn.Parameter) -> bool:
    """True for expert parameters (marked ``allreduce = False`` by :class:`MoE`)."""
    return not getattr(param, "allreduce", True)


def split_params_into_different_moe_groups_for_optimizer(
    param_groups: dict | list[dict] | tuple[dict, ...],
    max_group_size: int | None = MAX_GROUP_SIZE,
) -> list[dict[str, Any]]:
    """Move expert parameters out of optimizer param groups into groups of their own.

    Each input group keeps its non-expert parameters (and gets ``"moe": False``). Its expert
    parameters go to new groups, one per expert ``group_name`` (``"ep_size_<n>"``), with the
    same options, ``"name"`` set to the group name and ``"moe": True``; a group larger than
    ``max_group_size`` elements is cut into several. An engine reduces the gradients of
    ``"moe"`` groups over the expert-data-parallel group.

    Args:
        param_groups: One param-group dict or a list/tuple of them (``"params"`` may be any
            iterable of parameters).
        max_group_size: Largest number of elements in one expert group (None: no limit).

    Returns:
        The original groups followed by the expert groups, ready for ``torch.optim``.

    Raises:
        TypeError: ``param_groups`` is not a dict, list or tuple of dicts.
    """
    if isinstance(param_groups, dict):
        groups = [param_groups]
    elif isinstance(param_groups, (list, tuple)):
        groups = list(param_groups)
    else:
        raise TypeError(
            f"param_groups must be a dict or a list/tuple of dicts, got {type(param_groups)}"
        )
    result: list[dict[str, Any]] = []
    moe_groups: list[dict[str, Any]] = []
    for group in groups:
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"every param group must be a dict with 'params', got {group!r}")
        params: Iterable[nn.Parameter] = group["params"]
        params = [params] if isinstance(params, nn.Parameter) else list(params)
        options = {key: value for key, value in group.items() if key != "params"}
        dense = [p for p in params if not is_moe_param(p)]
        result.append({**options, "params": dense, "moe": False})
        by_name: dict[str, list[list[nn.Parameter]]] = {}
        for p in params:
            if not is_moe_param(p):
                continue
            chunks = by_name.setdefault(p.group_name, [[]])
            size = sum(q.numel() for q in chunks[-1])
            if chunks[-1] and max_group_size is not None and size + p.numel() > max_group_size:
                chunks.append([])
            chunks[-1].append(p)
        for name, chunks in by_name.items():
            for chunk in chunks:
                moe_groups.append({**options, "params": chunk, "name": name, "moe": True})
    return result + moe_groups

"""Expert-parallel and expert-data-parallel process groups.

[Note: expert process groups]
With ``world`` ranks and an expert-parallel size ``ep``, the ranks are cut into ``world/ep``
*expert-parallel* groups of consecutive ranks (``[0..ep)``, ``[ep..2ep)``, ...). Within one
such group every rank holds a different slice of ``num_experts/ep`` experts, and tokens
travel between its members by ``all_to_all``. Rank ``r`` holds the same experts as every
rank ``r'`` with ``r' % ep == r % ep``: those ranks form its *expert-data-parallel* group,
the group over which the gradients of its expert parameters are averaged. With 8 ranks and
``ep=2``: expert-parallel groups ``[0,1] [2,3] [4,5] [6,7]``, expert-data-parallel groups
``[0,2,4,6] [1,3,5,7]``. Dense parameters are averaged over the whole world as usual.

``torch.distributed.new_group`` is collective: every rank creates every group, in the same
order, so MoE layers must be built in the same order on all ranks (they are, when every rank
runs the same model code).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist


@dataclass(frozen=True)
class ExpertGroups:
    """The process groups of one expert-parallel size, as seen from this rank."""

    name: str
    """``"ep_size_<ep_size>"``: the ``group_name`` stamped on expert parameters."""
    ep_size: int
    """Ranks that share one copy of all experts (the all-to-all group size)."""
    ep_group: dist.ProcessGroup | None
    """This rank's expert-parallel group; None when there is no process group to use."""
    ep_ranks: tuple[int, ...]
    """Global ranks of ``ep_group``, in group-rank order."""
    edp_group: dist.ProcessGroup | None
    """This rank's expert-data-parallel group; None when it would hold this rank only."""
    edp_ranks: tuple[int, ...]
    """Global ranks of ``edp_group``, in group-rank order."""


_GROUPS: dict[str, ExpertGroups] = {}
#: The default group the cache was built under; a new ``init_process_group`` invalidates it.
_WORLD_KEY: list[object] = [None]


def expert_group_name(ep_size: int) -> str:
    """The group name of expert parameters with expert-parallel size ``ep_size``."""
    return f"ep_size_{ep_size}"


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def create_expert_and_data_parallel(ep_size: int) -> ExpertGroups:
    """Create (once) the expert-parallel and expert-data-parallel groups for ``ep_size``.

    Collective when ``torch.distributed`` is initialized with more than one rank: every rank
    must call it with the same ``ep_size``. Later calls return the cached groups. See
    [Note: expert process groups] in this module.

    Args:
        ep_size: Expert-parallel size; must divide the world size.

    Returns:
        This rank's :class:`ExpertGroups`.

    Raises:
        ValueError: ``ep_size`` is not a positive divisor of the world size.
    """
    rank, world = _world()
    if ep_size < 1 or world % ep_size:
        raise ValueError(
            f"ep_size={ep_size} must be a positive divisor of the world size ({world})"
        )
    world_key = dist.group.WORLD if world > 1 else None
    if _WORLD_KEY[0] is not world_key:
        _GROUPS.clear()
        _WORLD_KEY[0] = world_key
    name = expert_group_name(ep_size)
    if name in _GROUPS:
        return _GROUPS[name]
    ep_ranks = tuple(range(rank - rank % ep_size, rank - rank % ep_size + ep_size))
    edp_ranks = tuple(range(rank % ep_size, world, ep_size))
    ep_group = edp_group = None
    if world > 1:
        # Every rank creates every group in the same order (new_group is collective).
        for start in range(0, world, ep_size):
            ranks = list(range(start, start + ep_size))
            group = dist.new_group(ranks) if ep_size > 1 else None
            if rank in ranks:
                ep_group = group
        for first in range(ep_size):
            ranks = list(range(first, world, ep_size))
            group = dist.new_group(ranks) if len(ranks) > 1 else None
            if rank in ranks:
                edp_group = group
    groups = ExpertGroups(name, ep_size, ep_group, ep_ranks, edp_group, edp_ranks)
    _GROUPS[name] = groups
    return groups


def _lookup(ep_size_or_name: int | str) -> ExpertGroups:
    name = (
        ep_size_or_name
        if isinstance(ep_size_or_name, str)
        else expert_group_name(int(ep_size_or_name))
    )
    if name not in _GROUPS:
        raise KeyError(
            f"no expert groups named {name!r}; create them with "
            f"create_expert_and_data_parallel(ep_size) or by building an MoE layer"
        )
    return _GROUPS[name]


def get_expert_parallel_group(ep_size_or_name: int | str) -> dist.ProcessGroup | None:
    """This rank's expert-parallel group for an ``ep_size`` or group name (``"ep_size_2"``)."""
    return _lookup(ep_size_or_name).ep_group


def get_expert_data_parallel_group(ep_size_or_name: int | str) -> dist.ProcessGroup | None:
    """This rank's expert-data-parallel group for an ``ep_size`` or group name."""
    return _lookup(ep_size_or_name).edp_group


def get_expert_parallel_ranks(ep_size_or_name: int | str) -> list[int]:
    """Global ranks of this rank's expert-parallel group."""
    return list(_lookup(ep_size_or_name).ep_ranks)


def get_expert_data_parallel_ranks(ep_size_or_name: int | str) -> list[int]:
    """Global ranks of this rank's expert-data-parallel group."""
    return list(_lookup(ep_size_or_name).edp_ranks)

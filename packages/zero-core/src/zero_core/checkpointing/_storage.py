"""How a checkpointed call's inputs are kept until backward: whole, as this model-parallel
rank's slice, in CPU memory, or in a slot of one preallocated buffer.

[Note: what is partitioned]
Under model parallelism every rank of a model-parallel group holds the same activations
(the input of a layer is replicated before each rank computes its part). A checkpoint only
needs them again in backward, so each rank keeps ``1/N`` of each floating-point input: the
flattened tensor padded to a multiple of ``N``, this rank's contiguous block. Before the
recomputation the blocks are all-gathered over the model-parallel group. Parameters are
not activations (the module holds them anyway) and integer or boolean tensors (masks,
token ids) are small: both are kept whole.

[Note: the contiguous buffer]
With ``contiguous_memory_optimization`` the kept slices of every checkpoint of a forward
pass go into one buffer per argument position, preallocated with ``number_checkpoints``
slots sized by the first checkpoint (DeepSpeed's "homogeneous checkpoints"). A checkpoint
takes the lowest free slot in forward and gives it back once its backward is done; a
forward pass with more checkpoints than slots is refused. ``reset()`` frees every slot, for
forward passes that are never followed by backward.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import _dist

__all__ = ["Kept", "Plan", "Saved", "Slots", "keep", "reset", "restore_args"]


class Kept(enum.Enum):
    """How one argument of a checkpointed call is kept."""

    OBJECT = "object"
    """Not a tensor: kept as it is."""
    WHOLE = "whole"
    """A tensor kept whole (saved for backward as given)."""
    SLICE = "slice"
    """This rank's slice of a floating-point tensor (see [Note: what is partitioned])."""


@dataclass(frozen=True)
class Plan:
    """What the settings ask of the inputs of one call."""

    partition: bool
    """Keep slices (``partition_activations``)."""
    cpu: bool
    """Keep them in CPU memory (``cpu_checkpointing``)."""
    slots: int | None
    """Slots of the contiguous buffer; None: no buffer."""
    group: Any
    """The model-parallel process group (None: no model parallelism)."""
    world: int
    """Its size."""
    rank: int
    """This rank's index in it."""


@dataclass(frozen=True)
class Saved:
    """One argument as kept: enough to rebuild it for the recomputation."""

    kind: Kept
    value: Any = None
    """``OBJECT``: the argument itself."""
    shape: torch.Size | None = None
    dtype: torch.dtype | None = None
    device: torch.device | None = None
    requires_grad: bool = False


class Slots:
    """The contiguous buffer: one ``[slots, slice numel]`` tensor per argument position."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.free = list(range(count))
        self.buffers: dict[int, torch.Tensor] = {}  # position -> [count, numel]

    def acquire(self) -> int:
        if not self.free:
            raise RuntimeError(
                f"activation checkpointing: this forward pass has more checkpoint() calls "
                f"than the contiguous buffer's {self.count} slots (number_checkpoints), all "
                f"holding activations that backward has not used yet; raise "
                f"number_checkpoints to the number of checkpoint() calls per forward pass, or "
                f"call zero_core.checkpointing.reset() after a forward pass that is not "
                f"followed by backward"
            )
        self.free.sort()
        return self.free.pop(0)

    def release(self, slot: int) -> None:
        assert slot not in self.free, f"contiguous slot {slot} released twice"
        self.free.append(slot)

    def place(self, position: int, slot: int, piece: torch.Tensor) -> torch.Tensor:
        """Copy ``piece`` into ``slot`` of the buffer for argument ``position``."""
        buffer = self.buffers.get(position)
        if buffer is None:
            buffer = torch.empty(
                (self.count, piece.numel()), dtype=piece.dtype, device=piece.device
            )
            self.buffers[position] = buffer
        if piece.dtype != buffer.dtype or piece.numel() > buffer.shape[1]:
            raise ValueError(
                f"contiguous_memory_optimization: argument {position} of this checkpoint "
                f"keeps {piece.numel()} x {piece.dtype}, but the buffer's slots were sized "
                f"by the first checkpoint for {buffer.shape[1]} x {buffer.dtype}; the option "
                f"needs checkpoints whose inputs have the same size and dtype (or turn it off)"
            )
        view = buffer[slot, : piece.numel()]
        view.copy_(piece)
        # .data: a version counter of its own, or writing the next slot would make autograd
        # think this checkpoint's saved input had been modified
        return view.data


_SLOTS: Slots | None = None


def slots(count: int) -> Slots:
    """The process's contiguous buffer with ``count`` slots (made on first use)."""
    global _SLOTS
    if _SLOTS is None or _SLOTS.count != count:
        _SLOTS = Slots(count)
    return _SLOTS


def reset() -> None:
    """Drop the contiguous buffer and free its slots (DeepSpeed's ``reset``): call it after
    forward passes not followed by backward (evaluation with autograd on). Checkpoints
    still waiting for backward keep the old buffer alive and stay correct."""
    global _SLOTS
    _SLOTS = None


def _my_slice(t: torch.Tensor, world: int, rank: int) -> torch.Tensor:
    flat = t.detach().reshape(-1)
    if world == 1:
        return flat
    per = math.ceil(flat.numel() / world)
    piece = flat[rank * per : (rank + 1) * per]
    if piece.numel() < per:
        piece = torch.cat([piece, piece.new_zeros(per - piece.numel())])
    return piece.clone()


def keep(
    args: Sequence[Any], plan: Plan
) -> tuple[list[Saved], list[torch.Tensor], Slots | None, int | None]:
    """Decide how each of ``args`` is kept.

    Returns:
        ``(saved, tensors, slots, slot)``: one :class:`Saved` per argument; the tensors to
        save for backward, in order of the ``WHOLE`` and ``SLICE`` arguments; the
        contiguous buffer and this call's slot in it (None without one).
    """
    buffer = slots(plan.slots) if plan.slots is not None else None
    slot = buffer.acquire() if buffer is not None else None
    try:
        saved, tensors = _keep_each(args, plan, buffer, slot)
    except BaseException:
        if buffer is not None:
            buffer.release(slot)
        raise
    return saved, tensors, buffer, slot


def _keep_each(
    args: Sequence[Any], plan: Plan, buffer: Slots | None, slot: int | None
) -> tuple[list[Saved], list[torch.Tensor]]:
    saved: list[Saved] = []
    tensors: list[torch.Tensor] = []
    for position, arg in enumerate(args):
        if not isinstance(arg, torch.Tensor):
            saved.append(Saved(Kept.OBJECT, value=arg))
            continue
        meta = {"shape": arg.shape, "dtype": arg.dtype, "device": arg.device}
        meta["requires_grad"] = arg.requires_grad
        if not plan.partition or not arg.is_floating_point() or isinstance(arg, nn.Parameter):
            saved.append(Saved(Kept.WHOLE, **meta))
            tensors.append(arg)
            continue
        piece = _my_slice(arg, plan.world, plan.rank)
        if plan.cpu:
            piece = piece.to("cpu", copy=True)
        if buffer is not None:
            piece = buffer.place(position, slot, piece)
        saved.append(Saved(Kept.SLICE, **meta))
        tensors.append(piece)
    return saved, tensors


def _whole(spec: Saved, piece: torch.Tensor, plan: Plan) -> torch.Tensor:
    piece = piece.to(spec.device)
    numel = math.prod(spec.shape)
    if plan.world > 1:
        full = torch.empty(plan.world * piece.numel(), dtype=piece.dtype, device=piece.device)
        _dist.all_gather_into(full, piece.contiguous(), group=plan.group)
        piece = full
    return piece[:numel].view(spec.shape)


def restore_args(saved: Sequence[Saved], tensors: Sequence[torch.Tensor], plan: Plan) -> list[Any]:
    """The arguments for the recomputation: kept tensors made whole again, detached, each
    requiring grad as its original did."""
    out: list[Any] = []
    tensors = iter(tensors)
    for spec in saved:
        if spec.kind is Kept.OBJECT:
            out.append(spec.value)
            continue
        t = next(tensors)
        if spec.kind is Kept.SLICE:
            t = _whole(spec, t, plan)
        out.append(t.detach().requires_grad_(spec.requires_grad))
    return out

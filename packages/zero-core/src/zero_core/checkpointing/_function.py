"""``checkpoint`` and ``non_reentrant_checkpoint``: run a function without keeping its
activations, and run it again in backward.

[Note: the reentrant checkpoint]
``checkpoint`` is an autograd Function: forward runs the function under ``no_grad`` and
keeps only its inputs (as the settings say: see ``_storage``) and the random states
(see [Note: why recomputation needs the forward's random state]); its backward rebuilds the
inputs, reruns the function with autograd on and backpropagates the incoming gradients
through that new graph (a backward inside the backward: "reentrant"). The Function gets
one extra input that requires grad, so its output is part of the graph even when no real
input requires grad (the first layer's): the parameters inside still get gradients.
Backward must be ``.backward()``/``torch.autograd.backward``, not ``torch.autograd.grad``,
as for torch's reentrant checkpoint.

At ZeRO stage 3 the recomputation runs the modules' forward again: their forward pre-hooks
gather the parameters, and the engine's backward keeps them until their gradients are
taken, so no special case is needed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.utils.checkpoint

from . import _profile, _rng, _settings, _storage

__all__ = ["checkpoint", "non_reentrant_checkpoint"]


def _plan() -> _storage.Plan:
    s = _settings.settings()
    return _storage.Plan(
        partition=s.partition_activations,
        cpu=s.cpu_checkpointing,
        slots=s.number_checkpoints if s.contiguous_memory_optimization else None,
        group=_settings.mp_group(),
        world=_settings.mp_world_size() if s.partition_activations else 1,
        rank=_settings.mp_rank() if s.partition_activations else 0,
    )


def _boundary(name: str, phase: str) -> Any:
    s = _settings.settings()
    return _profile.boundary(name, phase, sync=s.synchronize_checkpoint_boundary, profile=s.profile)


def _outputs(out: Any) -> tuple[Any, ...]:
    return out if isinstance(out, tuple) else (out,)


class CheckpointFunction(torch.autograd.Function):
    """The autograd node of :func:`checkpoint` (see [Note: the reentrant checkpoint])."""

    @staticmethod
    def forward(ctx: Any, function: Callable[..., Any], anchor: torch.Tensor, *args: Any) -> Any:
        """Run ``function`` without building its graph; keep its inputs and RNG states."""
        del anchor  # only there to put the output in the graph
        ctx.function = function
        ctx.name = _profile.function_name(function)
        ctx.devices = _rng.cuda_devices(args)
        ctx.rng = _rng.capture(ctx.devices)
        ctx.streams = _rng.get_cuda_rng_tracker().get_states()
        with torch.no_grad(), _boundary(ctx.name, "forward"):
            out = function(*args)
        ctx.plan = _plan()
        ctx.saved, tensors, ctx.slots, ctx.slot = _storage.keep(args, ctx.plan)
        ctx.save_for_backward(*tensors)
        ctx.tuple_output = isinstance(out, tuple)
        ctx.mark_non_differentiable(
            *(o for o in _outputs(out) if isinstance(o, torch.Tensor) and not o.is_floating_point())
        )
        return out

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        """Restore the inputs and RNG states, run ``function`` again, backpropagate."""
        if not torch.autograd._is_checkpoint_valid():
            raise RuntimeError(
                "zero_core.checkpointing.checkpoint supports loss.backward() / "
                "torch.autograd.backward, not torch.autograd.grad; use "
                "non_reentrant_checkpoint for torch.autograd.grad"
            )
        with _boundary(ctx.name, "recompute"):
            args = _storage.restore_args(ctx.saved, ctx.saved_tensors, ctx.plan)
            tracker = _rng.get_cuda_rng_tracker()
            now, now_streams = _rng.capture(ctx.devices), tracker.get_states()
            _rng.restore(ctx.rng)
            tracker.set_states(ctx.streams)
            try:
                with torch.enable_grad():
                    out = _outputs(ctx.function(*args))
            finally:
                _rng.restore(now)
                tracker.set_states(now_streams)
            pairs = [
                (o, g)
                for o, g in zip(out, grads)
                if isinstance(o, torch.Tensor) and o.requires_grad and g is not None
            ]
            if pairs:
                torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
            if ctx.slots is not None:
                ctx.slots.release(ctx.slot)
        arg_grads = tuple(a.grad if isinstance(a, torch.Tensor) else None for a in args)
        return (None, None, *arg_grads)


def checkpoint(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)``, keeping only its inputs for backward, where it runs again.

    Saves memory by recomputing activations (DeepSpeed's ``deepspeed.checkpointing.
    checkpoint``): the inputs are kept as :func:`configure` says (partitioned across
    model-parallel ranks, in CPU memory, in a contiguous buffer); dropout draws the same
    masks in both runs, including in streams of :func:`get_cuda_rng_tracker`. Non-tensor
    arguments pass through; the function may return a tensor or a tuple (non-tensor items
    included). Under ``torch.no_grad()`` the function simply runs.

    Args:
        function: what to run; its parameters get gradients as if it ran normally.
        *args: its positional arguments.

    Returns:
        What ``function`` returns.
    """
    if not torch.is_grad_enabled():
        with _boundary(_profile.function_name(function), "forward"):
            return function(*args)
    anchor = torch.empty(0, requires_grad=True)
    return CheckpointFunction.apply(function, anchor, *args)


def non_reentrant_checkpoint(function: Callable[..., Any], *args: Any) -> Any:
    """:func:`checkpoint` on torch's non-reentrant checkpoint (``use_reentrant=False``): it
    also works with ``torch.autograd.grad`` and keyword-free nested checkpoints.

    The random states, the tracker's streams, ``synchronize`` and ``profile`` are honoured
    as by :func:`checkpoint`; torch keeps the inputs itself, so the storage options
    (``partition_activations``, ``cpu_checkpointing``, ``contiguous_memory_optimization``)
    are refused rather than ignored: use :func:`checkpoint` for those.

    Raises:
        NotImplementedError: a storage option is configured.
    """
    s = _settings.settings()
    if s.partition_activations or s.cpu_checkpointing or s.contiguous_memory_optimization:
        raise NotImplementedError(
            "non_reentrant_checkpoint keeps inputs as torch does: partition_activations, "
            "cpu_checkpointing and contiguous_memory_optimization need "
            "zero_core.checkpointing.checkpoint"
        )
    name = _profile.function_name(function)
    tracker = _rng.get_cuda_rng_tracker()
    streams = tracker.get_states()

    def contexts() -> tuple[Any, Any]:
        return contextlib.nullcontext(), _Recompute(name, streams)

    with _boundary(name, "forward"):
        return torch.utils.checkpoint.checkpoint(
            function, *args, use_reentrant=False, context_fn=contexts, preserve_rng_state=True
        )


class _Recompute:
    """Around torch's recomputation: the tracker's streams as forward found them, and the
    recompute boundary."""

    def __init__(self, name: str, streams: dict[str, _rng.RNGState]) -> None:
        self.name = name
        self.streams = streams

    def __enter__(self) -> None:
        tracker = _rng.get_cuda_rng_tracker()
        self.now = tracker.get_states()
        tracker.set_states(self.streams)
        self.bound = _boundary(self.name, "recompute")
        self.bound.__enter__()

    def __exit__(self, *exc: Any) -> None:
        # torch ends a recomputation early by raising once it has every tensor it needs:
        # that is the normal end, and is timed as one
        self.bound.__exit__(None, None, None)
        _rng.get_cuda_rng_tracker().set_states(self.now)

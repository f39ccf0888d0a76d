"""``get_model_profile``: profile one forward (or forward + backward) of a model."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from ._format import macs_to_string, number_to_string, params_to_string
from ._profiler import FlopsProfiler
from ._sync import accelerator_synchronizer

__all__ = ["get_model_profile"]

_MODES = ("forward", "train")


def _input_from_shape(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    """A tensor of ones shaped ``input_shape``, with the dtype and device of the model's first
    floating-point parameter (float32 on the CPU for a model without one)."""
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = first.dtype if first is not None else torch.float32
    device = first.device if first is not None else torch.device("cpu")
    return torch.ones(tuple(input_shape), dtype=dtype, device=device)


def _scalar_loss(output: Any) -> torch.Tensor:
    """A scalar to call ``backward()`` on: the sum of every floating-point output that
    requires grad. Its own flops are counted outside the model."""
    tensors = [t for t in tree_leaves(output) if isinstance(t, torch.Tensor) and t.requires_grad]
    if not tensors:
        raise ValueError(
            'mode="train" needs the model to return at least one tensor that requires grad'
        )
    return sum((t.float().sum() for t in tensors[1:]), tensors[0].float().sum())


@contextlib.contextmanager
def _grads_restored(model: nn.Module):
    """Put every parameter's ``.grad`` back as it was (backward in train mode writes it).

    Existing gradients are set aside, not just remembered: backward accumulates into an
    existing ``.grad`` in place, so the profiled passes start from ``None`` and the saved
    tensors are never touched.
    """
    saved = [(p, p.grad) for p in model.parameters()]
    for p, _ in saved:
        p.grad = None
    try:
        yield
    finally:
        for p, grad in saved:
            p.grad = grad


def get_model_profile(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    print_profile: bool = True,
    detailed: bool = True,
    module_depth: int = -1,
    top_modules: int = 1,
    warm_up: int = 1,
    as_string: bool = True,
    output_file: str | None = None,
    ignore_modules: Iterable[type[nn.Module]] | None = None,
    mode: Literal["forward", "train"] = "forward",
    *,
    peak_flops: float | None = None,
) -> tuple[int | str, int | str, int | str]:
    """Profile one pass of ``model`` and return its forward ``(flops, macs, params)``.

    ``mode="forward"`` runs the forward under ``torch.no_grad()``. ``mode="train"`` runs it
    with autograd, then calls ``backward()`` on the sum of the outputs that require grad,
    and reports the backward pass's *measured* flops and latency next to the forward's.
    Parameters' ``.grad`` are restored afterwards, so the model is left as it was. The
    model's train/eval mode is not changed.

    Args:
        model: the model.
        input_shape: call the model with one tensor of ones of this shape (dtype and device
            of the model's parameters). Mutually exclusive with ``args``.
        args: positional arguments for the model.
        kwargs: keyword arguments for the model.
        print_profile: print the report.
        detailed: include the per-module tree in the report.
        module_depth: deepest module level in the report; -1 for all.
        top_modules: modules per depth in the aggregated part of the report.
        warm_up: passes run before the profiled one (not counted), for steady latencies.
        as_string: return human-readable strings (``"26.85 G"``) instead of numbers.
        output_file: write the report to this file instead of stdout.
        ignore_modules: module classes whose work is not counted.
        mode: ``"forward"`` or ``"train"``.
        peak_flops: hardware peak FLOPS for the MFU line (see :class:`FlopsProfiler`).

    Returns:
        ``(flops, macs, params)`` of the forward pass: ints, or strings with ``as_string``.

    Raises:
        ValueError: if both or neither of ``input_shape`` and ``args``/``kwargs`` are given,
            or ``mode``/``warm_up`` is invalid. Errors raised by the model propagate; the
            profiler is cleaned up first.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if input_shape is not None and (args is not None or kwargs is not None):
        raise ValueError("give either input_shape or args/kwargs, not both")
    if input_shape is None and args is None and kwargs is None:
        raise ValueError("give input_shape, or args and/or kwargs to call the model with")
    if not isinstance(warm_up, int) or warm_up < 0:
        raise ValueError(f"warm_up must be a non-negative int, got {warm_up!r}")
    if input_shape is not None:
        if not all(isinstance(d, int) and d > 0 for d in input_shape):
            raise ValueError(f"input_shape must be positive ints, got {tuple(input_shape)!r}")
        call_args: tuple = (_input_from_shape(model, input_shape),)
        batch_size: int | None = int(input_shape[0]) if len(input_shape) else None
    else:
        call_args = tuple(args or ())
        batch_size = None  # the profiler reads it from the first tensor the model gets
    call_kwargs = dict(kwargs or {})
    train = mode == "train"
    sync = accelerator_synchronizer()

    def one_pass() -> float | None:
        """Run the model once; return the backward latency in train mode."""
        with torch.enable_grad() if train else torch.no_grad():
            output = model(*call_args, **call_kwargs)
        if not train:
            return None
        loss = _scalar_loss(output)
        sync()
        start = time.perf_counter()
        loss.backward()
        sync()
        return time.perf_counter() - start

    prof = FlopsProfiler(model, peak_flops=peak_flops, batch_size=batch_size)
    with _grads_restored(model) if train else contextlib.nullcontext():
        for _ in range(warm_up):
            one_pass()
        if train:  # the profiled backward starts from no gradients, like a fresh step
            for p in model.parameters():
                p.grad = None
        prof.start_profile(ignore_list=ignore_modules)
        try:
            bwd_latency = one_pass()
            prof.stop_profile()
            if bwd_latency is not None:
                prof.set_iteration_latencies(backward=bwd_latency)
            if print_profile:
                prof.print_model_profile(
                    profile_step=warm_up,
                    module_depth=module_depth,
                    top_modules=top_modules,
                    detailed=detailed,
                    output_file=output_file,
                )
            flops = prof.get_total_flops()
            macs = prof.get_total_macs()
            params = prof.get_total_params()
        finally:
            prof.end_profile()
    if as_string:
        return number_to_string(flops), macs_to_string(macs), params_to_string(params)
    return flops, macs, params

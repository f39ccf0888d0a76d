"""What the three 1-bit optimizers share: arguments, their own communication, state dicts.

[Note: the optimizer communicates, not the engine]
A 1-bit optimizer is handed each rank's *local* gradients and does all the data-parallel
communication itself: a full-precision average of the gradients during warm-up, a 1-bit
compressed average of momentum (or of the accumulated update) afterwards. An engine that
averaged gradients first would double the work during warm-up and, after it, waste the
whole saving, so the class attribute ``communicates_gradients = True`` tells an engine to
leave gradients alone. The optimizer replicates params and states on every rank, so it
combines only with ZeRO stage 0 (``supported_zero_stages``). Every rank must call
``step()`` with gradients for the same params. ``p.grad`` is never modified.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch

from .._validate import check_betas, check_nonnegative, refuse_amsgrad
from ._collective import CompressedAllreduce
from ._comm import CommCounter, CommGroup

__all__ = ["OnebitOptimizer", "check_positive_int"]

_EXTRA_KEY = "onebit"


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """An int >= ``minimum``; the error names the argument."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class OnebitOptimizer(torch.optim.Optimizer):
    """Base of :class:`OnebitAdam`, :class:`ZeroOneAdam` and :class:`OnebitLamb`.

    See [Note: the optimizer communicates, not the engine].
    """

    communicates_gradients: ClassVar[bool] = True
    """The engine must not average gradients for this optimizer; it does its own
    communication."""
    supported_zero_stages: ClassVar[tuple[int, ...]] = (0,)
    """ZeRO stages an engine may combine it with: 0 only (params and states replicated)."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
        *,
        amsgrad: bool,
        cuda_aware: bool,
        comm_backend_name: str,
    ) -> None:
        name = type(self).__name__
        refuse_amsgrad(amsgrad, name, "pass amsgrad=False")
        if not isinstance(cuda_aware, bool):
            raise TypeError(f"cuda_aware must be true or false, got {cuda_aware!r}")
        for key in ("lr", "eps", "weight_decay", "max_grad_norm"):
            if key in defaults:
                defaults[key] = check_nonnegative(key, defaults[key])
        if "betas" in defaults:
            defaults["betas"] = check_betas(defaults["betas"])
        if "bias_correction" in defaults:
            defaults["bias_correction"] = bool(defaults["bias_correction"])
        if "eps_inside_sqrt" in defaults:
            defaults["eps_inside_sqrt"] = bool(defaults["eps_inside_sqrt"])
        self.comm = CommGroup(comm_backend_name, cuda_aware)
        super().__init__(params, defaults)
        self.onebit_step = 0  # steps taken by this optimizer (all params step together)
        self._compressor: CompressedAllreduce | None = None
        self._layout: tuple[tuple[int, int], ...] = ()
        self._pending_errors: dict[str, Any] | None = None

    @property
    def comm_counter(self) -> CommCounter:
        """Bytes this rank has handed to collectives (see :class:`CommCounter`)."""
        return self.comm.counter

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step over every param with a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found = self._params_with_grads()
        if found:
            self.onebit_step += 1
            self._step(found)
        return loss

    def _step(self, found: list[tuple[dict[str, Any], torch.Tensor, tuple[int, int]]]) -> None:
        """The update of step ``self.onebit_step`` (counted from 1) for ``found``:
        ``(group, param, (group index, param index))`` of each param with a gradient."""
        raise NotImplementedError

    # ---- params and gradients -------------------------------------------------------------

    def _params_with_grads(self) -> list[tuple[dict[str, Any], torch.Tensor, tuple[int, int]]]:
        found = []
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError(
                        f"param {pi} of group {gi} has a sparse gradient; "
                        f"{type(self).__name__} supports dense gradients only"
                    )
                found.append((group, p, (gi, pi)))
        return found

    def _average(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Full-precision mean over ranks of each tensor (new tensors; one collective)."""
        if self.comm.world_size == 1 or not tensors:
            return [t.clone() for t in tensors]
        flat = torch.cat([t.reshape(-1).float() for t in tensors])
        return self._split(self.comm.all_reduce_mean(flat), tensors)

    def _compressed_average(
        self, tensors: list[torch.Tensor], layout: tuple[tuple[int, int], ...]
    ) -> list[torch.Tensor]:
        """1-bit mean over ranks (see [Note: compressed allreduce]); the identity with one
        rank, where there is nothing to communicate."""
        if self.comm.world_size == 1 or not tensors:
            return [t.clone() for t in tensors]
        flat = torch.cat([t.reshape(-1).float() for t in tensors])
        if self._compressor is None or layout != self._layout:
            # A new set of params: error buffers of another layout mean nothing for it.
            self._compressor = CompressedAllreduce(flat.numel(), self.comm, flat.device)
            self._layout = layout
            if self._pending_errors is not None and tuple(
                map(tuple, self._pending_errors["layout"])
            ) == tuple(layout):
                self._compressor.load_state_dict(self._pending_errors["errors"])
            self._pending_errors = None
        return self._split(self._compressor(flat), tensors)

    @staticmethod
    def _split(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
        out, offset = [], 0
        for t in like:
            out.append(flat[offset : offset + t.numel()].view_as(t).to(t.dtype))
            offset += t.numel()
        return out

    @staticmethod
    def _clip(grads: list[torch.Tensor], max_grad_norm: float) -> list[torch.Tensor]:
        """Scale ``grads`` down so their joint L2 norm is at most ``max_grad_norm`` (> 0)."""
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads])
        )
        clip = torch.where(norm > max_grad_norm, max_grad_norm / norm, 1.0)
        return [g * clip.to(g.device) for g in grads]

    # ---- state dicts ----------------------------------------------------------------------

    def _extra_state(self) -> dict[str, Any]:
        """Optimizer-wide state of a subclass (step counters, schedules)."""
        return {}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        """Restore what :meth:`_extra_state` returned."""

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus an ``"onebit"`` entry: the step count, the phase
        schedule and this rank's error-feedback buffers (they differ between ranks, so save
        one state dict per rank)."""
        state = super().state_dict()
        errors = None
        if self._compressor is not None:
            errors = {"layout": list(self._layout), "errors": self._compressor.state_dict()}
        elif self._pending_errors is not None:
            errors = self._pending_errors
        state[_EXTRA_KEY] = {
            "step": self.onebit_step,
            "compressor": errors,
            **self._extra_state(),
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict`, or a torch Adam/AdamW one (which
        starts this optimizer's phase schedule at its own step count).

        Error buffers saved with another world size or param set are dropped (error
        feedback restarts from zero)."""
        state_dict = dict(state_dict)
        extra = state_dict.pop(_EXTRA_KEY, None)
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
            refuse_amsgrad(group.get("amsgrad", False), type(self).__name__, "pass amsgrad=False")
        self._compressor, self._layout = None, ()
        if extra is None:
            steps = [float(s["step"]) for s in self.state.values() if "step" in s]
            self.onebit_step = int(max(steps, default=0))
            self._pending_errors = None
            self._load_extra_state({})
            return
        self.onebit_step = int(extra["step"])
        errors = extra.get("compressor")
        if errors is not None and errors["errors"]["world"] != self.comm.world_size:
            errors = None
        self._pending_errors = errors
        self._load_extra_state(extra)

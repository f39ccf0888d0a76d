"""What the three 1-bit optimizers share: arguments, the pieces of a step (full-precision
AdamW warm-up, 1-bit momentum, Adam's denominator), their own communication, state dicts.

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

from .._validate import adam_family_defaults, refuse_amsgrad
from ._collective import CompressedAllreduce
from ._comm import CommCounter, CommGroup

__all__ = [
    "Found",
    "OnebitOptimizer",
    "adam_denom",
    "adamw_update",
    "bias_correction1",
    "check_positive_int",
]

_EXTRA_KEY = "onebit"

Found = list[tuple[dict[str, Any], torch.Tensor, tuple[int, int]]]
"""``(group, param, (group index, param index))`` of each param with a gradient."""


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """An int >= ``minimum``; the error names the argument."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def adam_denom(
    group: dict[str, Any], v: torch.Tensor, var_step: float, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``sqrt(v / c2) + eps`` (or ``sqrt(v / c2 + eps)``) as torch's single-tensor Adam
    computes it, ``c2`` the bias correction after ``var_step`` variance updates; written
    into ``out`` when given (a scratch buffer, so a step allocates nothing)."""
    beta2, eps = group["betas"][1], group["eps"]
    c2 = 1 - beta2**var_step if group["bias_correction"] else 1.0
    if group["eps_inside_sqrt"]:
        return torch.div(v, c2, out=out).add_(eps).sqrt_()
    return torch.sqrt(v, out=out).div_(c2**0.5).add_(eps)


def adamw_update(
    group: dict[str, Any], p: torch.Tensor, m: torch.Tensor, denom: torch.Tensor, step: float
) -> None:
    """``p = p * (1 - lr * wd) - lr / c1 * m / denom`` in torch AdamW's order of ops."""
    if group["weight_decay"] != 0:
        p.mul_(1 - group["lr"] * group["weight_decay"])
    p.addcdiv_(m, denom, value=-(group["lr"] / bias_correction1(group, step)))


def bias_correction1(group: dict[str, Any], step: float) -> float:
    """Adam's ``c1 = 1 - beta1^step`` (1 without ``bias_correction``)."""
    return 1 - group["betas"][0] ** step if group["bias_correction"] else 1.0


class OnebitOptimizer(torch.optim.Optimizer):
    """Base of :class:`OnebitAdam`, :class:`ZeroOneAdam` and :class:`OnebitLamb`.

    It holds what they share: the arguments every one of them takes, the step skeleton
    (which params step, the gradients they step on, the per-param state), the two ways of
    averaging over ranks, the 1-bit momentum step and the state dict. A subclass supplies
    ``_step`` (its phases) and may override ``_init_state`` and ``_update_momentum``.

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
        *,
        lr: float,
        bias_correction: bool,
        betas: tuple[float, float],
        eps: float,
        eps_inside_sqrt: bool,
        weight_decay: float,
        max_grad_norm: float,
        amsgrad: bool,
        cuda_aware: bool,
        comm_backend_name: str,
        extra_defaults: dict[str, Any] | None = None,
    ) -> None:
        refuse_amsgrad(amsgrad, type(self).__name__, "pass amsgrad=False")
        if not isinstance(cuda_aware, bool):
            raise TypeError(f"cuda_aware must be true or false, got {cuda_aware!r}")
        defaults = {
            **adam_family_defaults(
                lr=lr,
                bias_correction=bias_correction,
                betas=betas,
                eps=eps,
                eps_inside_sqrt=eps_inside_sqrt,
                weight_decay=weight_decay,
                max_grad_norm=max_grad_norm,
            ),
            **(extra_defaults or {}),
        }
        self.comm = CommGroup(comm_backend_name, cuda_aware)
        super().__init__(params, defaults)
        self.onebit_step = 0  # steps taken by this optimizer (all params step together)
        self._compressor: CompressedAllreduce | None = None
        self._layout: tuple[tuple[int, int], ...] = ()
        self._pending_errors: dict[str, Any] | None = None
        self._scratch: list[torch.Tensor] = []  # 1D buffers, one per slot of ``_scratch_like``

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

    def _step(self, found: Found) -> None:
        """The update of step ``self.onebit_step`` (counted from 1) for ``found``."""
        raise NotImplementedError

    # ---- the pieces a step is made of ------------------------------------------------------

    def _init_state(self, state: dict[str, Any], p: torch.Tensor) -> None:
        """Create torch's Adam state for ``p`` if it has none."""
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _begin(self, found: Found) -> list[dict[str, Any]]:
        """Each param's state, created if new, with its step count advanced."""
        states = []
        for _, p, _ in found:
            state = self.state[p]
            self._init_state(state, p)
            state["step"] += 1
            states.append(state)
        return states

    @staticmethod
    def _update_momentum(m: torch.Tensor, g: torch.Tensor, beta1: float) -> None:
        """``m = beta1 * m + (1 - beta1) * g`` in torch Adam's op."""
        m.lerp_(g, 1 - beta1)

    def _gradients(self, found: Found, averaged: bool) -> list[torch.Tensor]:
        """The gradients a step uses: averaged over ranks in fp32 (``averaged``) or this
        rank's own, then each group's scaled to a joint L2 norm of at most its
        ``max_grad_norm`` (when > 0). ``p.grad`` is not modified."""
        grads = [p.grad for _, p, _ in found]
        if averaged:
            grads = self._average(grads)
        out = list(grads)
        for group in {id(g): g for g, _, _ in found}.values():
            if group.get("max_grad_norm", 0) > 0:
                idx = [i for i, (g, _, _) in enumerate(found) if g is group]
                clipped = self._clip([out[i] for i in idx], group["max_grad_norm"])
                for i, c in zip(idx, clipped):
                    out[i] = c
        return out

    def _adamw_warmup(self, found: Found, var_step: str = "step") -> None:
        """A full-precision AdamW step on the gradients averaged over ranks, op for op as
        ``torch.optim.AdamW(foreach=False)`` computes it. The variance's bias correction
        counts ``state[var_step]`` updates (advanced here unless it is ``"step"``)."""
        grads = self._gradients(found, averaged=True)
        for (group, p, _), g, state in zip(found, grads, self._begin(found)):
            if var_step != "step":
                state[var_step] += 1
            if group["weight_decay"] != 0:
                p.mul_(1 - group["lr"] * group["weight_decay"])
            beta1, beta2 = group["betas"]
            self._update_momentum(state["exp_avg"], g, beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
            v = state["exp_avg_sq"]
            denom = adam_denom(group, v, float(state[var_step]), self._scratch_like(p))
            step = state["step"].item()
            p.addcdiv_(
                state["exp_avg"], denom, value=-(group["lr"] / bias_correction1(group, step))
            )

    def _onebit_momentum(self, found: Found, tag: tuple[tuple[int, int], ...] = ()) -> None:
        """1-bit Adam's communication: each rank moves its momentum with its own gradient,
        then every rank's momentum becomes the compressed mean of all of them
        ([Note: compressed allreduce]); ``tag`` keeps the error buffers of different
        quantities apart."""
        grads = self._gradients(found, averaged=False)
        momenta = []
        for (group, _, _), g, state in zip(found, grads, self._begin(found)):
            self._update_momentum(state["exp_avg"], g, group["betas"][0])
            momenta.append(state["exp_avg"])
        layout = (*tag, *(key for _, _, key in found))
        for m, avg in zip(momenta, self._compressed_average(momenta, layout)):
            m.copy_(avg)

    def _scratch_like(self, p: torch.Tensor, slot: int = 0) -> torch.Tensor:
        """A buffer shaped like ``p`` whose contents are undefined and which the next call
        with the same ``slot`` reuses: room for the temporaries of a step (a denominator, a
        ratio) without allocating them every step. Distinct slots never share memory."""
        while len(self._scratch) <= slot:
            self._scratch.append(torch.empty(0))
        buf = self._scratch[slot]
        if buf.numel() < p.numel() or buf.dtype != p.dtype or buf.device != p.device:
            numel = max(p.numel(), buf.numel() if buf.device == p.device else 0)
            buf = self._scratch[slot] = torch.empty(numel, dtype=p.dtype, device=p.device)
        return buf[: p.numel()].view_as(p)

    # ---- params, gradients and communication ----------------------------------------------

    def _params_with_grads(self) -> Found:
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
        if self._compressor is None or layout != self._layout:
            # A new set of params: error buffers of another layout mean nothing for it.
            numel = sum(t.numel() for t in tensors)
            self._compressor = CompressedAllreduce(numel, self.comm, tensors[0].device)
            self._layout = layout
            if self._pending_errors is not None and tuple(
                map(tuple, self._pending_errors["layout"])
            ) == tuple(layout):
                self._compressor.load_state_dict(self._pending_errors["errors"])
            self._pending_errors = None
        return self._split(self._compressor([t.reshape(-1) for t in tensors]), tensors)

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

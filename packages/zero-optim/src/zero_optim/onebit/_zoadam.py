"""ZeroOneAdam: 0/1 Adam, adaptive variance freezing and 1-bit synchronization with local steps.

[Note: 0/1 Adam's schedule]
Step ``t`` (counted from 1) is one of three kinds:

* **variance step** (``t <= var_freeze_step`` and ``t`` is the next scheduled variance
  update): gradients are averaged in fp32 and the step is exactly AdamW's (warm-up). The
  first variance step is step 1; the interval between them starts at 1 and doubles after
  every ``var_update_scaler`` of them, so the variance is refreshed ever more rarely.
* **1-bit step** (``t <= var_freeze_step``, not a variance step): 1-bit Adam's compression
  step ([Note: 1-bit Adam's two phases]) with the variance as last refreshed, its bias
  correction counting variance updates only.
* **local step** (``t > var_freeze_step``, variance frozen for good): each rank moves its
  params with its own momentum and no communication, accumulating the update it applied.
  Every ``H`` steps the ranks synchronize: the accumulated updates are averaged 1-bit
  ([Note: compressed allreduce]), every rank sets its params to the last synchronized params
  (decayed by ``weight_decay``) minus that average, and momentum is rebuilt from it
  (``m = avg * (sqrt(v / c2) + eps) / sum_k (lr_k / c1_k)``) so that it, too, is the same on
  every rank. ``H`` starts at 1 and doubles every ``local_step_scaler`` steps, up to
  ``local_step_clipper``; with a decaying learning rate, the longer intervals come where
  steps are small.

The error buffers of one kind of step are not reused by the other (they compress different
quantities).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ._base import (
    Found,
    OnebitOptimizer,
    adam_denom,
    adamw_update,
    bias_correction1,
    check_positive_int,
)

__all__ = ["ZeroOneAdam"]

_MOMENTUM, _UPDATE = (-1, 0), (-1, 1)  # layout tags: which quantity the compressor carries


class ZeroOneAdam(OnebitOptimizer):
    """0/1 Adam (Lu et al. 2022) with DeepSpeed's ``ZeroOneAdam`` arguments.

    Give it each rank's local gradients (see [Note: the optimizer communicates, not the
    engine] and [Note: 0/1 Adam's schedule]).

    Args:
        params: params or param groups.
        lr: learning rate.
        bias_correction: Adam's bias corrections.
        betas: coefficients of the running averages, each in [0, 1).
        eps: added to the denominator.
        eps_inside_sqrt: ``sqrt(v_hat + eps)`` instead of ``sqrt(v_hat) + eps``.
        weight_decay: decoupled (AdamW) weight decay.
        max_grad_norm: when > 0, each group's gradients (averaged on variance steps, local
            otherwise) are scaled to a joint L2 norm of at most this.
        var_freeze_step: the last step that may update the variance; at least 1.
        var_update_scaler: variance updates between doublings of their interval.
        local_step_scaler: steps between doublings of the local-step interval.
        local_step_clipper: the longest local-step interval.
        amsgrad: not implemented; ``True`` raises.
        cuda_aware: see :class:`OnebitAdam`.
        comm_backend_name: see :class:`OnebitAdam`.

    State per param: ``step``, ``exp_avg``, ``exp_avg_sq``, ``var_step`` (variance
    updates), and after ``var_freeze_step`` ``anchor`` (params at the last
    synchronization), ``local_update``, ``local_scale``, ``local_decay``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        bias_correction: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        eps_inside_sqrt: bool = False,
        weight_decay: float = 0.0,
        max_grad_norm: float = 0.0,
        var_freeze_step: int = 100000,
        var_update_scaler: int = 16,
        local_step_scaler: int = 32678,
        local_step_clipper: int = 16,
        amsgrad: bool = False,
        cuda_aware: bool = False,
        comm_backend_name: str = "nccl",
    ) -> None:
        self.var_freeze_step = check_positive_int("var_freeze_step", var_freeze_step)
        self.var_update_scaler = check_positive_int("var_update_scaler", var_update_scaler)
        self.local_step_scaler = check_positive_int("local_step_scaler", local_step_scaler)
        self.local_step_clipper = check_positive_int("local_step_clipper", local_step_clipper)
        super().__init__(
            params,
            lr=lr,
            bias_correction=bias_correction,
            betas=betas,
            eps=eps,
            eps_inside_sqrt=eps_inside_sqrt,
            weight_decay=weight_decay,
            max_grad_norm=max_grad_norm,
            amsgrad=amsgrad,
            cuda_aware=cuda_aware,
            comm_backend_name=comm_backend_name,
        )
        self._load_extra_state({})

    def _extra_state(self) -> dict[str, Any]:
        return {
            "var_interval": self.var_interval,
            "next_var_update": self.next_var_update,
            "var_updates": self.var_updates,
            "local_count": self.local_count,
        }

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self.var_interval: int = extra.get("var_interval", 1)  # steps between variance steps
        self.next_var_update: int = extra.get("next_var_update", 1)  # step number
        self.var_updates: int = extra.get("var_updates", 0)
        self.local_count: int = extra.get("local_count", 0)  # local steps since last sync
        if "var_interval" not in extra and self.onebit_step:
            # A torch Adam checkpoint: as if every step so far had been a variance step.
            self.var_updates = self.onebit_step
            self.var_interval = 2 ** (self.onebit_step // self.var_update_scaler)
            self.next_var_update = self.onebit_step + 1

    def local_interval(self, step: int) -> int:
        """Local steps between synchronizations at ``step`` (> ``var_freeze_step``)."""
        doublings = (step - self.var_freeze_step - 1) // self.local_step_scaler
        return min(2 ** min(doublings, 62), self.local_step_clipper)

    def _init_state(self, state: dict[str, Any], p: torch.Tensor) -> None:
        super()._init_state(state, p)
        state.setdefault("var_step", 0)

    def _step(self, found: Found) -> None:
        t = self.onebit_step
        if t <= self.var_freeze_step and t >= self.next_var_update:
            self._adamw_warmup(found, var_step="var_step")
            self.var_updates += 1
            if self.var_updates % self.var_update_scaler == 0:
                self.var_interval *= 2
            self.next_var_update = t + self.var_interval
        elif t <= self.var_freeze_step:
            self._onebit_momentum(found, tag=(_MOMENTUM,))
            for group, p, _ in found:
                state = self.state[p]
                denom = adam_denom(
                    group, state["exp_avg_sq"], state["var_step"], self.scratch_like(p)
                )
                adamw_update(group, p, state["exp_avg"], denom, state["step"].item())
        else:
            self._local_step(found, t)

    def _local_step(self, found: Found, t: int) -> None:
        grads = self._gradients(found, averaged=False)
        for (group, p, _), g, state in zip(found, grads, self._begin(found)):
            if "anchor" not in state:
                state["anchor"] = p.detach().clone()
                state["local_update"] = torch.zeros_like(p)
                state["local_scale"] = torch.tensor(0.0)
                state["local_decay"] = torch.tensor(1.0)
            lr, wd = group["lr"], group["weight_decay"]
            self._update_momentum(state["exp_avg"], g, group["betas"][0])
            c1 = bias_correction1(group, state["step"].item())
            denom = adam_denom(group, state["exp_avg_sq"], state["var_step"], self.scratch_like(p))
            applied = (state["exp_avg"] / denom).mul_(lr / c1)
            if wd != 0:
                p.mul_(1 - lr * wd)
                state["local_decay"] *= 1 - lr * wd
            p.sub_(applied)
            state["local_update"].add_(applied)
            state["local_scale"] += lr / c1
        self.local_count += 1
        if self.local_count < self.local_interval(t):
            return
        self.local_count = 0
        updates = [self.state[p]["local_update"] for _, p, _ in found]
        layout = (_UPDATE, *(key for _, _, key in found))
        for (group, p, _), avg in zip(found, self._compressed_average(updates, layout)):
            state = self.state[p]
            p.copy_(state["anchor"] * state["local_decay"].to(p.dtype) - avg)
            scale = state["local_scale"].item()
            if scale > 0:
                denom = adam_denom(
                    group, state["exp_avg_sq"], state["var_step"], self.scratch_like(p)
                )
                state["exp_avg"].copy_(avg * denom / scale)
            state["anchor"].copy_(p)
            state["local_update"].zero_()
            state["local_scale"].zero_()
            state["local_decay"].fill_(1.0)

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
  momentum with its own gradient and its params with that momentum, without communicating,
  and accumulates the optimizer state the paper synchronizes, ``u = sum_k (lr_k / c1_k) *
  m_k`` (momentum, not the parameter change: see [Note: what 0/1 Adam synchronizes]). Every
  ``H`` steps the ranks synchronize: ``u`` is averaged 1-bit ([Note: compressed
  allreduce]), every rank sets its params to the last synchronized params (decayed by
  ``weight_decay``) minus ``avg(u) / (sqrt(v / c2) + eps)``, and its momentum to ``avg(u) /
  sum_k (lr_k / c1_k)``, so both are the same on every rank again. ``H`` starts at 1 and
  doubles every ``local_step_scaler`` steps, up to ``local_step_clipper``: the tutorial's
  learning-rate-based policy, where ``local_step_scaler`` is the number of steps in which
  the learning rate halves, so ``lr * H`` stays about constant. The tutorial's other
  policy, a constant ``H``, is ``local_step_scaler=1, local_step_clipper=H``.

[Note: what 0/1 Adam synchronizes]
With one rank, averaging ``u`` and averaging the parameter change ``sum_k (lr_k / c1_k) *
m_k / denom`` give the same result, since ``denom`` is frozen and the same on every rank. With
several, the 1-bit average is not: it keeps a sign and one scale per block of 256 values.
Compressing ``u`` keeps each element's own ``denom`` out of the compression, as 1-bit Adam
does with its momentum, and the decoded momentum is then divided by ``denom``; compressing
the parameter change instead gives every element of a block the same step size whatever its
variance, and the momentum rebuilt from it (multiplied back by ``denom``) is then far off.
On bench/onebit.py's task (then run at a constant learning rate, local steps after step
150), synchronizing the parameter change, as this module once did, left the final loss 19%
above AdamW's; synchronizing ``u`` put it 11% below.

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

_MOMENTUM, _SUM = (-1, 0), (-1, 1)  # layout tags: which quantity the compressor carries


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
    synchronization), ``momentum_sum`` (``u``), ``local_scale`` (``sum_k lr_k / c1_k``) and
    ``local_decay`` (the weight decay factor since the last synchronization).
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
                    group, state["exp_avg_sq"], state["var_step"], self._scratch_like(p)
                )
                adamw_update(group, p, state["exp_avg"], denom, state["step"].item())
        else:
            self._local_step(found, t)

    def _local_step(self, found: Found, t: int) -> None:
        grads = self._gradients(found, averaged=False)
        for (group, p, _), g, state in zip(found, grads, self._begin(found)):
            if "anchor" not in state:
                state["anchor"] = p.detach().clone()
                state["momentum_sum"] = torch.zeros_like(p)
                state["local_scale"] = torch.tensor(0.0)
                state["local_decay"] = torch.tensor(1.0)
            lr, wd = group["lr"], group["weight_decay"]
            self._update_momentum(state["exp_avg"], g, group["betas"][0])
            lr_t = lr / bias_correction1(group, state["step"].item())
            denom = adam_denom(group, state["exp_avg_sq"], state["var_step"], self._scratch_like(p))
            if wd != 0:
                p.mul_(1 - lr * wd)
                state["local_decay"] *= 1 - lr * wd
            p.addcdiv_(state["exp_avg"], denom, value=-lr_t)
            state["momentum_sum"].add_(state["exp_avg"], alpha=lr_t)
            state["local_scale"] += lr_t
        self.local_count += 1
        if self.local_count < self.local_interval(t):
            return
        self.local_count = 0
        sums = [self.state[p]["momentum_sum"] for _, p, _ in found]
        layout = (_SUM, *(key for _, _, key in found))
        for (group, p, _), avg in zip(found, self._compressed_average(sums, layout)):
            state = self.state[p]
            denom = adam_denom(group, state["exp_avg_sq"], state["var_step"], self._scratch_like(p))
            torch.mul(state["anchor"], state["local_decay"].to(p.dtype), out=p)
            p.addcdiv_(avg, denom, value=-1.0)
            scale = state["local_scale"].item()
            if scale > 0:
                torch.div(avg, scale, out=state["exp_avg"])
            state["anchor"].copy_(p)
            state["momentum_sum"].zero_()
            state["local_scale"].zero_()
            state["local_decay"].fill_(1.0)

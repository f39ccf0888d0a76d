"""OnebitLamb: LAMB warm-up in full precision, then frozen variance, frozen trust ratio and
1-bit momentum.

[Note: 1-bit LAMB's two phases]
Steps ``1 .. freeze_step`` are :class:`zero_optim.FusedLamb`'s step, op for op, on the
gradients averaged over ranks in fp32, and each param also keeps a running average of its
trust ratio: ``ema = coeff_beta * ema + (1 - coeff_beta) * trust`` (the first step sets
``ema = trust``). After warm-up the variance ``v`` and the trust ratio ``ema`` are frozen and
each step is

    m_prev = m
    m = compressed_mean_over_ranks(beta1 * m + (1 - beta1) * g_local)
    g_hat = (m - beta1 * m_prev) / (1 - beta1)          (the averaged gradient m implies)
    v_fresh = beta2 * v_fresh + (1 - beta2) * g_hat^2   (v_fresh starts as v)
    factor = max(denom(v) / denom(v_fresh))             (elementwise, over the tensor)
    factor = clamp(factor, factor_min, factor_max)
    factor = clamp(factor, (1 - factor_threshold) * last, (1 + factor_threshold) * last)
    p = p - lr * ema * factor * (m_hat / denom(v) + weight_decay * p)

``factor`` lets the frozen step grow where the gradients' real variance has fallen below
the frozen one, within bounds and by at most ``factor_threshold`` per step (``last`` is the
previous step's factor, 1 at first). ``min_coeff``/``max_coeff`` bound the trust ratio of
warm-up only.

[Note: the factor of small tensors]
``g_hat`` is rebuilt from compressed momenta, so it carries their compression error divided
by ``1 - beta1`` (10x): on several ranks ``v_fresh`` overestimates the variance of every
element, the more so the noisier the 1-bit momentum. ``factor`` is a maximum over the
tensor's elements, so a large tensor still finds elements whose ratio says "grow"; a small
one (a bias, a LayerNorm weight) may find none and sits at ``factor_min`` for good. In
bench/onebit.py's 321-param model the 32- and 1-element tensors do exactly that on 2 ranks,
while on one rank (nothing compressed) their factor climbs to 2.8 and 1.5 like the others',
and the final loss ends 22% above FusedLamb's (1% on one rank; 3% on 2 ranks with
``factor_min=1``, a diagnosis, not a recommended setting). DeepSpeed's 1-bit LAMB computes
the factor the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .._validate import check_nonnegative
from ._base import Found, OnebitOptimizer, bias_correction1, check_positive_int

__all__ = ["OnebitLamb"]


def _norm(tensor: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(tensor, dtype=torch.float32)


def _denom(
    group: dict[str, Any], v: torch.Tensor, var_step: float, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``sqrt(v / c2) + eps`` (or ``sqrt(v / c2 + eps)``) in FusedLamb's order of ops, ``c2``
    the bias correction after ``var_step`` variance updates; into ``out`` when given."""
    c2 = 1 - group["betas"][1] ** var_step if group["bias_correction"] else 1.0
    v_hat = torch.div(v, c2, out=out)
    if group["eps_inside_sqrt"]:
        return v_hat.add_(group["eps"]).sqrt_()
    return v_hat.sqrt_().add_(group["eps"])


class OnebitLamb(OnebitOptimizer):
    """1-bit LAMB (Li et al. 2021) with DeepSpeed's ``OneBitLamb`` arguments.

    Give it each rank's local gradients (see [Note: the optimizer communicates, not the
    engine] and [Note: 1-bit LAMB's two phases]).

    Args:
        params: params or param groups.
        lr: learning rate.
        freeze_step: full-precision warm-up steps; at least 1.
        bias_correction: Adam's bias corrections of the moments.
        betas: coefficients of the running averages, each in [0, 1).
        eps: added to the denominator.
        eps_inside_sqrt: ``sqrt(v_hat + eps)`` instead of ``sqrt(v_hat) + eps``.
        weight_decay: added to the update as ``weight_decay * p``.
        max_grad_norm: when > 0, each group's gradients (averaged during warm-up, local
            after) are scaled to a joint L2 norm of at most this.
        max_coeff: upper bound of the warm-up trust ratio.
        min_coeff: lower bound of the warm-up trust ratio.
        amsgrad: not implemented; ``True`` raises.
        cuda_aware: see :class:`OnebitAdam`.
        comm_backend_name: see :class:`OnebitAdam`.
        coeff_beta: coefficient of the trust ratio's running average, in [0, 1).
        factor_max: upper bound of the scaling factor after warm-up.
        factor_min: lower bound of the scaling factor after warm-up.
        factor_threshold: largest relative change of the factor from one step to the next.

    State per param: ``step``, ``exp_avg``, ``exp_avg_sq``, ``lamb_coeff``; after warm-up
    also ``exp_avg_sq_fresh`` and ``lamb_factor``. :meth:`get_lamb_coeffs` returns the
    trust ratios applied by the latest step.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        freeze_step: int = 100000,
        bias_correction: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        eps_inside_sqrt: bool = False,
        weight_decay: float = 0.0,
        max_grad_norm: float = 0.0,
        max_coeff: float = 10.0,
        min_coeff: float = 0.01,
        amsgrad: bool = False,
        cuda_aware: bool = False,
        comm_backend_name: str = "nccl",
        coeff_beta: float = 0.9,
        factor_max: float = 4.0,
        factor_min: float = 0.5,
        factor_threshold: float = 0.1,
    ) -> None:
        self.freeze_step = check_positive_int("freeze_step", freeze_step)
        max_coeff = check_nonnegative("max_coeff", max_coeff)
        min_coeff = check_nonnegative("min_coeff", min_coeff)
        if min_coeff > max_coeff:
            raise ValueError(f"min_coeff must be <= max_coeff, got {min_coeff} > {max_coeff}")
        coeff_beta = check_nonnegative("coeff_beta", coeff_beta)
        if coeff_beta >= 1:
            raise ValueError(f"coeff_beta must be in [0, 1), got {coeff_beta}")
        factor_max = check_nonnegative("factor_max", factor_max)
        factor_min = check_nonnegative("factor_min", factor_min)
        if not 0 < factor_min <= 1 <= factor_max:
            raise ValueError(
                f"need 0 < factor_min <= 1 <= factor_max, got factor_min={factor_min}, "
                f"factor_max={factor_max}"
            )
        factor_threshold = check_nonnegative("factor_threshold", factor_threshold)
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
            extra_defaults={
                "max_coeff": max_coeff,
                "min_coeff": min_coeff,
                "coeff_beta": coeff_beta,
                "factor_max": factor_max,
                "factor_min": factor_min,
                "factor_threshold": factor_threshold,
            },
        )
        self.lamb_coeffs: list[torch.Tensor] = []

    @property
    def frozen(self) -> bool:
        """True once warm-up is over (the next step communicates 1-bit)."""
        return self.onebit_step >= self.freeze_step

    def get_lamb_coeffs(self) -> list[float]:
        """The trust ratios of the latest step, one per updated param, in group order."""
        return [coeff.item() for coeff in self.lamb_coeffs]

    @staticmethod
    def _update_momentum(m: torch.Tensor, g: torch.Tensor, beta1: float) -> None:
        """``m = beta1 * m + (1 - beta1) * g`` in FusedLamb's ops."""
        m.mul_(beta1).add_(g, alpha=1 - beta1)

    def _step(self, found: Found) -> None:
        if self.onebit_step <= self.freeze_step:
            grads = self._gradients(found, averaged=True)
            states = self._begin(found)
            self.lamb_coeffs = [
                self._warmup(group, p, g, state)
                for (group, p, _), g, state in zip(found, grads, states)
            ]
            return
        previous = [self.state[p]["exp_avg"].clone() for _, p, _ in found]
        self._onebit_momentum(found)
        self.lamb_coeffs = [
            self._frozen(group, p, m_prev) for (group, p, _), m_prev in zip(found, previous)
        ]

    def _warmup(
        self, group: dict[str, Any], p: torch.Tensor, g: torch.Tensor, state: dict[str, Any]
    ) -> torch.Tensor:
        (beta1, beta2), lr, wd = group["betas"], group["lr"], group["weight_decay"]
        step = state["step"].item()
        m, v = state["exp_avg"], state["exp_avg_sq"]
        self._update_momentum(m, g, beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        update = (m / bias_correction1(group, step)).div_(_denom(group, v, step))
        if wd:
            update.add_(p, alpha=wd)
        w_norm, u_norm = _norm(p), _norm(update)
        trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, 1.0)
        trust = trust.clamp(group["min_coeff"], group["max_coeff"])
        p.add_(update.mul_(trust * -lr))
        if "lamb_coeff" not in state:
            state["lamb_coeff"] = trust.clone()
        else:
            state["lamb_coeff"].mul_(group["coeff_beta"]).add_(trust, alpha=1 - group["coeff_beta"])
        return trust

    def _frozen(self, group: dict[str, Any], p: torch.Tensor, m_prev: torch.Tensor) -> torch.Tensor:
        """The compression-phase update; ``m_prev`` (a copy of last step's momentum) is
        overwritten."""
        (beta1, beta2), lr, wd = group["betas"], group["lr"], group["weight_decay"]
        state = self.state[p]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if "exp_avg_sq_fresh" not in state:
            state["exp_avg_sq_fresh"] = v.clone()
            state["lamb_factor"] = torch.tensor(1.0)
        step = state["step"].item()
        g_hat = torch.sub(m, m_prev.mul_(beta1), out=m_prev).div_(1 - beta1)
        fresh = state["exp_avg_sq_fresh"]
        fresh.mul_(beta2).addcmul_(g_hat, g_hat, value=1 - beta2)
        denom = _denom(group, v, min(step, self.freeze_step), self._scratch_like(p, 0))
        fresh_denom = _denom(group, fresh, step, self._scratch_like(p, 1))
        factor = torch.div(denom, fresh_denom, out=fresh_denom).max().float()
        last = state["lamb_factor"]
        factor = factor.clamp(group["factor_min"], group["factor_max"])
        threshold = group["factor_threshold"]
        factor = torch.minimum(
            torch.maximum(factor, last * (1 - threshold)), last * (1 + threshold)
        )
        last.copy_(factor)
        coeff = state["lamb_coeff"].float() * factor
        update = torch.div(m, bias_correction1(group, step), out=g_hat).div_(denom)
        if wd:
            update.add_(p, alpha=wd)
        p.add_(update.mul_(coeff * -lr))
        return coeff

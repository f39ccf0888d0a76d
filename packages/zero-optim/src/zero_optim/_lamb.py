"""FusedLamb: LAMB (You et al. 2019) with DeepSpeed's arguments, on PyTorch ops.

Per param group, each step:
    g = grad * min(1, max_grad_norm / ||grads of the group||)   (only when max_grad_norm > 0)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat, v_hat = m / (1 - beta1^t), v / (1 - beta2^t)          (bias correction, optional)
    update = m_hat / (sqrt(v_hat) + eps)    or    m_hat / sqrt(v_hat + eps)  (eps_inside_sqrt)
    update = update + weight_decay * p
    trust = clamp(||p|| / ||update||, min_coeff, max_coeff)     (1 before clamping when
                                                                 either norm is 0)
    p = p - lr * trust * update

Everything is tensor ops (no host synchronisation per tensor), so it runs on CPU and CUDA
alike; norms are accumulated in fp32 whatever the param dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from ._validate import adam_family_defaults, check_nonnegative, refuse_amsgrad

__all__ = ["FusedLamb"]


def _norm(tensor: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(tensor, dtype=torch.float32)


class FusedLamb(torch.optim.Optimizer):
    """DeepSpeed's ``FusedLamb``, implemented with PyTorch ops (CPU and CUDA params).

    Args:
        params: params or param groups.
        lr: learning rate.
        bias_correction: apply Adam's bias correction to the moments.
        betas: coefficients of the running averages, each in [0, 1).
        eps: added to the denominator (outside the square root unless ``eps_inside_sqrt``).
        eps_inside_sqrt: use ``sqrt(v_hat + eps)`` instead of ``sqrt(v_hat) + eps``.
        weight_decay: added to the update as ``weight_decay * p`` before the trust ratio.
        max_grad_norm: when > 0, the group's grads are scaled down so that their global L2
            norm is at most this (the grads themselves are not modified).
        max_coeff: upper bound of the per-tensor trust ratio.
        min_coeff: lower bound of the per-tensor trust ratio.
        amsgrad: not implemented; ``True`` raises.

    The state of each param holds ``step`` (a float32 tensor), ``exp_avg`` and
    ``exp_avg_sq`` (in the param's dtype). :meth:`get_lamb_coeffs` returns the trust ratios
    of the latest step.
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
        max_coeff: float = 10.0,
        min_coeff: float = 0.01,
        amsgrad: bool = False,
    ) -> None:
        refuse_amsgrad(amsgrad, type(self).__name__, "pass amsgrad=False")
        max_coeff = check_nonnegative("max_coeff", max_coeff)
        min_coeff = check_nonnegative("min_coeff", min_coeff)
        if min_coeff > max_coeff:
            raise ValueError(
                f"min_coeff must be <= max_coeff, got min_coeff={min_coeff} > max_coeff={max_coeff}"
            )
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
            "max_coeff": max_coeff,
            "min_coeff": min_coeff,
        }
        super().__init__(params, defaults)
        self.lamb_coeffs: list[torch.Tensor] = []

    def get_lamb_coeffs(self) -> list[float]:
        """The trust ratios of the latest step, one per updated param, in group order."""
        return [coeff.item() for coeff in self.lamb_coeffs]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One LAMB step over every param that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        coeffs: list[torch.Tensor] = []
        for gi, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            for pi, p in enumerate(group["params"]):
                if p.grad is not None and p.grad.is_sparse:
                    raise ValueError(
                        f"param {pi} of group {gi} has a sparse gradient; "
                        f"{type(self).__name__} supports dense gradients only"
                    )
            if params:
                coeffs.extend(self._group_step(group, params))
        self.lamb_coeffs = coeffs
        return loss

    def _group_step(self, group: dict[str, Any], params: list[torch.Tensor]) -> list[torch.Tensor]:
        (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
        wd, max_grad_norm = group["weight_decay"], group["max_grad_norm"]
        grads = [p.grad for p in params]
        if max_grad_norm > 0:
            device = grads[0].device
            norm = _norm(torch.stack([_norm(g).to(device) for g in grads]))
            clip = torch.where(norm > max_grad_norm, max_grad_norm / norm, 1.0)
            grads = [g * clip.to(g.device) for g in grads]  # new tensors; p.grad untouched
        coeffs = []
        for p, g in zip(params, grads):
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            step = state["step"].item()
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.mul_(beta1).add_(g, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            if group["bias_correction"]:
                bias_correction1 = 1 - beta1**step
                bias_correction2 = 1 - beta2**step
            else:
                bias_correction1 = bias_correction2 = 1.0
            v_hat = v / bias_correction2
            denom = v_hat.add_(eps).sqrt_() if group["eps_inside_sqrt"] else v_hat.sqrt_().add_(eps)
            update = (m / bias_correction1).div_(denom)
            if wd:
                update.add_(p, alpha=wd)
            w_norm, u_norm = _norm(p), _norm(update)
            trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, 1.0)
            trust = trust.clamp(group["min_coeff"], group["max_coeff"])
            p.add_(update.mul_(trust * -lr))
            coeffs.append(trust)
        return coeffs

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict; group keys it lacks take the constructor's values."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
            refuse_amsgrad(group.get("amsgrad", False), type(self).__name__, "pass amsgrad=False")

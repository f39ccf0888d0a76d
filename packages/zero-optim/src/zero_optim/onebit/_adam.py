"""OnebitAdam: Adam warm-up in full precision, then frozen variance and 1-bit momentum.

[Note: 1-bit Adam's two phases]
Steps ``1 .. freeze_step`` (warm-up) are AdamW on the gradients averaged over ranks in
fp32, op for op as ``torch.optim.AdamW(foreach=False)`` computes it, so a warm-up run equals
torch's data-parallel AdamW exactly. From step ``freeze_step + 1`` on (compression):

    m = beta1 * m + (1 - beta1) * g_local         (this rank's gradient, not averaged)
    m = compressed_mean_over_ranks(m)            ([Note: compressed allreduce])
    p = p * (1 - lr * weight_decay) - lr / c1 * m / (sqrt(v / c2) + eps)

``v`` is frozen at its value after warm-up and so is its bias correction ``c2 = 1 -
beta2^freeze_step``; ``c1 = 1 - beta1^step`` keeps counting (both 1 without
``bias_correction``). Momentum is the only thing communicated, 1 bit per element, and every
rank decodes the same compressed mean, so params stay identical on all ranks. With one rank
nothing is communicated and nothing is compressed: compression is Adam with a frozen
variance.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ._base import Found, OnebitOptimizer, adam_denom, adamw_update, check_positive_int

__all__ = ["OnebitAdam"]


class OnebitAdam(OnebitOptimizer):
    """1-bit Adam (Tang et al. 2021) with DeepSpeed's ``OneBitAdam`` arguments.

    Give it each rank's local gradients: it averages them itself (see [Note: the optimizer
    communicates, not the engine] and [Note: 1-bit Adam's two phases]). Works with any
    ``torch.distributed`` backend, and without a process group on one rank.

    Args:
        params: params or param groups.
        lr: learning rate.
        freeze_step: full-precision warm-up steps before the variance is frozen and
            momentum is communicated in 1 bit; at least 1.
        bias_correction: Adam's bias corrections.
        betas: coefficients of the running averages, each in [0, 1).
        eps: added to the denominator.
        eps_inside_sqrt: ``sqrt(v_hat + eps)`` instead of ``sqrt(v_hat) + eps``.
        weight_decay: decoupled (AdamW) weight decay.
        max_grad_norm: when > 0, each group's gradients (averaged ones during warm-up,
            local ones after) are scaled to a joint L2 norm of at most this.
        amsgrad: not implemented; ``True`` raises.
        cuda_aware: the backend reads CUDA memory directly (else CUDA tensors are staged
            through host memory for gloo and mpi).
        comm_backend_name: ``torch.distributed`` backend to communicate over: ``"nccl"``,
            ``"gloo"`` or ``"mpi"`` (a group with it is created when the default group uses
            another).

    Raises:
        ValueError, TypeError: an argument out of range or of the wrong type (the message
            names it).

    State per param: torch's ``step``, ``exp_avg``, ``exp_avg_sq``; :meth:`state_dict`
    adds the step count and this rank's error buffers.
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
        amsgrad: bool = False,
        cuda_aware: bool = False,
        comm_backend_name: str = "nccl",
    ) -> None:
        self.freeze_step = check_positive_int("freeze_step", freeze_step)
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

    @property
    def frozen(self) -> bool:
        """True once warm-up is over (the next step communicates 1-bit)."""
        return self.onebit_step >= self.freeze_step

    def _step(self, found: Found) -> None:
        if self.onebit_step <= self.freeze_step:
            self._adamw_warmup(found)
            return
        self._onebit_momentum(found)
        for group, p, _ in found:
            state = self.state[p]
            step = state["step"].item()
            v = state["exp_avg_sq"]
            denom = adam_denom(group, v, min(step, self.freeze_step), self._scratch_like(p))
            adamw_update(group, p, state["exp_avg"], denom, step)

"""The experts of one MoE layer, run as one grouped computation.

[Note: grouped experts]
Each local expert is an independent copy of the user's expert module (so every expert
parameter is its own ``nn.Parameter``, with its own attributes and optimizer state, and
state-dict names ``deepspeed_experts.<i>.<param>`` as in DeepSpeed). The forward does not
loop over them: their parameters are stacked along a new leading dimension and one copy of
the module is run under ``torch.func.vmap`` over ``[experts, capacity, d]``, so a Linear
expert becomes one batched matmul. The stack is part of the autograd graph, so each
expert's gradient lands on its own parameter. ``grouped=False`` runs a plain loop instead
(for expert modules vmap cannot batch).

[Note: expert gradient scale]
With expert parallelism an expert on rank ``r`` computes for the tokens of every rank of its
expert-parallel group, so its local gradient is the *sum* of ``ep_size`` ranks' loss
gradients while a dense parameter's local gradient comes from one rank's loss. The experts
multiply their parameters' gradients by ``1/ep_size`` (an identity in the forward), so that
averaging expert gradients over the expert-data-parallel group and dense gradients over the
world gives exactly the gradient of the world's mean loss. With ``ep_size == 1`` nothing is
scaled.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` (see [Note: expert gradient
    scale])."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def _first(out: Tensor | tuple) -> Tensor:
    # Expert modules that return (output, extra...) contribute their first output.
    return out[0] if isinstance(out, tuple) else out


class Experts(nn.Module):
    """``num_local_experts`` independent copies of ``expert``, run together.

    Args:
        expert: The expert module; deep-copied once per local expert.
        num_local_experts: Experts held by this rank.
        grad_scale: Multiplier of the expert parameters' gradients (``1/ep_size``).
        grouped: Run the experts as one vmapped computation (see [Note: grouped experts]).
    """

    def __init__(
        self,
        expert: nn.Module,
        num_local_experts: int = 1,
        grad_scale: float = 1.0,
        grouped: bool = True,
    ) -> None:
        super().__init__()
        self.deepspeed_experts = nn.ModuleList(
            copy.deepcopy(expert) for _ in range(num_local_experts)
        )
        self.num_local_experts = num_local_experts
        self.grad_scale = grad_scale
        self.grouped = grouped
        # forward() reads the experts' parameters directly (to stack them): declared so an
        # engine that gathers partitioned params per module (zero-core stage 3) gathers
        # them when this module runs
        self.zs_external_params = list(self.deepspeed_experts.parameters())

    def _params(self, i: int) -> dict[str, Tensor]:
        params = dict(self.deepspeed_experts[i].named_parameters())
        if self.grad_scale != 1.0:
            params = {n: _ScaleGrad.apply(p, self.grad_scale) for n, p in params.items()}
        return params

    def forward(self, x: Tensor) -> Tensor:
        """``[num_local_experts, tokens, d]`` -> ``[num_local_experts, tokens, d_out]``."""
        if x.shape[0] != self.num_local_experts:
            raise ValueError(
                f"expected {self.num_local_experts} expert chunks, got shape {tuple(x.shape)}"
            )
        experts = self.deepspeed_experts
        if not self.grouped or self.num_local_experts == 1:
            outs = []
            for i, chunk in enumerate(x):
                call = (
                    experts[i](chunk)
                    if self.grad_scale == 1.0
                    else functional_call(experts[i], self._params(i), (chunk,))
                )
                outs.append(_first(call))
            return torch.stack(outs)
        per_expert = [dict(e.named_parameters()) for e in experts]
        stacked = {n: torch.stack([p[n] for p in per_expert]) for n in per_expert[0]}
        if self.grad_scale != 1.0:
            stacked = {n: _ScaleGrad.apply(p, self.grad_scale) for n, p in stacked.items()}
        per_expert_buffers = [dict(e.named_buffers()) for e in experts]
        buffers = {
            n: torch.stack([b[n] for b in per_expert_buffers]) for n in per_expert_buffers[0]
        }
        template = experts[0]

        def run(params: dict, bufs: dict, chunk: Tensor) -> Tensor:
            return _first(functional_call(template, (params, bufs), (chunk,)))

        return vmap(run, randomness="different")(stacked, buffers, x)

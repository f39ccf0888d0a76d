"""The MoE layer: gate, dispatch, (all-to-all), grouped experts, (all-to-all), combine."""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ._experts import Experts
from ._gating import TopKGate
from ._groups import ExpertGroups, create_expert_and_data_parallel


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` along dim 0 whose backward is the reverse all-to-all."""

    @staticmethod
    def forward(ctx, group: dist.ProcessGroup, x: Tensor) -> Tensor:
        ctx.group = group
        x = x.contiguous()
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor]:
        return None, _AllToAll.apply(ctx.group, grad)


class MOELayer(nn.Module):
    """Gate, dispatch, experts and combine over an expert-parallel group.

    Tokens are flattened to ``[S, d]``; the gate routes them (a :class:`GateOutput`); kept
    choices are copied into a ``[num_experts, capacity, d]`` buffer, which an
    ``all_to_all`` over the expert-parallel group turns into
    ``[num_local_experts, ep_size * capacity, d]`` on the rank holding those experts; the
    experts run as one grouped computation; a second ``all_to_all`` brings results home,
    where each token sums its choices' outputs times their combine weights.

    Args:
        gate: The routing module.
        experts: This rank's experts.
        groups: The expert process groups (``ep_size`` and the all-to-all group).
        num_local_experts: Experts held by this rank.
    """

    def __init__(
        self, gate: TopKGate, experts: Experts, groups: ExpertGroups, num_local_experts: int
    ) -> None:
        super().__init__()
        self.gate = gate
        self.experts = experts
        self.groups = groups
        self.ep_size = groups.ep_size
        self.num_local_experts = num_local_experts

    def forward(self, hidden_states: Tensor, used_token: Tensor | None = None) -> tuple:
        """``(output, l_aux, exp_counts)`` for ``hidden_states`` of shape ``[..., d]``."""
        d = hidden_states.shape[-1]
        tokens = hidden_states.reshape(-1, d)
        s = tokens.shape[0]
        routing = self.gate(tokens, used_token)
        e, c = routing.num_experts, routing.capacity
        kept = routing.kept
        # Flat buffer row of every kept choice and the token it came from.
        rows = (routing.expert * c + routing.slot)[kept]
        tok = torch.arange(s, device=tokens.device)[:, None].expand_as(kept)[kept]
        buffer = tokens.new_zeros(e * c, d).index_copy(0, rows, tokens[tok])

        if self.ep_size > 1:
            # [ep, local, C, d] by destination -> the same shape by source rank.
            received = _AllToAll.apply(
                self.groups.ep_group, buffer.view(self.ep_size, self.num_local_experts, c, d)
            )
            chunks = received.transpose(0, 1).reshape(self.num_local_experts, -1, d)
            out = self.experts(chunks)
            d_out = out.shape[-1]
            back = out.view(self.num_local_experts, self.ep_size, c, d_out).transpose(0, 1)
            out = _AllToAll.apply(self.groups.ep_group, back).reshape(e * c, d_out)
        else:
            out = self.experts(buffer.view(e, c, d))
            d_out = out.shape[-1]
            out = out.reshape(e * c, d_out)

        weighted = out[rows] * routing.weight[kept].to(out.dtype)[:, None]
        combined = out.new_zeros(s, d_out).index_add(0, tok, weighted)
        return (
            combined.reshape(*hidden_states.shape[:-1], d_out),
            routing.l_aux,
            routing.exp_counts,
        )


class MoE(nn.Module):
    """A Mixture-of-Experts layer (DeepSpeed's ``deepspeed.moe.layer.MoE``).

    Builds ``num_experts / ep_size`` copies of ``expert`` on this rank, a :class:`TopKGate`
    and, when ``torch.distributed`` is initialized, the expert process groups (see
    :func:`create_expert_and_data_parallel`). Every expert parameter is marked with the
    attributes an engine reads (see the package README): ``allreduce = False``,
    ``group_name = "ep_size_<ep_size>"``, ``zs_dp_group`` (the group to average its
    gradient over, or None) and ``zs_dp_group_ranks``.

    Args:
        hidden_size: Token feature size.
        expert: The expert module (e.g. an MLP mapping ``hidden_size`` to ``hidden_size``).
        num_experts: Experts in the layer, over all expert-parallel ranks.
        ep_size: Expert-parallel size: ranks sharing one copy of all experts.
        k: Experts per token.
        capacity_factor: Capacity multiplier in training.
        eval_capacity_factor: Capacity multiplier in eval mode.
        min_capacity: Lower bound of the capacity.
        use_residual: PR-MoE: add a dense copy of ``expert`` whose output is mixed with the
            experts' by a learned, per-token softmax coefficient.
        noisy_gate_policy: ``None``, ``"Jitter"`` or ``"RSample"`` (see :class:`TopKGate`).
        drop_tokens: Drop choices beyond the capacity (else the capacity grows to fit).
        use_rts: Random token selection for top-1.
        top2_2nd_expert_sampling: For top-2 in training, sample the second expert.
        grouped_experts: Run the experts as one vmapped computation (else a loop).

    Raises:
        ValueError: ``num_experts`` not divisible by ``ep_size``, ``ep_size`` not dividing
            the world size, ``k`` out of range or an unknown noisy gate policy.
    """

    def __init__(
        self,
        hidden_size: int,
        expert: nn.Module,
        num_experts: int = 1,
        ep_size: int = 1,
        k: int = 1,
        capacity_factor: float = 1.0,
        eval_capacity_factor: float = 1.0,
        min_capacity: int = 4,
        use_residual: bool = False,
        noisy_gate_policy: str | None = None,
        drop_tokens: bool = True,
        use_rts: bool = True,
        top2_2nd_expert_sampling: bool = True,
        grouped_experts: bool = True,
    ) -> None:
        super().__init__()
        if num_experts < 1 or ep_size < 1 or num_experts % ep_size:
            raise ValueError(
                f"num_experts={num_experts} must be a positive multiple of ep_size={ep_size}"
            )
        groups = create_expert_and_data_parallel(ep_size)
        self.use_residual = use_residual
        self.ep_size = ep_size
        self.num_experts = num_experts
        self.num_local_experts = num_experts // ep_size
        self.expert_group_name = groups.name
        experts = Experts(
            expert, self.num_local_experts, grad_scale=1.0 / ep_size, grouped=grouped_experts
        )
        for param in experts.parameters():
            param.allreduce = False
            param.group_name = groups.name
            param.zs_dp_group = groups.edp_group
            param.zs_dp_group_ranks = list(groups.edp_ranks)
        gate = TopKGate(
            hidden_size,
            num_experts,
            k=k,
            capacity_factor=capacity_factor,
            eval_capacity_factor=eval_capacity_factor,
            min_capacity=min_capacity,
            noisy_gate_policy=noisy_gate_policy,
            drop_tokens=drop_tokens,
            use_rts=use_rts,
            ep_group=groups.ep_group,
            top2_2nd_expert_sampling=top2_2nd_expert_sampling,
        )
        self.deepspeed_moe = MOELayer(gate, experts, groups, self.num_local_experts)
        if use_residual:
            self.mlp = copy.deepcopy(expert)
            self.coefficient = nn.Linear(hidden_size, 2)

    def forward(
        self, hidden_states: Tensor, used_token: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Run the layer.

        Args:
            hidden_states: ``[..., hidden_size]``.
            used_token: Optional ``[...]`` 0/1 mask; tokens with 0 are not routed (their
                expert output is zero).

        Returns:
            ``(output, l_aux, exp_counts)``: the output shaped like the input (last dim the
            expert's output size), the load-balancing loss (add ``coeff * l_aux`` to the
            training loss) and the tokens per expert before dropping (``[num_experts]``,
            on CPU).
        """
        output, l_aux, exp_counts = self.deepspeed_moe(hidden_states, used_token)
        if self.use_residual:
            dense = self.mlp(hidden_states)
            if isinstance(dense, tuple):
                dense = dense[0]
            coef = self.coefficient(hidden_states).softmax(dim=-1)
            output = output * coef[..., 0:1] + dense * coef[..., 1:]
        return output, l_aux, exp_counts

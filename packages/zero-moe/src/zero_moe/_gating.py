"""Top-k gating: which tokens go to which experts, in which slot, with which weight.

[Note: routing as index lists]
DeepSpeed's gates return dense ``[tokens, experts, capacity]`` combine and dispatch tensors
and move tokens with two einsums, which costs ``S*E*C`` memory and flops (quadratic in the
tokens once ``C`` grows with them). Here a gate returns a :class:`GateOutput` holding, for
each token and each of its ``k`` choices, the expert, the slot inside that expert's
capacity buffer, whether the choice survived the capacity limit and its combine weight:
``O(S*k)`` numbers. The layer moves tokens with one ``index_copy`` into a ``[E, C, d]``
buffer and brings results back with one ``index_add``. ``GateOutput.combine_weights()``
still builds the dense tensor, for inspection and tests.

[Note: who keeps a slot]
An expert takes at most ``capacity`` tokens; when more choose it, the ones with the highest
priority keep their slot and the others are dropped (their output for that choice is zero).
The priority follows DeepSpeed per ``k``:

* ``k == 1``: a fresh uniform random number per token when ``use_rts`` (random token
  selection, so the end of the batch is not always the part dropped), else token order.
* ``k == 2``: every first choice before any second choice, each in token order.
* ``k > 2``: the gate probability of the choice (ties in token order).

Slots are handed out in priority order, computed with two stable sorts (priority, then
expert), so routing has no Python loop over tokens or experts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812 - torch's own spelling
from torch import Tensor, nn

#: The noisy gate policies: none, multiplicative jitter of the gate input, Gumbel sampling.
NOISY_GATE_POLICIES = (None, "None", "Jitter", "RSample")


def compute_capacity(
    num_tokens: int, num_experts: int, capacity_factor: float, k: int = 1, min_capacity: int = 0
) -> int:
    """Slots per expert: ``ceil(k * tokens / experts * capacity_factor)``, at least
    ``min_capacity``, at most ``num_tokens`` (one expert never gets a token twice).

    The factor is read as the decimal it was written as (``1.1`` is 11/10), so capacities do
    not depend on binary rounding.
    """
    factor = Fraction(capacity_factor).limit_denominator(1_000_000)
    capacity = math.ceil(Fraction(num_tokens * k, num_experts) * factor)
    return max(0, min(max(capacity, min_capacity), num_tokens))


def gumbel_noise(like: Tensor) -> Tensor:
    """Standard Gumbel samples shaped like ``like`` (from the global torch generator)."""
    return -torch.empty_like(like).exponential_().log()


def multiplicative_jitter(x: Tensor, epsilon: float = 1e-2) -> Tensor:
    """``x`` times uniform noise in ``[1 - epsilon, 1 + epsilon]`` (the ``Jitter`` policy)."""
    return x * torch.empty_like(x).uniform_(1.0 - epsilon, 1.0 + epsilon)


@dataclass
class GateOutput:
    """Routing decided by a :class:`TopKGate` for ``S`` tokens (see [Note: routing as
    index lists] in ``zero_moe._gating``)."""

    l_aux: Tensor
    """Load-balancing auxiliary loss (scalar, differentiable)."""
    expert: Tensor
    """``[S, k]`` int64: the expert of each choice, best first."""
    slot: Tensor
    """``[S, k]`` int64: the slot in that expert's capacity buffer (meaningful where kept)."""
    kept: Tensor
    """``[S, k]`` bool: the choice fit in its expert's capacity."""
    weight: Tensor
    """``[S, k]`` float32 combine weights, 0 where dropped (differentiable)."""
    capacity: int
    """Slots per expert this step."""
    exp_counts: Tensor
    """``[E]`` int64 on CPU: tokens that chose each expert, before dropping."""
    num_experts: int
    """``E``."""

    def combine_weights(self) -> Tensor:
        """DeepSpeed's dense ``[S, E, capacity]`` combine tensor (for inspection/tests)."""
        s, k = self.expert.shape
        dense = self.weight.new_zeros(s, self.num_experts, self.capacity)
        tok = torch.arange(s, device=self.expert.device)[:, None].expand(s, k)
        kept = self.kept
        dense[tok[kept], self.expert[kept], self.slot[kept]] = self.weight[kept]
        return dense

    def dispatch_mask(self) -> Tensor:
        """DeepSpeed's dense ``[S, E, capacity]`` boolean dispatch mask."""
        s, k = self.expert.shape
        dense = torch.zeros(
            s, self.num_experts, self.capacity, dtype=torch.bool, device=self.expert.device
        )
        tok = torch.arange(s, device=self.expert.device)[:, None].expand(s, k)
        dense[tok[self.kept], self.expert[self.kept], self.slot[self.kept]] = True
        return dense


class TopKGate(nn.Module):
    """Top-k gating network with capacity limits (DeepSpeed's ``TopKGate``).

    A bias-free linear layer scores the experts in float32; each token goes to its ``k``
    best experts, subject to each expert's capacity (see [Note: who keeps a slot]).

    Args:
        model_dim: Token feature size.
        num_experts: Number of experts (over all expert-parallel ranks).
        k: Experts per token, ``1 <= k <= num_experts``.
        capacity_factor: Capacity multiplier in training.
        eval_capacity_factor: Capacity multiplier in eval mode.
        min_capacity: Lower bound of the capacity.
        noisy_gate_policy: ``None``, ``"Jitter"`` (multiply the gate input by
            ``U(0.99, 1.01)`` in training) or ``"RSample"`` (choose experts by logits plus
            Gumbel noise in training; weights stay the noise-free probabilities).
        drop_tokens: Drop choices beyond the capacity; when False the capacity grows to the
            busiest expert's load (the maximum over the expert-parallel group).
        use_rts: Random token selection for ``k == 1`` (see [Note: who keeps a slot]).
        ep_group: The expert-parallel group, for the no-drop capacity agreement.
        top2_2nd_expert_sampling: For ``k == 2`` in training, pick the second expert from
            the logits plus Gumbel noise (DeepSpeed's default).

    Raises:
        ValueError: ``k`` out of range or an unknown noisy gate policy.
    """

    def __init__(
        self,
        model_dim: int,
        num_experts: int,
        k: int = 1,
        capacity_factor: float = 1.0,
        eval_capacity_factor: float = 1.0,
        min_capacity: int = 8,
        noisy_gate_policy: str | None = None,
        drop_tokens: bool = True,
        use_rts: bool = True,
        ep_group: dist.ProcessGroup | None = None,
        top2_2nd_expert_sampling: bool = True,
    ) -> None:
        super().__init__()
        if not 1 <= k <= num_experts:
            raise ValueError(f"k={k} must be between 1 and num_experts={num_experts}")
        if noisy_gate_policy not in NOISY_GATE_POLICIES:
            raise ValueError(
                f"noisy_gate_policy={noisy_gate_policy!r} is not one of "
                f"{NOISY_GATE_POLICIES[1:]} or None"
            )
        self.wg = nn.Linear(model_dim, num_experts, bias=False, dtype=torch.float32)
        # forward() reads wg.weight directly, not through wg's forward: declared so an engine
        # that gathers partitioned params per module (zero-core stage 3) gathers it here too
        self.zs_external_params = [self.wg.weight]
        self.num_experts = num_experts
        self.k = k
        self.capacity_factor = capacity_factor
        self.eval_capacity_factor = eval_capacity_factor
        self.min_capacity = min_capacity
        self.noisy_gate_policy = None if noisy_gate_policy == "None" else noisy_gate_policy
        self.drop_tokens = drop_tokens
        self.use_rts = use_rts
        self.ep_group = ep_group
        self.top2_2nd_expert_sampling = top2_2nd_expert_sampling

    def forward(self, tokens: Tensor, used_token: Tensor | None = None) -> GateOutput:
        """Route ``tokens`` (``[S, model_dim]``); ``used_token`` (``[S]``, 0/1) excludes
        tokens from routing altogether."""
        x = tokens.float()
        if self.noisy_gate_policy == "Jitter" and self.training:
            x = multiplicative_jitter(x)
        logits = F.linear(x, self.wg.weight.float())
        return self.route(logits, used_token)

    def route(self, logits: Tensor, used_token: Tensor | None = None) -> GateOutput:
        """Routing for gate ``logits`` (``[S, E]``); the layer's forward without the linear."""
        s, e = logits.shape
        k = self.k
        gates = logits.softmax(dim=1)
        noisy = self.training and self.noisy_gate_policy == "RSample"
        scores = logits + gumbel_noise(logits) if noisy else gates
        if k == 2 and self.training and self.top2_2nd_expert_sampling and not noisy:
            first = gates.argmax(dim=1)
            sampled = (logits + gumbel_noise(logits)).detach()
            sampled[torch.arange(s), first] = float("-inf")
            expert = torch.stack([first, sampled.argmax(dim=1)], dim=1)
        else:
            expert = scores.detach().topk(k, dim=1).indices  # [S, k]

        # One row per (choice, token), choice-major: all first choices, then all seconds.
        flat = expert.t().reshape(-1)
        tok = torch.arange(s, device=logits.device).repeat(k)
        valid = (
            torch.ones_like(flat, dtype=torch.bool)
            if used_token is None
            else used_token.reshape(-1).bool().repeat(k)
        )
        counts = torch.bincount(flat[valid], minlength=e)

        if self.drop_tokens:
            factor = self.capacity_factor if self.training else self.eval_capacity_factor
            capacity = compute_capacity(s, e, factor, k, self.min_capacity)
        else:
            busiest = counts.max().reshape(1)
            if self.ep_group is not None:
                dist.all_reduce(busiest, op=dist.ReduceOp.MAX, group=self.ep_group)
            capacity = int(busiest.item())
        capacity = max(capacity, 1)

        # See [Note: who keeps a slot]: order rows by priority, then stably by expert.
        if k == 1 and self.use_rts:
            order = torch.rand(s, device=logits.device).argsort(descending=True)
        elif k > 2:
            order = gates.detach()[tok, flat].argsort(descending=True, stable=True)
        else:
            order = torch.arange(s * k, device=logits.device)
        key = torch.where(valid, flat, e)[order]  # unused tokens sort last, as expert e
        by_expert = key.argsort(stable=True)
        perm = order[by_expert]
        sorted_key = key[by_expert]
        starts = torch.cumsum(torch.bincount(sorted_key, minlength=e + 1), 0)
        starts = torch.cat([starts.new_zeros(1), starts[:-1]])
        position = torch.arange(s * k, device=logits.device) - starts[sorted_key]
        slot = torch.empty_like(flat)
        slot[perm] = position
        kept = torch.empty_like(valid)
        kept[perm] = (position < capacity) & (sorted_key < e)

        slot = slot.view(k, s).t()
        kept = kept.view(k, s).t()
        weight = gates.gather(1, expert) * kept
        if k > 1:
            weight = weight / weight.sum(dim=1, keepdim=True).clamp(
                min=torch.finfo(weight.dtype).eps
            )

        # Load-balancing loss: E * sum_e (mean gate prob of e) * (share of tokens routed to e),
        # counting first choices for k <= 2 and all k choices (divided by k) beyond.
        me = gates.mean(dim=0)
        if k <= 2:
            first = expert[:, 0] if used_token is None else expert[:, 0][valid[:s]]
            ce = torch.bincount(first, minlength=e).to(gates.dtype) / s
            l_aux = (me * ce).sum() * e
        else:
            ce = counts.to(gates.dtype) / s
            l_aux = (me * ce).sum() * e / k
        return GateOutput(
            l_aux=l_aux,
            expert=expert,
            slot=slot,
            kept=kept,
            weight=weight,
            capacity=capacity,
            exp_counts=counts.detach().cpu(),
            num_experts=e,
        )

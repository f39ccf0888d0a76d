"""PR-MoE (pyramid + residual experts) in a tiny decoder-only language model.

Pyramid: later layers get more experts (``experts_per_layer=[2, 2, 4, 4]``). Residual: each
MoE layer also runs a dense MLP and mixes the two outputs with a learned per-token
coefficient (``use_residual=True``), so top-1 routing costs one expert plus one MLP but
behaves like top-2. The load-balancing loss of every layer is added with a small
coefficient, as the DeepSpeed tutorial does (``--moe-loss-coeff 0.01``).

Run it: ``python examples/pyramid_residual_moe.py`` (trains on a synthetic
next-token task for a few seconds on CPU and prints the loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own spelling
from torch import nn

from zero_moe import MoE, split_params_into_different_moe_groups_for_optimizer


class Block(nn.Module):
    def __init__(self, d: int, heads: int, num_experts: int, use_residual: bool) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.moe = MoE(
            d, mlp, num_experts=num_experts, k=1, use_residual=use_residual, min_capacity=4
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        out, l_aux, _ = self.moe(self.ln2(x))
        return x + out, l_aux


class PyramidResidualMoELM(nn.Module):
    """A decoder-only LM whose MLPs are (residual) MoE layers, ``experts_per_layer[i]``
    experts in layer ``i``."""

    def __init__(
        self,
        vocab: int = 32,
        d: int = 32,
        heads: int = 2,
        seq: int = 16,
        experts_per_layer: tuple[int, ...] = (2, 2, 4, 4),
        use_residual: bool = True,
    ) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq, d)
        self.blocks = nn.ModuleList(Block(d, heads, n, use_residual) for n in experts_per_layer)
        self.head = nn.Linear(d, vocab)
        self.register_buffer(
            "mask", torch.triu(torch.full((seq, seq), float("-inf")), 1), persistent=False
        )

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t))
        l_aux = x.new_zeros(())
        for block in self.blocks:
            x, aux = block(x, self.mask[:t, :t])
            l_aux = l_aux + aux
        return self.head(x), l_aux


def main(steps: int = 60, moe_loss_coeff: float = 0.01) -> dict:
    torch.manual_seed(0)
    model = PyramidResidualMoELM()
    groups = split_params_into_different_moe_groups_for_optimizer(
        {"params": list(model.parameters()), "lr": 3e-3}
    )
    optimizer = torch.optim.AdamW(groups)
    # next token = (token * 3 + 1) mod 32: learnable from the current token alone
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, 32, (8, 16))
        target = (idx * 3 + 1) % 32
        logits, l_aux = model(idx)
        loss = F.cross_entropy(logits.reshape(-1, 32), target.reshape(-1))
        (loss + moe_loss_coeff * l_aux).backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    result = {
        "experts_per_layer": [b.moe.num_experts for b in model.blocks],
        "first_loss": losses[0],
        "final_loss": sum(losses[-5:]) / 5,
        "optimizer_groups": [(g.get("name", "dense"), len(g["params"])) for g in groups],
    }
    return result


if __name__ == "__main__":
    print(main())

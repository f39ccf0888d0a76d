"""Launched by torchrun from test_train_integration.py: a model with a zero-moe MoE layer
(2 experts, one per rank: ep_size 2) trained by the zero-core engine at ZeRO stages 2 and
3; each rank writes its dense weights and its own expert's."""

import sys

import torch
import torch.distributed as dist
from torch import nn

import zerospeed
from zero_moe import MoE

STEPS = 4


class MoENet(nn.Module):
    def __init__(self, ep_size: int) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        expert = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.moe = MoE(16, expert, num_experts=2, ep_size=ep_size, k=1, drop_tokens=False,
                       use_rts=False)  # fmt: skip
        self.out = nn.Linear(16, 1)

    def forward(self, x):
        h, _, _ = self.moe(torch.tanh(self.inp(x)))
        return self.out(h)


def batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10 * step + rank)
    return torch.randn(6, 8, generator=g), torch.randn(6, 1, generator=g)


def main(out: str) -> None:
    zerospeed.core.init_distributed()  # the MoE layer builds its process groups
    results = {}
    for stage in (2, 3):
        torch.manual_seed(0)
        model = MoENet(ep_size=2)
        config = {
            "train_micro_batch_size_per_gpu": 6,
            "steps_per_print": 1000,
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.1}},
            "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
        }
        engine, *_ = zerospeed.initialize(model=model, config=config)
        rank = dist.get_rank()
        for step in range(STEPS):
            x, y = batch(step, rank)
            engine.backward(nn.functional.mse_loss(engine(x), y))
            engine.step()
        results[stage] = engine.full_state_dict()
    torch.save(results, f"{out}.{dist.get_rank()}")


if __name__ == "__main__":
    main(sys.argv[1])

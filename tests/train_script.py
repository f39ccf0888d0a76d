"""Launched by torchrun from test_train_integration.py: trains with zerospeed.initialize.

Writes the averaged losses, the learning rates and the full final weights (rank 0) to the
file named by the first argument.
"""

import sys

import torch
import torch.distributed as dist
from torch import nn

import zerospeed

#: The issue's config, plus the batch size DeepSpeed requires (it has no default).
CONFIG = {
    "train_micro_batch_size_per_gpu": 4,
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.1}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 5}},
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "bf16": {"enabled": True},
    "steps_per_print": 1000,
}
STEPS = 12


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(8, 8, generator=g), torch.randn(8, 1, generator=g)


def main(out: str) -> None:
    engine, optimizer, _, scheduler = zerospeed.initialize(model=make_model(), config=CONFIG)
    rank, world = dist.get_rank(), dist.get_world_size()
    losses, lrs = [], []
    for step in range(STEPS):
        x, y = batch(step)
        rows = slice(rank * 4, rank * 4 + 4)
        loss = nn.functional.mse_loss(engine(x[rows]).float(), y[rows])
        engine.backward(loss)
        engine.step()
        t = loss.detach().float().reshape(1)
        dist.all_reduce(t)
        losses.append(t.item() / world)
        lrs.append(engine.get_lr()[0])
    weights = engine.full_state_dict(torch.float32)
    if rank == 0:
        torch.save(
            {
                "losses": losses,
                "lrs": lrs,
                "weights": weights,
                "optimizer": type(optimizer.inner).__module__
                + "."
                + type(optimizer.inner).__name__,
                "scheduler": type(scheduler).__module__ + "." + type(scheduler).__name__,
                "world": world,
            },
            out,
        )


if __name__ == "__main__":
    main(sys.argv[1])

"""Launched by torchrun from test_train_integration.py: zero-optim's OneBitAdam through the
engine (ZeRO stage 0), past its freeze step; writes each rank's final weights."""

import sys

import torch
import torch.distributed as dist
from torch import nn

import zerospeed

CONFIG = {
    "train_micro_batch_size_per_gpu": 4,
    "optimizer": {
        "type": "OneBitAdam",
        "params": {"lr": 1e-2, "freeze_step": 3, "comm_backend_name": "gloo"},
    },
    "steps_per_print": 1000,
}


def main(out: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    engine, optimizer, _, _ = zerospeed.initialize(model=model, config=CONFIG)
    rank = dist.get_rank()
    losses = []
    for step in range(12):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(8, 8, generator=g), torch.randn(8, 1, generator=g)
        rows = slice(rank * 4, rank * 4 + 4)
        loss = nn.functional.mse_loss(engine(x[rows]), y[rows])
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    try:
        zerospeed.initialize(
            model=nn.Linear(8, 1),
            config={**CONFIG, "zero_optimization": {"stage": 2}},
        )
        refused = ""
    except ValueError as exc:
        refused = str(exc)
    torch.save(
        {
            "weights": engine.full_state_dict(),
            "losses": losses,
            "optimizer": type(optimizer.inner).__name__,
            "refused": refused,
        },
        f"{out}.{rank}",
    )


if __name__ == "__main__":
    main(sys.argv[1])

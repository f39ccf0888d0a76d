"""A small model, its data, and single-process reference training to compare ranks against.

The global batch of step ``s`` is fixed by the seed ``s``. With ``gas`` accumulation steps
and 2 ranks, rank ``r`` trains on micro-batch ``k`` = rows ``[(2k + r) * micro, ...)``, so
the ranks together see exactly the global batch the reference trains on in one step.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

import zero_core

MICRO = 4
LR = 1e-2
WD = 0.1


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 48), nn.Tanh(), nn.Linear(48, 1)
    )


def global_batch(step: int, gas: int, world: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    n = MICRO * gas * world
    return torch.randn(n, 8, generator=g), torch.randn(n, 1, generator=g)


def micro_batch(step: int, k: int, rank: int, gas: int, world: int = 2):
    x, y = global_batch(step, gas, world)
    rows = slice((k * world + rank) * MICRO, (k * world + rank + 1) * MICRO)
    return x[rows], y[rows]


def adamw(groups: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=LR, weight_decay=WD)


def config(stage: int, *, gas: int = 1, clip: float = 0.0, dtype: str = "fp32", **zero: Any):
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": MICRO,
        "gradient_accumulation_steps": gas,
        "steps_per_print": 1000,
        "zero_optimization": {
            "stage": stage,
            "reduce_bucket_size": 600,
            "allgather_bucket_size": 600,
            "stage3_param_persistence_threshold": 40,
            **zero,
        },
    }
    if clip:
        cfg["gradient_clipping"] = clip
    if dtype == "bf16":
        cfg["bf16"] = {"enabled": True}
    if dtype == "fp16":
        cfg["fp16"] = {"enabled": True}
    return cfg


def train_ranks(rank: int, cfg: dict, steps: int, model_fn=make_model) -> dict[str, Any]:
    """What each rank runs: ``steps`` optimizer steps; returns the global losses (averaged
    over ranks), the full final weights, and the engine's counters."""
    import torch.distributed as dist

    model = model_fn()
    engine, _, _, _ = zero_core.initialize(model=model, optimizer=adamw, config=cfg)
    gas = engine.gradient_accumulation_steps()
    losses = []
    for step in range(steps):
        total = 0.0
        for k in range(gas):
            x, y = micro_batch(step, k, rank, gas)
            loss = nn.functional.mse_loss(engine(x).float(), y)
            engine.backward(loss)
            engine.step()
            total += loss.item()
        t = torch.tensor([total / gas])
        dist.all_reduce(t)
        losses.append(t.item() / dist.get_world_size())
    return {
        "losses": losses,
        "weights": engine.full_state_dict(torch.float32),
        "global_steps": engine.global_steps,
        "global_samples": engine.global_samples,
        "skipped_steps": engine.skipped_steps,
    }


def reference(
    steps: int, *, gas: int = 1, clip: float = 0.0, dtype: str = "fp32", model_fn=make_model
):
    """Single-process training on the whole global batch.

    fp32: plain torch AdamW. bf16: the scheme the engine implements, written out by hand:
    bf16 weights for compute, fp32 master weights and fp32 gradients for the update.
    """
    model = model_fn()
    if dtype == "fp32":
        opt = adamw(model.parameters())
        masters = None
    else:
        masters = [p.detach().clone().float().requires_grad_() for p in model.parameters()]
        model = model.to(torch.bfloat16)
        opt = adamw(masters)
    losses = []
    for step in range(steps):
        x, y = global_batch(step, gas)
        if dtype != "fp32":
            x = x.to(torch.bfloat16)
        loss = nn.functional.mse_loss(model(x).float(), y)
        model.zero_grad()
        loss.backward()
        losses.append(loss.item())
        params = list(model.parameters())
        if masters is not None:
            for m, p in zip(masters, params):
                m.grad = p.grad.float()
            params = masters
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad()
        if masters is not None:
            with torch.no_grad():
                for m, p in zip(masters, model.parameters()):
                    p.copy_(m)
    return losses, {k: v.float() for k, v in copy.deepcopy(model.state_dict()).items()}

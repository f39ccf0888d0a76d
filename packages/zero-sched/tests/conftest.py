"""Helpers shared by the zero-sched tests."""

from __future__ import annotations

import pytest
import torch

REL = 1e-12  # the contract: lrs equal the reference to 1e-12 relative


def make_optimizer(kind: str = "adamw", groups: int = 1, lr: float = 0.1) -> torch.optim.Optimizer:
    """An optimizer over ``groups`` one-element parameter groups."""
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))]} for _ in range(groups)]
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(0.5, 0.777))
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.3)
    if kind == "adagrad":
        return torch.optim.Adagrad(params, lr=lr)
    raise ValueError(kind)


def lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    return [float(group["lr"]) for group in optimizer.param_groups]


def trajectory(scheduler, optimizer, steps: int) -> list[list[float]]:
    """lrs after construction (entry 0) and after each of ``steps`` steps."""
    out = [lrs(optimizer)]
    for _ in range(steps):
        scheduler.step()
        out.append(lrs(optimizer))
    return out


def close(actual, expected) -> bool:
    return actual == pytest.approx(expected, rel=REL, abs=1e-15)


def flat(rows) -> list[float]:
    """Flatten a list of per-group rows, for pytest.approx (which does not nest)."""
    return [float(v) for row in rows for v in (row if isinstance(row, (list, tuple)) else [row])]

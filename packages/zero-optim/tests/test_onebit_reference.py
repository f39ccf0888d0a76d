"""Every phase of OnebitAdam, ZeroOneAdam and OnebitLamb against a plain reference.

Each reference below is written from the published algorithm (1-bit Adam, the 0/1 Adam paper
and tutorial, 1-bit LAMB), one param at a time, with its own :class:`CompressedAllreduce`
standing for the 1-bit average (tested on its own in test_onebit_collective.py). The
optimizer and its reference train copies of one model side by side on 2 gloo ranks; the
params must agree after every step, through warm-up, 1-bit steps, local steps and
synchronizations. What matters most is *which quantity* each one compresses: a reference
that compresses something else would drift away within a step or two.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from onebit_harness import run_ranks

from zero_optim import OnebitAdam, OnebitLamb, ZeroOneAdam
from zero_optim.onebit import CommGroup, CompressedAllreduce

GLOO = {"comm_backend_name": "gloo"}
LR, BETAS, EPS, WD = 1e-2, (0.9, 0.999), 1e-8, 0.01
STEPS = 40


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))


def local_grads(model: torch.nn.Module, rank: int, step: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(16, 8, generator=gen)
    y = torch.sin(x[:, :3] * 2) + 0.3 * torch.randn(16, 3, generator=gen)
    model.zero_grad(set_to_none=True)
    torch.nn.functional.mse_loss(model(x), y).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


class Reference:
    """Plain tensors, one param at a time; the two ways of averaging over ranks."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.p = [q.detach().clone() for q in params]
        self.m = [torch.zeros_like(q) for q in self.p]
        self.v = [torch.zeros_like(q) for q in self.p]
        self.t = 0
        self.numel = sum(q.numel() for q in self.p)
        self.compressors: dict[str, CompressedAllreduce] = {}

    def mean(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for t in tensors:
            t = t.clone()
            dist.all_reduce(t)
            out.append(t / dist.get_world_size())
        return out

    def onebit_mean(self, tensors: list[torch.Tensor], what: str) -> list[torch.Tensor]:
        if what not in self.compressors:
            self.compressors[what] = CompressedAllreduce(self.numel, CommGroup("gloo", False))
        flat = self.compressors[what](torch.cat([t.reshape(-1) for t in tensors]))
        return [a.view_as(t) for a, t in zip(flat.split([t.numel() for t in tensors]), tensors)]

    def adam_denom(self, v: torch.Tensor, updates: int) -> torch.Tensor:
        return (v / (1 - BETAS[1] ** updates)).sqrt() + EPS

    def adamw(self, i: int, g: torch.Tensor, updates: int) -> None:
        """AdamW on an averaged gradient, moving m and v."""
        self.m[i] = BETAS[0] * self.m[i] + (1 - BETAS[0]) * g
        self.v[i] = BETAS[1] * self.v[i] + (1 - BETAS[1]) * g * g
        self.frozen_adamw(i, updates)

    def frozen_adamw(self, i: int, updates: int) -> None:
        """AdamW with the momentum as it is and the variance after ``updates`` updates."""
        c1 = 1 - BETAS[0] ** self.t
        self.p[i] = self.p[i] * (1 - LR * WD) - LR / c1 * self.m[i] / self.adam_denom(
            self.v[i], updates
        )


class OnebitAdamReference(Reference):
    """Tang et al. 2021: AdamW on averaged gradients for ``freeze`` steps; then the momentum
    moved by the local gradient is averaged 1-bit and the variance stays frozen."""

    freeze = 6

    def step(self, grads: list[torch.Tensor]) -> None:
        self.t += 1
        if self.t <= self.freeze:
            for i, g in enumerate(self.mean(grads)):
                self.adamw(i, g, self.t)
            return
        local = [BETAS[0] * m + (1 - BETAS[0]) * g for m, g in zip(self.m, grads)]
        self.m = self.onebit_mean(local, "momentum")
        for i in range(len(self.p)):
            self.frozen_adamw(i, self.freeze)


class ZeroOneAdamReference(Reference):
    """Lu et al. 2022 (0/1 Adam), with the tutorial's schedules.

    Variance updates at steps k_1 = 1, k_{j+1} = k_j + 2^floor(j / var_update_scaler) up to
    var_freeze_step, on averaged gradients; the other steps before it average the locally
    moved momentum 1-bit. After it, every rank takes local steps and accumulates
    u = sum(lr_k / c1_k * m_k) (the optimizer state, not the parameter change); every H steps
    (H = 2^floor((t - var_freeze_step - 1) / local_step_scaler), at most local_step_clipper)
    u is averaged 1-bit, params restart from the last synchronized ones (decayed) minus
    avg(u) / denom, and the momentum becomes avg(u) / sum(lr_k / c1_k).
    """

    var_freeze, scaler, local_scaler, clipper = 12, 2, 4, 4

    def __init__(self, params: list[torch.Tensor]) -> None:
        super().__init__(params)
        self.variance_steps, k, j = set(), 1, 1
        while k <= self.var_freeze:
            self.variance_steps.add(k)
            k, j = k + 2 ** (j // self.scaler), j + 1
        self.updates = 0
        self.anchor = [q.clone() for q in self.p]
        self.u = [torch.zeros_like(q) for q in self.p]
        self.lrs, self.decay, self.count = 0.0, 1.0, 0

    def step(self, grads: list[torch.Tensor]) -> None:
        self.t += 1
        if self.t in self.variance_steps:
            self.updates += 1
            for i, g in enumerate(self.mean(grads)):
                self.adamw(i, g, self.updates)
            return
        local = [BETAS[0] * m + (1 - BETAS[0]) * g for m, g in zip(self.m, grads)]
        if self.t <= self.var_freeze:
            self.m = self.onebit_mean(local, "momentum")
            for i in range(len(self.p)):
                self.frozen_adamw(i, self.updates)
            return
        if self.count == 0:
            self.anchor = [q.clone() for q in self.p]
        self.m = local
        lr_t = LR / (1 - BETAS[0] ** self.t)
        for i in range(len(self.p)):
            self.frozen_adamw(i, self.updates)
            self.u[i] = self.u[i] + lr_t * self.m[i]
        self.lrs += lr_t
        self.decay *= 1 - LR * WD
        self.count += 1
        interval = 2 ** ((self.t - self.var_freeze - 1) // self.local_scaler)
        if self.count < min(interval, self.clipper):
            return
        u_avg = self.onebit_mean(self.u, "accumulated momentum")
        for i in range(len(self.p)):
            denom = self.adam_denom(self.v[i], self.updates)
            self.p[i] = self.anchor[i] * self.decay - u_avg[i] / denom
            self.m[i] = u_avg[i] / self.lrs
            self.u[i] = torch.zeros_like(self.u[i])
        self.lrs, self.decay, self.count = 0.0, 1.0, 0


class OnebitLambReference(Reference):
    """Li et al. 2021: LAMB on averaged gradients for ``freeze`` steps, keeping a running
    average of each param's trust ratio; then the momentum is averaged 1-bit, the variance
    and the averaged trust ratio are frozen, and the ratio is scaled by a factor from a fresh
    variance of the gradients the compressed momenta imply."""

    freeze, coeff_beta, factor_min, factor_max, threshold = 6, 0.9, 0.5, 4.0, 0.1

    def __init__(self, params: list[torch.Tensor]) -> None:
        super().__init__(params)
        self.trust_avg: list[float | None] = [None] * len(self.p)
        self.fresh: list[torch.Tensor] = []
        self.factor = [1.0] * len(self.p)

    def step(self, grads: list[torch.Tensor]) -> None:
        self.t += 1
        c1 = 1 - BETAS[0] ** self.t
        if self.t <= self.freeze:
            for i, g in enumerate(self.mean(grads)):
                self.m[i] = BETAS[0] * self.m[i] + (1 - BETAS[0]) * g
                self.v[i] = BETAS[1] * self.v[i] + (1 - BETAS[1]) * g * g
                update = self.m[i] / c1 / self.adam_denom(self.v[i], self.t) + WD * self.p[i]
                trust = min(max((self.p[i].norm() / update.norm()).item(), 0.01), 10.0)
                avg = self.trust_avg[i]
                self.trust_avg[i] = (
                    trust if avg is None else self.coeff_beta * avg + (1 - self.coeff_beta) * trust
                )
                self.p[i] = self.p[i] - LR * trust * update
            self.fresh = [v.clone() for v in self.v]
            return
        previous = self.m
        local = [BETAS[0] * m + (1 - BETAS[0]) * g for m, g in zip(self.m, grads)]
        self.m = self.onebit_mean(local, "momentum")
        for i in range(len(self.p)):
            implied = (self.m[i] - BETAS[0] * previous[i]) / (1 - BETAS[0])
            self.fresh[i] = BETAS[1] * self.fresh[i] + (1 - BETAS[1]) * implied * implied
            denom = self.adam_denom(self.v[i], self.freeze)
            ratio = (denom / self.adam_denom(self.fresh[i], self.t)).max().item()
            ratio = min(max(ratio, self.factor_min), self.factor_max)
            last = self.factor[i]
            self.factor[i] = min(
                max(ratio, last * (1 - self.threshold)), last * (1 + self.threshold)
            )
            update = self.m[i] / c1 / denom + WD * self.p[i]
            self.p[i] = self.p[i] - LR * self.trust_avg[i] * self.factor[i] * update


CASES = {
    "OnebitAdam": (
        lambda ps: OnebitAdam(ps, lr=LR, weight_decay=WD, freeze_step=6, **GLOO),
        OnebitAdamReference,
    ),
    "ZeroOneAdam": (
        lambda ps: ZeroOneAdam(
            ps,
            lr=LR,
            weight_decay=WD,
            var_freeze_step=12,
            var_update_scaler=2,
            local_step_scaler=4,
            local_step_clipper=4,
            **GLOO,
        ),
        ZeroOneAdamReference,
    ),
    "OnebitLamb": (
        lambda ps: OnebitLamb(ps, lr=LR, weight_decay=WD, freeze_step=6, **GLOO),
        OnebitLambReference,
    ),
}


def _side_by_side(rank: int, name: str) -> list[float]:
    make, reference_class = CASES[name]
    model = make_model()
    opt = make(model.parameters())
    reference = reference_class(list(model.parameters()))
    worst = []
    for step in range(STEPS):
        grads = local_grads(model, rank, step)
        opt.step()
        reference.step(grads)
        worst.append(
            max(
                ((a - b).abs() / (b.abs() + 1e-3)).max().item()
                for a, b in zip(model.parameters(), reference.p)
            )
        )
    return worst


@pytest.mark.parametrize("name", list(CASES))
def test_every_phase_matches_the_published_algorithm_on_two_ranks(name):
    for worst in run_ranks(_side_by_side, name):
        # fp32 rounding only (the two compute the same values in different orders): measured
        # below 5e-5 relative over 40 steps; compressing another quantity than the algorithm
        # does shows up as differences of order 1 (ZeroOneAdam once synchronized the
        # parameter change instead of u: 1.1 at its first synchronization).
        assert max(worst) < 1e-3, [f"step {i + 1}: {w:.2e}" for i, w in enumerate(worst)]

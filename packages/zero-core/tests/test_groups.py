"""Expert parameters (averaged over their own process group) and optimizers that do their own
communication, on 2 gloo ranks against single-process references."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

import zero_core
from harness import run_ranks
from training import adamw

STEPS = 5


class WithExpert(nn.Module):
    def __init__(self, expert: nn.Module) -> None:
        super().__init__()
        self.dense = nn.Linear(8, 16)
        self.expert = expert

    def forward(self, x):
        return self.expert(torch.tanh(self.dense(x)))


def rows(step: int, rank: int):
    g = torch.Generator().manual_seed(10 * step + rank)
    return torch.randn(4, 8, generator=g), torch.randn(4, 1, generator=g)


def expert_for(rank: int) -> nn.Linear:
    torch.manual_seed(100 + rank)
    return nn.Linear(16, 1)


def mark(expert: nn.Module, group, ranks: list[int]) -> None:
    """What zero-moe does to expert parameters (its documented contract): the marks, and the
    1/ep_size scaling of their gradients in backward."""
    ep_size = 2 // len(ranks)
    for p in expert.parameters():
        p.allreduce = False
        p.group_name = f"ep_size_{ep_size}"
        p.zs_dp_group = group
        p.zs_dp_group_ranks = ranks
        p.register_hook(lambda g: g / ep_size)


def cfg(stage: int, clip: float) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 4,
        "steps_per_print": 1000,
        "gradient_clipping": clip,
        "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
    }


def train_with_experts(rank: int, stage: int, clip: float, per_rank: bool) -> dict:
    singles = [dist.new_group([0]), dist.new_group([1])]  # every rank creates every group
    both = dist.new_group([0, 1])
    torch.manual_seed(0)
    dense = nn.Linear(8, 16)
    expert = expert_for(rank if per_rank else 0)
    if per_rank:  # one expert per rank (ep_size 2): its group is the rank alone
        mark(expert, singles[rank], [rank])
    else:  # one expert replicated on both ranks (ep_size 1)
        mark(expert, both, [0, 1])
    model = WithExpert(expert)
    model.dense = dense
    engine, *_ = zero_core.initialize(model=model, optimizer=adamw, config=cfg(stage, clip))
    for step in range(STEPS):
        x, y = rows(step, rank)
        engine.backward(nn.functional.mse_loss(engine(x), y))
        engine.step()
    return engine.full_state_dict()


def reference(clip: float, per_rank: bool) -> list[dict]:
    torch.manual_seed(0)
    dense = nn.Linear(8, 16)
    experts = [expert_for(0), expert_for(1) if per_rank else None]
    if not per_rank:
        experts[1] = experts[0]
    params = list(dense.parameters()) + [p for e in dict.fromkeys(experts) for p in e.parameters()]
    opt = adamw(params)
    for step in range(STEPS):
        loss = 0
        for r in (0, 1):
            x, y = rows(step, r)
            loss = loss + nn.functional.mse_loss(experts[r](torch.tanh(dense(x))), y)
        opt.zero_grad()
        (loss / 2).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
    return [
        {
            **{f"dense.{k}": v for k, v in dense.state_dict().items()},
            **{f"expert.{k}": v for k, v in experts[r].state_dict().items()},
        }
        for r in (0, 1)
    ]


def all_cases(rank: int) -> dict:
    return {
        (stage, clip, per_rank): train_with_experts(rank, stage, clip, per_rank)
        for stage in (0, 1, 2, 3)
        for clip in (0.0, 0.05)
        for per_rank in (True, False)
    }


@pytest.fixture(scope="module")
def results() -> list[dict]:
    return run_ranks(all_cases, timeout=600)


@pytest.mark.parametrize("per_rank", [True, False], ids=["expert-per-rank", "replicated-expert"])
@pytest.mark.parametrize("clip", [0.0, 0.05], ids=["no-clip", "clip"])
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_expert_gradients_average_over_their_group(results, stage, clip, per_rank):
    refs = reference(clip, per_rank)
    for rank in (0, 1):
        got = results[rank][stage, clip, per_rank]
        for key, ref in refs[rank].items():
            torch.testing.assert_close(got[key], ref, rtol=1e-5, atol=1e-6, msg=key)


# -- optimizers that communicate themselves --------------------------------------------------


class SelfAveragingSGD(torch.optim.SGD):
    """Stands in for 1-bit Adam: it averages the gradients itself, so the engine must not."""

    communicates_gradients = True
    supported_zero_stages = (0,)

    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= dist.get_world_size()
        return super().step(closure)


def self_communicating(rank: int) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 1))
    config = cfg(0, 0.0)
    engine, *_ = zero_core.initialize(
        model=model, optimizer=lambda g: SelfAveragingSGD(g, lr=0.1), config=config
    )
    for step in range(STEPS):
        x, y = rows(step, rank)
        engine.backward(nn.functional.mse_loss(engine(x), y))
        engine.step()
    errors = []
    for stage, clip in ((1, 0.0), (0, 1.0)):
        try:
            zero_core.initialize(
                model=nn.Linear(8, 1),
                optimizer=lambda g: SelfAveragingSGD(g, lr=0.1),
                config=cfg(stage, clip),
            )
        except ValueError as exc:
            errors.append(str(exc))
    return {"weights": engine.full_state_dict(), "errors": errors}


def test_optimizers_that_communicate_get_each_ranks_own_gradient():
    got = run_ranks(self_communicating)[0]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(STEPS):
        loss = sum(
            nn.functional.mse_loss(model(rows(step, r)[0]), rows(step, r)[1]) for r in (0, 1)
        )
        opt.zero_grad()
        (loss / 2).backward()
        opt.step()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(got["weights"][key], value, rtol=1e-6, atol=1e-7)
    stage_error, clip_error = got["errors"]
    assert "works with ZeRO stage 0 only; the config asks for stage 1" in stage_error
    assert "gradient_clipping with SelfAveragingSGD" in clip_error

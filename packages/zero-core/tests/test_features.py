"""Tied weights, frozen and unused parameters, uneven inputs, activation checkpointing,
torch.compile, zero_core.Init and GatheredParameters: each on 2 ranks against one process.

Each scenario's reference is single-process training computing the same global loss: the
average over ranks of each rank's mean loss.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

import zero_core
from harness import run_ranks
from training import adamw

STEPS = 6
STAGES = (0, 1, 2, 3)


def cfg(stage: int) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 4,
        "steps_per_print": 1000,
        "zero_optimization": {
            "stage": stage,
            "stage3_param_persistence_threshold": 0,
            "reduce_bucket_size": 300,
        },
    }


class Tied(nn.Module):
    """A language-model shape: the output layer shares the embedding matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 16, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        return self.head(torch.tanh(self.body(self.emb(idx))))


class Branchy(nn.Module):
    """``extra`` runs only when asked: unused on some ranks or steps."""

    def __init__(self, checkpointed: bool = False) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 16)
        self.c = nn.Linear(16, 1)
        self.extra = nn.Linear(8, 1)
        self.checkpointed = checkpointed

    def block(self, x):
        return torch.tanh(self.b(torch.relu(self.a(x))))

    def forward(self, x, use_extra: bool = True):
        h = checkpoint(self.block, x, use_reentrant=False) if self.checkpointed else self.block(x)
        out = self.c(h)
        return out + self.extra(x) if use_extra else out


def tokens(step: int, rank: int):
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randint(0, 16, (4, 5), generator=g), torch.randint(0, 16, (4, 5), generator=g)


def rows(step: int, rank: int, n: int = 4):
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(n, 8, generator=g), torch.randn(n, 1, generator=g)


def tied_loss(model, step, rank):
    idx, tgt = tokens(step, rank)
    return nn.functional.cross_entropy(model(idx).reshape(-1, 16), tgt.reshape(-1))


def branch_loss(model, step, rank, *, uneven: bool = False, use_extra: bool = True):
    n = 4 + 2 * rank if uneven else 4
    x, y = rows(step, rank, n)
    return nn.functional.mse_loss(model(x, use_extra=use_extra), y)


def freeze_at(model, step):
    if step == 3 and hasattr(model, "b"):
        for p in model.b.parameters():
            p.requires_grad_(False)


SCENARIOS = {
    "tied": (lambda: Tied(), tied_loss, None),
    # ranks see different batch sizes
    "uneven": (lambda: Branchy(), lambda m, s, r: branch_loss(m, s, r, uneven=True), None),
    # a module that no rank runs on odd steps: its params must not move on those steps
    "unused-some-steps": (
        lambda: Branchy(),
        lambda m, s, r: branch_loss(m, s, r, use_extra=s % 2 == 0),
        None,
    ),
    # a module only rank 0 runs (stages 0-2: at stage 3 every rank must run the same modules)
    "unused-on-one-rank": (
        lambda: Branchy(),
        lambda m, s, r: branch_loss(m, s, r, use_extra=r == 0),
        None,
    ),
    "frozen-midway": (lambda: Branchy(), branch_loss, freeze_at),
    "checkpointed": (lambda: Branchy(checkpointed=True), branch_loss, None),
}
SKIP = {("unused-on-one-rank", 3)}


def build(name: str):
    torch.manual_seed(0)
    return SCENARIOS[name][0]()


def train_distributed(rank: int, name: str, stage: int, compile_model: bool = False):
    _, loss_fn, hook = SCENARIOS[name]
    model = build(name)
    if compile_model:
        model = torch.compile(model, backend="aot_eager")
    engine, *_ = zero_core.initialize(model=model, optimizer=adamw, config=cfg(stage))
    for step in range(STEPS):
        if hook:
            hook(engine.module, step)
        engine.backward(loss_fn(engine, step, rank))
        engine.step()
    return {k.removeprefix("_orig_mod."): v for k, v in engine.full_state_dict().items()}


def train_reference(name: str) -> dict:
    _, loss_fn, hook = SCENARIOS[name]
    model = build(name)
    opt = adamw([p for p in model.parameters() if p.requires_grad])
    for step in range(STEPS):
        if hook:
            hook(model, step)
        loss = (loss_fn(model, step, 0) + loss_fn(model, step, 1)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def all_scenarios(rank: int) -> dict:
    out = {}
    for name in SCENARIOS:
        for stage in STAGES:
            if (name, stage) not in SKIP:
                out[name, stage] = train_distributed(rank, name, stage)
    for stage in (0, 1, 2):
        out["compiled", stage] = train_distributed(rank, "checkpointed", stage, compile_model=True)
    return out


@pytest.fixture(scope="module")
def results() -> dict:
    return run_ranks(all_scenarios, timeout=900)[0]


def assert_close(got: dict, ref: dict, tol: float = 1e-5) -> None:
    assert set(got) == set(ref)
    for key, value in ref.items():
        err = (got[key].float() - value.float()).abs().max() / value.float().abs().max()
        assert err < tol, (key, float(err))


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_matches_single_process(results, name, stage):
    if (name, stage) in SKIP:
        pytest.skip("stage 3 gathers a module's params on every rank: all ranks must run it")
    assert_close(results[name, stage], train_reference(name))


@pytest.mark.parametrize("stage", (0, 1, 2))
def test_compiled_model_trains(results, stage):
    assert_close(results["compiled", stage], train_reference("checkpointed"))


def test_frozen_parameters_stop_changing(results):
    # after step 3 the frozen layer keeps its value: weight decay and momentum stop too
    ref = train_reference("frozen-midway")
    model = build("frozen-midway")
    opt = adamw(model.parameters())
    for step in range(3):
        loss = (branch_loss(model, step, 0) + branch_loss(model, step, 1)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(ref["b.weight"], model.b.weight.detach())
    for stage in STAGES:
        assert torch.allclose(results["frozen-midway", stage]["b.weight"], ref["b.weight"])


# -- zero_core.Init and GatheredParameters ---------------------------------------------------


def init_and_gather(rank: int) -> dict:
    torch.manual_seed(1 + rank)  # different seeds: Init must still give every rank rank 0's model
    with zero_core.Init():
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    out = {
        "partitioned": [zero_core.is_partitioned(p) for p in model.parameters()],
        "data_numel": [p.data.numel() for p in model.parameters()],
        "local_numel": [p.zs_shard.local.numel() for p in model.parameters()],
    }
    with zero_core.GatheredParameters(list(model.parameters())):
        out["gathered"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with zero_core.GatheredParameters(model[2].bias, modifier_rank=0):
        if rank == 0:
            model[2].bias.data.fill_(0.5)
    with zero_core.GatheredParameters(model[2].bias):
        out["modified_bias"] = model[2].bias.detach().clone()
    engine, *_ = zero_core.initialize(model=model, optimizer=adamw, config=cfg(3))
    for step in range(3):
        x, y = rows(step, rank)
        engine.backward(nn.functional.mse_loss(engine(x), y.expand(-1, 3)))
        engine.step()
    out["trained"] = engine.full_state_dict()
    out["released"] = [p.data.numel() for p in model.parameters()]
    return out


def test_init_partitions_at_construction_and_trains():
    r0, r1 = run_ranks(init_and_gather)
    assert r0["partitioned"] == [True] * 4
    assert r0["data_numel"] == [0, 0, 0, 0]  # the full weights never stay on a rank
    assert r0["local_numel"] == [64, 8, 24, 2]  # ceil(numel / 2)
    for key in r0["gathered"]:  # rank 0's initial weights on both ranks
        assert torch.equal(r0["gathered"][key], r1["gathered"][key])
    torch.manual_seed(1)  # what rank 0 drew
    ref = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    for key, value in ref.state_dict().items():
        assert torch.equal(r0["gathered"][key], value)
    assert torch.equal(r1["modified_bias"], torch.full((3,), 0.5))
    with torch.no_grad():
        ref[2].bias.fill_(0.5)
    opt = adamw(ref.parameters())
    for step in range(3):
        loss = (
            sum(
                nn.functional.mse_loss(ref(rows(step, r)[0]), rows(step, r)[1].expand(-1, 3))
                for r in (0, 1)
            )
            / 2
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert_close(r0["trained"], ref.state_dict())
    assert r0["released"] == [0, 0, 0, 0]


def test_register_external_parameter():
    results = run_ranks(external_parameter)
    assert_close(results[0], external_reference())


class UsesSibling(nn.Module):
    """The parent reads the embedding matrix directly (not through ``emb``)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.proj = nn.Linear(8, 8)

    def forward(self, idx):
        return torch.tanh(self.proj(self.emb(idx))) @ self.emb.weight.t()


def external_parameter(rank: int) -> dict:
    torch.manual_seed(0)
    model = UsesSibling()
    zero_core.register_external_parameter(model, model.emb.weight)
    engine, *_ = zero_core.initialize(model=model, optimizer=adamw, config=cfg(3))
    for step in range(STEPS):
        idx, tgt = tokens(step, rank)
        engine.backward(nn.functional.cross_entropy(engine(idx).reshape(-1, 16), tgt.reshape(-1)))
        engine.step()
    dist.barrier()
    return engine.full_state_dict()


def external_reference() -> dict:
    torch.manual_seed(0)
    model = UsesSibling()
    opt = adamw(model.parameters())
    for step in range(STEPS):
        loss = 0
        for r in (0, 1):
            idx, tgt = tokens(step, r)
            loss = loss + nn.functional.cross_entropy(model(idx).reshape(-1, 16), tgt.reshape(-1))
        opt.zero_grad()
        (loss / 2).backward()
        opt.step()
    return model.state_dict()

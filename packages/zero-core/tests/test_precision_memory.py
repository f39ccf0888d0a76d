"""fp16 overflow handling, per-rank memory of each stage, stage-3 prefetch (forward and
backward), gradient bucket sizes and collective timeouts, on 2 gloo ranks."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import zero_core
from harness import run_ranks
from training import adamw, config, micro_batch, train_ranks
from zero_core import _reducer, _stage3
from zero_core._reducer import GradReducer
from zero_core._shard import ParamShard, make_buckets


def fp16_overflow(rank: int) -> list:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    cfg = config(2, dtype="fp16")
    cfg["fp16"]["initial_scale_power"] = 8  # 2**16 overflows this model's fp16 gradients
    engine, *_ = zero_core.initialize(model=model, optimizer=adamw, config=cfg)
    seen = []
    for step in range(6):
        handle = None
        if step in (2, 3) and rank == 1:  # an inf gradient on one rank only
            handle = model[0].weight.register_hook(lambda g: g * float("inf"))
        before = engine.full_state_dict()
        x, y = micro_batch(step, 0, rank, 1)
        engine.backward(nn.functional.mse_loss(engine(x).float(), y))
        engine.step()
        after = engine.full_state_dict()
        unchanged = all(torch.equal(before[k], after[k]) for k in before)
        seen.append((engine.loss_scale, engine.skipped_steps, unchanged))
        if handle:
            handle.remove()
    return seen


def test_fp16_overflow_skips_the_step_on_every_rank_and_lowers_the_scale():
    r0, r1 = run_ranks(fp16_overflow)
    assert r0 == r1
    # 2**8 to start; the first overflow uses up one unit of hysteresis (2 -> 1), the
    # second halves the scale; the weights do not move on either skipped step
    assert r0 == [
        (256.0, 0, False),
        (256.0, 0, False),
        (256.0, 1, True),
        (128.0, 2, True),
        (128.0, 2, False),
        (128.0, 2, False),
    ]


def fp16_trains(rank: int) -> dict:
    cfg = config(3, dtype="fp16")
    cfg["fp16"]["initial_scale_power"] = 8
    return train_ranks(rank, cfg, 10)


def test_fp16_training_follows_fp32_closely():
    from training import reference

    got = run_ranks(fp16_trains)[0]
    ref_losses, _ = reference(10)
    assert got["skipped_steps"] == 0
    assert torch.allclose(torch.tensor(got["losses"]), torch.tensor(ref_losses), rtol=2e-2)


def nan_loss(rank: int) -> str:
    engine, *_ = zero_core.initialize(model=nn.Linear(8, 1), optimizer=adamw, config=config(1))
    x, y = micro_batch(0, 0, rank, 1)
    loss = nn.functional.mse_loss(engine(x), y)
    if rank == 0:
        loss = loss * float("nan")
    try:
        engine.backward(loss)
    except FloatingPointError as exc:
        return str(exc)
    return "no error"


def test_nan_loss_on_one_rank_stops_every_rank():
    r0, r1 = run_ranks(nan_loss)
    assert "non-finite loss (nan on rank 0)" in r0
    assert "non-finite loss" in r1  # the other rank stops too, instead of hanging


# -- memory per rank -------------------------------------------------------------------------

SIZES = [(64, 64), (64, 64), (64, 10)]
TOTAL = sum(i * o + o for i, o in SIZES)  # 8970 elements


def partitioned_bytes(rank: int, stage: int) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(i, o) for i, o in SIZES))
    cfg = config(stage, stage3_param_persistence_threshold=0)
    engine, optimizer, *_ = zero_core.initialize(model=model, optimizer=adamw, config=cfg)
    out = {}
    x = torch.randn(4, 64)
    engine.backward(engine(x).square().mean())
    out["full_grads_after_backward"] = sum(
        p.grad.numel() for p in model.parameters() if p.grad is not None
    )
    out["grad_partition"] = sum(s.grad.numel() for s in optimizer.shards if s.grad is not None)
    engine.step()
    state = [t for st in optimizer.inner.state.values() for t in st.values() if t.dim() > 0]
    out["optimizer_state"] = sum(t.numel() for t in state)
    out["masters"] = sum(m.numel() for m in optimizer.masters)
    out["param_data"] = sum(p.data.numel() for p in model.parameters())
    out["param_shards"] = sum(
        p.zs_shard.local.numel() for p in model.parameters() if zero_core.is_partitioned(p)
    )
    return out


def all_stages(rank: int) -> dict:
    return {stage: partitioned_bytes(rank, stage) for stage in (0, 1, 2, 3)}


def test_each_stage_keeps_one_world_th_of_what_it_partitions():
    half = sum(-(-(i * o) // 2) + -(-o // 2) for i, o in SIZES)  # ceil per param
    assert half == TOTAL // 2  # every size here splits evenly
    for r in run_ranks(all_stages):
        s0, s1, s2, s3 = (r[s] for s in range(4))
        assert s0["optimizer_state"] == 2 * TOTAL and s0["param_data"] == TOTAL  # plain DP
        for s in (s1, s2, s3):  # optimizer states and fp32 masters: 1/world
            assert s["optimizer_state"] == 2 * half and s["masters"] == half
        for s in (s2, s3):  # gradients: only this rank's partition survives backward
            assert s["full_grads_after_backward"] == 0 and s["grad_partition"] == half
        assert s1["param_data"] == TOTAL and s2["param_data"] == TOTAL
        assert s3["param_data"] == 0 and s3["param_shards"] == half  # parameters: 1/world


# -- stage-3 prefetch ------------------------------------------------------------------------


def prefetching(rank: int, bucket: int) -> list:
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(16, 16) for _ in range(4)))
    cfg = config(3, stage3_param_persistence_threshold=0, stage3_prefetch_bucket_size=bucket)
    engine, *_ = zero_core.initialize(model=model, optimizer=adamw, config=cfg)
    ahead = []

    def look_ahead(module, inputs, output):
        later = list(model[2].parameters())
        ahead.append(all(_stage3.is_available(p) or id(p) in _stage3._PENDING for p in later))

    def look_back(module, grad_output):
        earlier = list(model[0].parameters())
        behind.append(all(_stage3.is_available(p) or id(p) in _stage3._PENDING for p in earlier))

    behind = []
    model[0].register_forward_hook(look_ahead)
    model[2].register_full_backward_pre_hook(look_back)
    for _ in range(3):
        x = torch.randn(4, 16)
        engine.backward(engine(x).square().mean())
        engine.step()
    return ahead, behind


@pytest.mark.parametrize(("bucket", "expected"), [(10_000, [False, True, True]), (0, [False] * 3)])
def test_stage3_prefetches_the_next_modules_after_the_first_step(bucket, expected):
    # the first forward records the module order; later ones start gathering module 2's
    # params while module 0 runs, within stage3_prefetch_bucket_size elements
    assert run_ranks(prefetching, bucket)[0][0] == expected


@pytest.mark.parametrize(("bucket", "expected"), [(10_000, [True] * 3), (0, [False] * 3)])
def test_stage3_backward_prefetches_the_modules_before_the_current_one(bucket, expected):
    # backward meets the modules in reverse: when module 2's backward begins, module 0's
    # params are already gathering (from the first step on: the trace is recorded by then)
    assert run_ranks(prefetching, bucket)[0][1] == expected


# -- a rank that does not show up -------------------------------------------------------------


def absent_rank(rank: int) -> str:
    engine, *_ = zero_core.initialize(model=nn.Linear(8, 1), optimizer=adamw, config=config(2))
    if rank == 1:
        time.sleep(12)  # longer than the group's 4 s timeout
        return "slept"
    x, y = micro_batch(0, 0, rank, 1)
    try:
        engine.backward(nn.functional.mse_loss(engine(x), y))
    except zero_core.CollectiveError as exc:
        return str(exc)
    return "no error"


def test_a_missing_rank_is_an_error_naming_rank_and_op_not_a_hang():
    r0, r1 = run_ranks(absent_rank, pg_timeout=4, timeout=120)
    assert r1 == "slept"
    assert r0.startswith("rank 0 of 2: all_reduce(MAX) of 1 x torch.float32 failed")


# -- gradient buckets ---------------------------------------------------------------------------


def test_a_bucket_larger_than_the_model_is_cut_into_eighths():
    # DeepSpeed's default bucket sizes (5e8) exceed this 16M-element model: without the cut
    # one bucket would keep every gradient alive to the end ([Note: bucket size])
    params = [nn.Parameter(torch.zeros(1 << 20)) for _ in range(16)]
    shards = [ParamShard(p, f"p{i}", 1, 0) for i, p in enumerate(params)]

    def sizes(bucket: int) -> list[int]:
        return [sum(s.numel for s in b.shards) for b in make_buckets(shards, bucket)]

    assert sizes(500_000_000) == [2 << 20] * 8
    assert sizes(1 << 20) == [1 << 20] * 16  # a smaller configured bucket still rules
    reducer = GradReducer(shards, 500_000_000, torch.float32, False, False, 1.0)
    expected = [b.shards for b in make_buckets(shards[::-1], 500_000_000)]
    assert [b.shards for b in reducer.buckets] == expected and len(expected) == 8
    small = [ParamShard(nn.Parameter(torch.zeros(1000)), f"q{i}", 1, 0) for i in range(16)]
    assert len(make_buckets(small, 500_000_000)) == 1  # under 2**20 elements: not cut


def in_flight(rank: int) -> tuple[int, int]:
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(16, 16) for _ in range(6)))
    cfg = config(2, overlap_comm=True, reduce_bucket_size=300)
    engine, *_ = zero_core.initialize(model=model, optimizer=adamw, config=cfg)
    most = 0
    launch = engine.reducer._launch

    def counting(bucket):
        nonlocal most
        launch(bucket)
        most = max(most, len(engine.reducer._inflight))

    engine.reducer._launch = counting
    x = torch.randn(4, 16)
    engine.backward(engine(x).square().mean())
    engine.step()
    return most, len(engine.reducer.buckets)


def test_overlap_comm_keeps_at_most_two_reductions_in_flight():
    most, buckets = run_ranks(in_flight)[0]
    assert buckets == 6 and most == _reducer.MAX_IN_FLIGHT

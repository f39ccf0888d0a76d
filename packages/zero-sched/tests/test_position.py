"""Resume, explicit indices, state dicts and composition with torch's schedulers."""

from __future__ import annotations

import io

import pytest
import torch

from conftest import REL, flat, lrs, make_optimizer, trajectory
from zero_sched import LRRangeTest, OneCycle, WarmupCosineLR, WarmupDecayLR, WarmupLR

FACTORIES = {
    "WarmupLR": lambda o, **kw: WarmupLR(
        o, warmup_min_lr=0.01, warmup_max_lr=0.2, warmup_num_steps=7, **kw
    ),
    "WarmupDecayLR": lambda o, **kw: WarmupDecayLR(
        o, total_num_steps=20, warmup_num_steps=5, warmup_max_lr=0.3, warmup_type="linear", **kw
    ),
    "WarmupCosineLR": lambda o, **kw: WarmupCosineLR(
        o, total_num_steps=20, warmup_num_steps=4, warmup_min_ratio=0.1, cos_min_ratio=0.05, **kw
    ),
    "OneCycle": lambda o, **kw: OneCycle(
        o,
        cycle_min_lr=0.01,
        cycle_max_lr=0.1,
        cycle_first_step_size=4,
        cycle_second_step_size=5,
        cycle_first_stair_count=2,
        decay_step_size=3,
        decay_lr_rate=0.2,
        decay_mom_rate=0.01,
        **kw,
    ),
    "LRRangeTest": lambda o, **kw: LRRangeTest(
        o, lr_range_test_min_lr=0.001, lr_range_test_step_size=3, lr_range_test_step_rate=0.5, **kw
    ),
}
NAMES = list(FACTORIES)


def state(optimizer) -> list[tuple[float, float]]:
    return [(float(g["lr"]), float(g["betas"][0])) for g in optimizer.param_groups]


@pytest.mark.parametrize("name", NAMES)
def test_resume_with_last_batch_iteration(name):
    opt = make_optimizer(groups=2)
    straight = trajectory(FACTORIES[name](opt), opt, 30)
    for k in (0, 5, 17):
        opt = make_optimizer(groups=2)
        resumed = FACTORIES[name](opt, last_batch_iteration=k)
        # a resumed schedule holds the lr the straight run had after batch k ...
        assert lrs(opt) == pytest.approx(straight[k + 1], rel=REL)
        # ... and continues identically
        assert flat(trajectory(resumed, opt, 30 - k - 1)[1:]) == pytest.approx(
            flat(straight[k + 2 :]), rel=REL
        )


@pytest.mark.parametrize("name", NAMES)
def test_explicit_step_index_jumps_both_ways(name):
    opt = make_optimizer()
    straight = trajectory(FACTORIES[name](opt), opt, 30)
    opt = make_optimizer()
    sched = FACTORIES[name](opt)
    for index in (12, 3, 29, 0, 7):
        sched.step(index)
        assert sched.last_batch_iteration == index
        assert lrs(opt) == pytest.approx(straight[index + 1], rel=REL)
    sched.step()  # plain step continues from the jump
    assert lrs(opt) == pytest.approx(straight[9], rel=REL)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_mid_run(name):
    opt = make_optimizer(groups=2)
    sched = FACTORIES[name](opt)
    for _ in range(9):
        sched.step()
    buffer = io.BytesIO()
    torch.save(sched.state_dict(), buffer)
    expected_now = state(opt)
    expected_next = trajectory(sched, opt, 15)[1:]

    opt2 = make_optimizer(groups=2)
    sched2 = FACTORIES[name](opt2)
    buffer.seek(0)
    sched2.load_state_dict(torch.load(buffer, weights_only=True))
    assert flat(state(opt2)) == pytest.approx(
        flat(expected_now), rel=REL
    )  # lr written back on load
    assert sched2.last_batch_iteration == 8
    assert flat(trajectory(sched2, opt2, 15)[1:]) == pytest.approx(flat(expected_next), rel=REL)


def test_loads_deepspeed_style_state_dict():
    opt = make_optimizer()
    straight = trajectory(FACTORIES["WarmupLR"](opt), opt, 10)
    opt = make_optimizer()
    sched = FACTORIES["WarmupLR"](opt)
    sched.load_state_dict({"last_batch_iteration": 4})
    assert lrs(opt) == pytest.approx(straight[5], rel=REL)
    assert sched.state_dict()["last_batch_iteration"] == 4


def test_load_state_dict_of_another_schedule_is_refused_and_changes_nothing():
    opt = make_optimizer()
    donor = FACTORIES["OneCycle"](make_optimizer())
    sched = FACTORIES["WarmupLR"](opt)
    sched.step(3)
    before = (lrs(opt), sched.state_dict())
    with pytest.raises(ValueError, match="cannot load a OneCycle state dict into WarmupLR"):
        sched.load_state_dict(donor.state_dict())
    assert (lrs(opt), sched.state_dict()) == before
    with pytest.raises(ValueError, match="neither 'last_epoch' nor 'last_batch_iteration'"):
        sched.load_state_dict({"foo": 1})


def test_sequential_lr_restarts_our_schedule_at_its_milestone():
    opt = make_optimizer(lr=1.0)
    constant = torch.optim.lr_scheduler.ConstantLR(opt, factor=0.5, total_iters=100)
    warmup = WarmupLR(
        opt, warmup_min_lr=0.0, warmup_max_lr=1.0, warmup_num_steps=4, warmup_type="linear"
    )
    seq = torch.optim.lr_scheduler.SequentialLR(opt, [constant, warmup], milestones=[3])
    values = []
    for _ in range(8):
        values.append(lrs(opt)[0])
        opt.step()
        seq.step()
    # 3 steps at 0.5, then the warmup from its own beginning: 0, 0, 1/4, 2/4, 3/4
    assert values == pytest.approx([0.5, 0.5, 0.5, 0.0, 0.0, 0.25, 0.5, 0.75], rel=REL, abs=1e-15)


def test_sequential_lr_hands_over_to_torch_cosine():
    opt = make_optimizer(lr=1.0)
    warmup = WarmupLR(opt, warmup_min_lr=0.0, warmup_num_steps=4, warmup_type="linear")
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    seq = torch.optim.lr_scheduler.SequentialLR(opt, [warmup, cosine], milestones=[5])
    values = []
    for _ in range(8):
        values.append(lrs(opt)[0])
        opt.step()
        seq.step()
    half = 0.5  # cos(pi * 2/4) -> 0.5
    assert values[:5] == pytest.approx([0.0, 0.0, 0.25, 0.5, 0.75], abs=1e-15)
    assert values[5] == pytest.approx(1.0)
    assert values[7] == pytest.approx(half)


def test_chained_scheduler_multiplies_in_order():
    opt = make_optimizer(lr=1.0)
    warmup = WarmupLR(
        opt, warmup_min_lr=0.0, warmup_max_lr=1.0, warmup_num_steps=4, warmup_type="linear"
    )
    scale = torch.optim.lr_scheduler.MultiplicativeLR(opt, lr_lambda=lambda _: 0.5)
    chain = torch.optim.lr_scheduler.ChainedScheduler([warmup, scale])
    for _ in range(2):
        opt.step()
        chain.step()
    # after two steps our closed form sets 1/4, then the multiplicative scheduler halves it
    assert lrs(opt)[0] == pytest.approx(0.125, rel=REL)
    assert chain.get_last_lr() == pytest.approx([0.125], rel=REL)


def test_tensor_lr_is_updated_in_place():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=torch.tensor(0.1))
    lr_tensor = opt.param_groups[0]["lr"]
    sched = WarmupLR(
        opt, warmup_min_lr=0.0, warmup_max_lr=1.0, warmup_num_steps=4, warmup_type="linear"
    )
    sched.step(1)
    assert opt.param_groups[0]["lr"] is lr_tensor
    assert float(lr_tensor) == pytest.approx(0.25)


@pytest.mark.parametrize("name", NAMES)
def test_is_a_torch_lr_scheduler(name):
    assert isinstance(FACTORIES[name](make_optimizer()), torch.optim.lr_scheduler.LRScheduler)

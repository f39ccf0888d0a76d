"""WarmupLR, WarmupDecayLR and WarmupCosineLR against hand-computed values."""

from __future__ import annotations

import math

import pytest

from conftest import REL, lrs, make_optimizer, trajectory
from zero_sched import WarmupCosineLR, WarmupDecayLR, WarmupLR


def lr_at(scheduler, optimizer, index: int) -> float:
    """lr once last_batch_iteration == index (index -1 is right after construction)."""
    if index >= 0:
        scheduler.step(index)
    return lrs(optimizer)[0]


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        (-1, 0.01),
        (0, 0.01),  # log(1) = 0
        (1, 0.01 + 0.1 * math.log10(2)),
        (4, 0.01 + 0.1 * math.log10(5)),
        (8, 0.01 + 0.1 * math.log10(9)),
        (9, 0.11),  # log(10)/log(10), the end of warmup
        (10, 0.11),
        (5000, 0.11),
    ],
)
def test_warmup_lr_log(index, expected):
    opt = make_optimizer()
    sched = WarmupLR(opt, warmup_min_lr=0.01, warmup_max_lr=0.11, warmup_num_steps=10)
    assert lr_at(sched, opt, index) == pytest.approx(expected, rel=REL)


@pytest.mark.parametrize(
    ("index", "expected"),
    [(-1, 0.0), (0, 0.0), (1, 0.0001), (3, 0.0003), (9, 0.0009), (10, 0.001), (11, 0.001)],
)
def test_warmup_lr_linear_defaults(index, expected):
    opt = make_optimizer(lr=0.001)
    # warmup_max_lr defaults to the optimizer's lr, warmup_min_lr to 0
    sched = WarmupLR(opt, warmup_num_steps=10, warmup_type="linear")
    assert lr_at(sched, opt, index) == pytest.approx(expected, rel=REL, abs=1e-18)


@pytest.mark.parametrize("steps", [1, 2])
def test_warmup_steps_below_two_act_as_two(steps):
    opt = make_optimizer()
    sched = WarmupLR(
        opt, warmup_min_lr=0.0, warmup_max_lr=1.0, warmup_num_steps=steps, warmup_type="linear"
    )
    assert [row[0] for row in trajectory(sched, opt, 4)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    opt = make_optimizer()
    sched = WarmupLR(opt, warmup_min_lr=0.0, warmup_max_lr=1.0, warmup_num_steps=steps)
    assert [row[0] for row in trajectory(sched, opt, 3)] == [0.0, 0.0, 1.0, 1.0]


def test_warmup_lr_per_group_lists():
    opt = make_optimizer(groups=2)
    sched = WarmupLR(
        opt,
        warmup_min_lr=[0.0, 0.1],
        warmup_max_lr=[1.0, 0.3],
        warmup_num_steps=4,
        warmup_type="linear",
    )
    sched.step(1)
    assert lrs(opt) == pytest.approx([0.25, 0.15], rel=REL)
    assert sched.get_last_lr() == pytest.approx([0.25, 0.15], rel=REL)


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        (-1, 0.0),
        (2, 0.5),  # linear warmup 2/4
        (4, 1.0),  # (12 - 4) / 8
        (6, 0.75),
        (8, 0.5),
        (11, 0.125),
        (12, 0.0),
        (40, 0.0),  # never negative
    ],
)
def test_warmup_decay_lr_linear(index, expected):
    opt = make_optimizer()
    sched = WarmupDecayLR(
        opt, total_num_steps=12, warmup_max_lr=1.0, warmup_num_steps=4, warmup_type="linear"
    )
    assert lr_at(sched, opt, index) == pytest.approx(expected, rel=REL, abs=1e-18)


def test_warmup_decay_lr_decays_to_min_lr_and_has_reference_default_max():
    opt = make_optimizer()
    sched = WarmupDecayLR(opt, total_num_steps=20, warmup_num_steps=10)
    assert sched.max_lrs == [0.001]  # DeepSpeed's default peak for WarmupDecayLR
    opt = make_optimizer()
    sched = WarmupDecayLR(
        opt, total_num_steps=20, warmup_min_lr=0.01, warmup_max_lr=0.11, warmup_num_steps=10
    )
    sched.step(15)  # gamma = (20 - 15) / 10
    assert lrs(opt)[0] == pytest.approx(0.01 + 0.1 * 0.5, rel=REL)
    sched.step(30)
    assert lrs(opt)[0] == pytest.approx(0.01, rel=REL)


def test_warmup_decay_warns_when_total_is_shorter_than_warmup():
    opt = make_optimizer()
    with pytest.warns(
        UserWarning, match="total_num_steps=5 is less than warmup_num_steps=10"
    ) as record:
        WarmupDecayLR(opt, total_num_steps=5, warmup_num_steps=10)
    assert record[0].filename == __file__  # points at the user's line, not zero_sched internals


def cosine_ratio(progress: float, floor: float) -> float:
    return floor + (1 - floor) * (1 + math.cos(math.pi * progress)) / 2


@pytest.mark.parametrize(
    ("index", "ratio"),
    [
        (-1, 0.0),  # before the first step the lr is zero
        (0, 0.05),  # warmup_min_ratio
        (1, 0.05 + 0.95 / 3),
        (2, 0.05 + 0.95 * 2 / 3),
        (3, cosine_ratio(1 / 7, 0.1)),
        (6, cosine_ratio(4 / 7, 0.1)),
        (9, 0.1),  # progress 7/7: cos_min_ratio
        (10, 0.1),  # clamped after the end instead of rising again
        (1000, 0.1),
    ],
)
def test_warmup_cosine_lr(index, ratio):
    opt = make_optimizer(groups=2)
    opt.param_groups[1]["lr"] = 0.02
    sched = WarmupCosineLR(
        opt,
        total_num_steps=10,
        warmup_min_ratio=0.05,
        warmup_num_steps=3,
        cos_min_ratio=0.1,
        warmup_type="linear",
    )
    if index >= 0:
        sched.step(index)
    assert lrs(opt) == pytest.approx([0.1 * ratio, 0.02 * ratio], rel=REL, abs=1e-18)


def test_warmup_cosine_log_warmup_and_reference_defaults():
    opt = make_optimizer(lr=1.0)
    sched = WarmupCosineLR(opt, total_num_steps=2000)
    assert (sched.warmup_min_ratio, sched.warmup_num_steps, sched.cos_min_ratio) == (
        0.0,
        1000,
        0.0001,
    )
    sched.step(99)
    assert lrs(opt)[0] == pytest.approx(math.log(100) / math.log(1000), rel=REL)
    sched.step(1999)
    assert lrs(opt)[0] == pytest.approx(0.0001, rel=REL)

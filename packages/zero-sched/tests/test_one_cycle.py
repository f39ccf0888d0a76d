"""OneCycle against hand-computed values: both phases, stairs, decay and momentum."""

from __future__ import annotations

import pytest

from conftest import REL, lrs, make_optimizer, trajectory
from zero_sched import OneCycle


def beta1(optimizer) -> list[float]:
    return [group["betas"][0] for group in optimizer.param_groups]


def at(scheduler, index: int) -> None:
    if index >= 0:
        scheduler.step(index)


# S1 = 4, S2 = 6, lr 0.01 -> 0.1, momentum 0.9 -> 0.8. Index i has seen b = i + 1 batches.
@pytest.mark.parametrize(
    ("index", "scale"),
    [
        (0, 0.25),  # rising: b / S1
        (1, 0.5),
        (3, 1.0),  # the peak after S1 batches
        (4, 5 / 6),  # falling: (S - b) / S2
        (6, 0.5),
        (8, 1 / 6),
        (9, 0.0),  # the end of the cycle
    ],
)
def test_asymmetric_cycle(index, scale):
    opt = make_optimizer()
    sched = OneCycle(
        opt, cycle_min_lr=0.01, cycle_max_lr=0.1, cycle_first_step_size=4, cycle_second_step_size=6
    )
    at(sched, index)
    assert lrs(opt)[0] == pytest.approx(0.01 + 0.09 * scale, rel=REL)
    assert beta1(opt)[0] == pytest.approx(0.9 - 0.1 * scale, rel=REL)
    assert opt.param_groups[0]["betas"][1] == 0.777  # beta2 is never touched


def test_after_construction_lr_is_min_and_momentum_is_min():
    opt = make_optimizer()
    OneCycle(opt, cycle_min_lr=0.01, cycle_max_lr=0.1)
    assert lrs(opt) == [0.01]
    assert beta1(opt) == [0.8]


def test_symmetric_default_second_step_and_post_cycle_hold():
    opt = make_optimizer()
    sched = OneCycle(opt, cycle_min_lr=0.0, cycle_max_lr=1.0, cycle_first_step_size=2)
    values = [row[0] for row in trajectory(sched, opt, 8)]
    assert values == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0], abs=1e-15)
    assert beta1(opt) == [0.9]  # decay off: holds cycle_max_mom


def test_stairs_hold_the_lr_flat():
    opt = make_optimizer()
    sched = OneCycle(
        opt, cycle_min_lr=0.01, cycle_max_lr=0.1, cycle_first_step_size=4, cycle_first_stair_count=2
    )
    values = [row[0] for row in trajectory(sched, opt, 8)]
    half = 0.01 + 0.09 / 2
    assert values == pytest.approx([0.01, 0.01, half, half, 0.1, half, half, 0.01, 0.01], rel=REL)


def test_different_stair_counts_per_phase():
    opt = make_optimizer()
    sched = OneCycle(
        opt,
        cycle_min_lr=0.0,
        cycle_max_lr=12.0,
        cycle_first_step_size=4,
        cycle_second_step_size=6,
        cycle_first_stair_count=4,
        cycle_second_stair_count=3,
    )
    values = [row[0] for row in trajectory(sched, opt, 10)]
    # rising: floor(4 * b / 4) / 4; falling: floor(3 * (10 - b) / 6) / 3
    assert values == pytest.approx([0, 3, 6, 9, 12, 8, 8, 4, 4, 0, 0], rel=REL, abs=1e-15)


def test_zero_second_step_size_rises_only():
    opt = make_optimizer()
    sched = OneCycle(
        opt, cycle_min_lr=0.0, cycle_max_lr=1.0, cycle_first_step_size=4, cycle_second_step_size=0
    )
    values = [row[0] for row in trajectory(sched, opt, 5)]
    assert values == pytest.approx([0.0, 0.25, 0.5, 0.75, 0.0, 0.0], abs=1e-15)


@pytest.mark.parametrize(
    ("index", "lr", "momentum"),
    [
        (9, 0.01, 0.9),  # end of cycle
        (10, 0.01 / (1 + 0.5 * 0.5), 0.9 * (1 + 0.01 * 0.5)),  # d = 1: interval 1/2
        (11, 0.01 / (1 + 0.5 * 1.0), 0.9 * (1 + 0.01 * 1.0)),
        (13, 0.01 / (1 + 0.5 * 2.0), 0.9 * (1 + 0.01 * 2.0)),
    ],
)
def test_post_cycle_decay(index, lr, momentum):
    opt = make_optimizer()
    sched = OneCycle(
        opt,
        cycle_min_lr=0.01,
        cycle_max_lr=0.1,
        cycle_first_step_size=5,
        decay_step_size=2,
        decay_lr_rate=0.5,
        decay_mom_rate=0.01,
    )
    sched.step(index)
    assert lrs(opt)[0] == pytest.approx(lr, rel=REL)
    assert beta1(opt)[0] == pytest.approx(momentum, rel=REL)


def test_decay_needs_both_step_size_and_rate():
    opt = make_optimizer()
    sched = OneCycle(
        opt,
        cycle_min_lr=0.01,
        cycle_max_lr=0.1,
        cycle_first_step_size=5,
        decay_step_size=0,
        decay_lr_rate=0.5,
    )
    sched.step(30)
    assert lrs(opt) == [0.01]


def test_sgd_momentum_is_cycled():
    opt = make_optimizer("sgd")
    sched = OneCycle(
        opt,
        cycle_min_lr=0.01,
        cycle_max_lr=0.1,
        cycle_first_step_size=4,
        cycle_min_mom=0.85,
        cycle_max_mom=0.95,
    )
    assert opt.param_groups[0]["momentum"] == 0.85
    sched.step(1)  # scale 1/2
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.9, rel=REL)
    assert sched.get_mom() == pytest.approx([0.9], rel=REL)


def test_momentum_off_leaves_betas_alone():
    opt = make_optimizer()
    sched = OneCycle(opt, cycle_min_lr=0.01, cycle_max_lr=0.1, cycle_momentum=False)
    sched.step(10)
    assert opt.param_groups[0]["betas"] == (0.5, 0.777)
    assert sched.get_mom() is None


def test_optimizer_without_momentum_warns_and_schedules_lr_only():
    opt = make_optimizer("adagrad")
    with pytest.warns(UserWarning, match="Adagrad has neither 'betas' nor 'momentum'"):
        sched = OneCycle(opt, cycle_min_lr=0.01, cycle_max_lr=0.1, cycle_first_step_size=4)
    sched.step(3)
    assert lrs(opt) == pytest.approx([0.1], rel=REL)
    assert "momentum" not in opt.param_groups[0]


def test_per_group_bounds():
    opt = make_optimizer(groups=2)
    sched = OneCycle(
        opt,
        cycle_min_lr=[0.0, 1.0],
        cycle_max_lr=[1.0, 3.0],
        cycle_first_step_size=2,
        cycle_min_mom=[0.8, 0.5],
        cycle_max_mom=[0.9, 0.7],
    )
    sched.step(0)  # scale 1/2
    assert lrs(opt) == pytest.approx([0.5, 2.0], rel=REL)
    assert beta1(opt) == pytest.approx([0.85, 0.6], rel=REL)


def test_second_cycle_does_not_start_again():
    # DeepSpeed's schedule is one cycle then the decay phase, whatever the step count.
    opt = make_optimizer()
    sched = OneCycle(opt, cycle_min_lr=0.0, cycle_max_lr=1.0, cycle_first_step_size=2)
    sched.step(5)  # would be mid-rise of a second cycle
    assert lrs(opt) == [0.0]

"""The LRRangeTest schedule against hand-computed values."""

from __future__ import annotations

import pytest

from conftest import REL, lrs, make_optimizer
from zero_sched import LRRangeTest


@pytest.mark.parametrize(
    ("staircase", "index", "expected"),
    [
        (False, -1, 0.01),
        (False, 0, 0.01 * (1 + 2 * 0.1)),
        (False, 4, 0.02),  # 1 + 2 * 5/10
        (False, 19, 0.05),  # 1 + 2 * 20/10
        (True, -1, 0.01),
        (True, 8, 0.01),  # floor(9/10) = 0
        (True, 9, 0.03),  # floor(10/10) = 1
        (True, 18, 0.03),
        (True, 19, 0.05),
    ],
)
def test_growth(staircase, index, expected):
    opt = make_optimizer()
    sched = LRRangeTest(
        opt,
        lr_range_test_min_lr=0.01,
        lr_range_test_step_size=10,
        lr_range_test_step_rate=2.0,
        lr_range_test_staircase=staircase,
    )
    if index >= 0:
        sched.step(index)
    assert lrs(opt)[0] == pytest.approx(expected, rel=REL)


def test_reference_defaults_and_per_group_min():
    opt = make_optimizer(groups=2)
    sched = LRRangeTest(opt, lr_range_test_min_lr=[1e-3, 1e-2])
    assert (sched.step_size, sched.step_rate, sched.staircase) == (2000, 1.0, False)
    sched.step(1999)  # 1 + 2000/2000
    assert lrs(opt) == pytest.approx([2e-3, 2e-2], rel=REL)

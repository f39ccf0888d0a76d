"""build_scheduler: every type from a config block, and every kind of bad input."""

from __future__ import annotations

import copy
from importlib.metadata import entry_points

import pytest
import torch

import zero_sched
from conftest import REL, lrs, make_optimizer, trajectory
from zero_sched import SCHEDULES, SchedulerConfigError, build_scheduler

CONFIGS = {
    "LRRangeTest": {
        "lr_range_test_min_lr": 0.0001,
        "lr_range_test_step_size": 200,
        "lr_range_test_step_rate": 5,
        "lr_range_test_staircase": False,
    },
    "OneCycle": {
        "cycle_min_lr": 0.002,
        "cycle_max_lr": 0.005,
        "cycle_first_step_size": 20,
        "cycle_second_step_size": 20,
        "cycle_first_stair_count": 3,
        "decay_step_size": 10,
        "decay_lr_rate": 0.001,
    },
    "WarmupLR": {"warmup_min_lr": 0, "warmup_max_lr": 0.001, "warmup_num_steps": 10},
    "WarmupDecayLR": {
        "total_num_steps": 50,
        "warmup_min_lr": 0,
        "warmup_max_lr": 0.001,
        "warmup_num_steps": 10,
        "warmup_type": "linear",
    },
    "WarmupCosineLR": {
        "total_num_steps": 50,
        "warmup_min_ratio": 0.1,
        "warmup_num_steps": 10,
        "cos_min_ratio": 0.01,
    },
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_equals_direct_construction(name):
    opt_a, opt_b = make_optimizer(groups=2), make_optimizer(groups=2)
    built = build_scheduler(opt_a, {"type": name, "params": CONFIGS[name]})
    direct = SCHEDULES[name](opt_b, **CONFIGS[name])
    assert type(built) is SCHEDULES[name]
    a, b = trajectory(built, opt_a, 80), trajectory(direct, opt_b, 80)
    assert [v for row in a for v in row] == pytest.approx([v for row in b for v in row], rel=REL)


def test_whole_deepspeed_config_is_accepted():
    config = {
        "train_batch_size": 8,
        "optimizer": {"type": "Adam", "params": {"lr": 0.001}},
        "scheduler": {
            "type": "WarmupLR",
            "params": {"warmup_max_lr": 0.5, "warmup_num_steps": 4, "warmup_type": "linear"},
        },
    }
    opt = make_optimizer()
    sched = build_scheduler(opt, config)
    sched.step(1)
    assert lrs(opt) == pytest.approx([0.5 / 4], rel=REL)


def test_params_may_be_omitted_when_all_have_defaults():
    opt = make_optimizer(lr=0.3)
    sched = build_scheduler(opt, {"type": "WarmupLR"})
    assert sched.max_lrs == [0.3] and sched.warmup_num_steps == 1000


def test_integral_floats_from_json_are_step_counts():
    sched = build_scheduler(
        make_optimizer(), {"type": "WarmupLR", "params": {"warmup_num_steps": 1e3}}
    )
    assert sched.warmup_num_steps == 1000


def snapshot(optimizer):
    return copy.deepcopy(optimizer.param_groups[0] | {"params": None}), copy.deepcopy(
        optimizer.defaults
    )


BAD = [
    (
        {"type": "WarmupLr"},
        r"unknown scheduler type 'WarmupLr' \(did you mean 'WarmupLR'\?\)\. "
        r"Valid types: LRRangeTest, OneCycle, WarmupLR, WarmupDecayLR, WarmupCosineLR",
    ),
    ({"type": "Banana"}, r"unknown scheduler type 'Banana'\. Valid types: LRRangeTest"),
    ({"params": {}}, r"no 'type'; set it to one of LRRangeTest"),
    (
        {"type": "WarmupLR", "params": {"warmup_num_step": 10}},
        r"WarmupLR has no parameter 'warmup_num_step' \(did you mean 'warmup_num_steps'\?\)",
    ),
    (
        {
            "type": "OneCycle",
            "params": {"cycle_min_lr": 0.1, "cycle_max_lr": 1, "cycle_momentun": True},
        },
        r"'cycle_momentun' \(did you mean 'cycle_momentum'\?\)",
    ),
    (
        {"type": "WarmupLR", "params": {"warmup_num_steps": "100"}},
        r"warmup_num_steps must be an integer step count, got '100' \(str\)",
    ),
    (
        {"type": "WarmupDecayLR", "params": {"total_num_steps": "auto"}},
        r"total_num_steps must be an integer step count, got 'auto' \(str\); \"auto\" is a placeholder",
    ),
    (
        {"type": "WarmupLR", "params": {"warmup_num_steps": 10.5}},
        r"warmup_num_steps must be an integer",
    ),
    (
        {"type": "WarmupLR", "params": {"warmup_num_steps": True}},
        r"warmup_num_steps must be an integer",
    ),
    ({"type": "WarmupLR", "params": {"warmup_max_lr": "1e-3"}}, r"warmup_max_lr must be a number"),
    (
        {"type": "WarmupLR", "params": {"warmup_type": "cosine"}},
        r"warmup_type must be one of 'log', 'linear', got 'cosine'",
    ),
    (
        {"type": "LRRangeTest", "params": {"lr_range_test_staircase": "false"}},
        r"lr_range_test_staircase must be true or false",
    ),
    (
        {"type": "WarmupLR", "params": {"warmup_num_steps": 0}},
        r"warmup_num_steps must be positive, got 0",
    ),
    (
        {"type": "WarmupDecayLR", "params": {"total_num_steps": -5}},
        r"total_num_steps must be positive",
    ),
    (
        {"type": "LRRangeTest", "params": {"lr_range_test_step_size": 0}},
        r"lr_range_test_step_size must be positive",
    ),
    (
        {
            "type": "OneCycle",
            "params": {"cycle_min_lr": 0.1, "cycle_max_lr": 1, "cycle_first_step_size": 0},
        },
        r"cycle_first_step_size must be positive",
    ),
    (
        {
            "type": "OneCycle",
            "params": {"cycle_min_lr": 0.1, "cycle_max_lr": 1, "decay_step_size": -1},
        },
        r"decay_step_size must be >= 0",
    ),
    (
        {"type": "WarmupLR", "params": {"warmup_min_lr": 0.1, "warmup_max_lr": 0.01}},
        r"warmup_min_lr=0.1 is above warmup_max_lr=0.01",
    ),
    (
        {"type": "OneCycle", "params": {"cycle_min_lr": 1.0, "cycle_max_lr": 0.1}},
        r"cycle_min_lr=1.0 is above cycle_max_lr=0.1",
    ),
    (
        {
            "type": "OneCycle",
            "params": {"cycle_min_lr": 0.1, "cycle_max_lr": 1, "cycle_min_mom": 0.95},
        },
        r"cycle_min_mom=0.95 is above cycle_max_mom=0.9",
    ),
    (
        {"type": "OneCycle", "params": {"cycle_min_lr": 0.1, "cycle_max_lr": [1, 2, 3]}},
        r"cycle_max_lr has 3 values but the optimizer has 1 param groups",
    ),
    (
        {"type": "WarmupCosineLR", "params": {"total_num_steps": 10, "cos_min_ratio": 1.5}},
        r"cos_min_ratio must be <= 1.0",
    ),
    ({"type": "WarmupDecayLR", "params": {}}, r"WarmupDecayLR needs total_num_steps"),
    ({"type": "OneCycle", "params": {"cycle_max_lr": 1}}, r"OneCycle needs cycle_min_lr"),
    ({"type": "WarmupLR", "params": [1, 2]}, r"'params' must be an object"),
    ({"type": "WarmupLR", "parms": {}}, r"unexpected keys \['parms'\]"),
    (
        {"type": "WarmupLR", "params": {"last_batch_iteration": -3}},
        r"last_batch_iteration must be >= -1",
    ),
]


@pytest.mark.parametrize(("config", "message"), BAD, ids=[m[:40] for _, m in BAD])
def test_bad_config_is_refused_and_changes_nothing(config, message):
    opt = make_optimizer()
    before = snapshot(opt)
    with pytest.raises(SchedulerConfigError, match=message):
        build_scheduler(opt, config)
    assert snapshot(opt) == before  # no lr written, no initial_lr added
    assert not hasattr(opt.step, "_wrapped_by_lr_sched")


def test_config_errors_are_value_errors():
    assert issubclass(SchedulerConfigError, ValueError)


def test_not_an_optimizer():
    with pytest.raises(
        TypeError, match=r"optimizer must be a torch.optim.Optimizer .* got builtins.dict"
    ):
        build_scheduler({"lr": 0.1}, {"type": "WarmupLR"})
    with pytest.raises(TypeError, match=r"optimizer must be a torch\.optim\.Optimizer"):
        zero_sched.WarmupLR(object())


def test_wrapper_exposing_optimizer_is_unwrapped():
    class Wrapper:
        def __init__(self, optimizer):
            self.optimizer = optimizer

    opt = make_optimizer()
    sched = build_scheduler(Wrapper(opt), {"type": "WarmupLR", "params": {"warmup_min_lr": 0.05}})
    assert sched.optimizer is opt and lrs(opt) == [0.05]


def test_entry_points_register_every_schedule():
    found = {ep.name: ep.load() for ep in entry_points(group="zerospeed.schedulers")}
    assert found == SCHEDULES


def test_torch_optimizer_types_other_than_adam_work():
    opt = torch.optim.RMSprop([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.5)
    sched = build_scheduler(
        opt,
        {
            "type": "OneCycle",
            "params": {"cycle_min_lr": 0.1, "cycle_max_lr": 1.0, "cycle_first_step_size": 2},
        },
    )
    sched.step(0)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.85, rel=REL)

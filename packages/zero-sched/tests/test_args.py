"""The argparse helpers: DeepSpeed's flag names, command line over config."""

from __future__ import annotations

import argparse

import pytest

from zero_sched import (
    add_tuning_arguments,
    build_scheduler,
    get_config_from_args,
    get_lr_from_config,
    override_1cycle_params,
    override_lr_range_test_params,
    override_params,
    override_warmupCosineLR_params,
    override_warmupLR_params,
    parse_arguments,
)


def parse(*argv: str) -> argparse.Namespace:
    return add_tuning_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_config_from_args_contains_only_given_flags():
    args = parse(
        "--lr_schedule",
        "OneCycle",
        "--cycle_min_lr",
        "0.001",
        "--cycle_max_lr",
        "0.01",
        "--cycle_first_step_size",
        "50",
        "--cycle_momentum",
    )
    config, error = get_config_from_args(args)
    assert error is None
    assert config == {
        "type": "OneCycle",
        "params": {
            "cycle_min_lr": 0.001,
            "cycle_max_lr": 0.01,
            "cycle_first_step_size": 50,
            "cycle_momentum": True,
        },
    }


@pytest.mark.parametrize(
    ("argv", "params"),
    [
        (
            [
                "--lr_schedule",
                "LRRangeTest",
                "--lr_range_test_staircase",
                "--lr_range_test_step_size",
                "7",
            ],
            {"lr_range_test_staircase": True, "lr_range_test_step_size": 7},
        ),
        (
            ["--lr_schedule", "WarmupLR", "--warmup_num_steps", "5", "--warmup_type", "linear"],
            {"warmup_num_steps": 5, "warmup_type": "linear"},
        ),
        (
            [
                "--lr_schedule",
                "WarmupDecayLR",
                "--total_num_steps",
                "2000",
                "--warmup_max_lr",
                "0.2",
            ],
            {"total_num_steps": 2000, "warmup_max_lr": 0.2},
        ),
        (
            [
                "--lr_schedule",
                "WarmupCosineLR",
                "--total_num_steps",
                "2000",
                "--cos_min_ratio",
                "0.2",
                "--warmup_min_lr",
                "0.5",
            ],  # a WarmupLR flag is not copied into a cosine config
            {"total_num_steps": 2000, "cos_min_ratio": 0.2},
        ),
    ],
)
def test_config_from_args_builds(argv, params):
    from conftest import make_optimizer

    config, error = get_config_from_args(parse(*argv))
    assert error is None and config["params"] == params
    build_scheduler(make_optimizer(), config)


def test_config_from_args_errors():
    assert get_config_from_args(parse()) == (None, "--lr_schedule not specified on command line")
    assert get_config_from_args(argparse.Namespace())[0] is None
    bad = argparse.Namespace(lr_schedule="Nope")
    config, error = get_config_from_args(bad)
    assert config is None and "Nope is not a supported LR schedule" in error


def test_parser_rejects_unknown_schedule_and_warmup_type():
    with pytest.raises(SystemExit):
        parse("--lr_schedule", "Nope")
    with pytest.raises(SystemExit):
        parse("--warmup_type", "cosine")


def test_command_line_overrides_config_only_where_given():
    params = {"warmup_min_lr": 0.0, "warmup_max_lr": 0.001, "warmup_num_steps": 1000}
    override_warmupLR_params(parse("--warmup_max_lr", "0.05"), params)
    assert params == {"warmup_min_lr": 0.0, "warmup_max_lr": 0.05, "warmup_num_steps": 1000}

    params = {"cycle_min_lr": 0.1, "cycle_max_lr": 1.0}
    override_1cycle_params(parse("--cycle_max_lr", "2", "--decay_lr_rate", "0.5"), params)
    assert params == {"cycle_min_lr": 0.1, "cycle_max_lr": 2.0, "decay_lr_rate": 0.5}

    params = {"lr_range_test_min_lr": 0.1}
    override_lr_range_test_params(parse("--lr_range_test_step_rate", "3"), params)
    assert params == {"lr_range_test_min_lr": 0.1, "lr_range_test_step_rate": 3.0}

    params = {"cos_min_ratio": 0.1}
    override_warmupCosineLR_params(parse("--warmup_min_ratio", "0.3"), params)
    assert params == {"cos_min_ratio": 0.1, "warmup_min_ratio": 0.3}


def test_override_params_all_or_one_type():
    args = parse("--cycle_max_lr", "2", "--warmup_num_steps", "3")
    everything: dict = {}
    override_params(args, everything)
    assert everything == {"cycle_max_lr": 2.0, "warmup_num_steps": 3}
    one: dict = {}
    override_params(args, one, "OneCycle")
    assert one == {"cycle_max_lr": 2.0}
    with pytest.raises(ValueError, match="unknown schedule type 'X'"):
        override_params(args, one, "X")


def test_parse_arguments_leaves_other_flags():
    args, rest = parse_arguments(["--lr_schedule", "WarmupLR", "--batch", "3"])
    assert args.lr_schedule == "WarmupLR" and rest == ["--batch", "3"]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"type": "LRRangeTest", "params": {"lr_range_test_min_lr": 0.002}}, (0.002, "")),
        ({"type": "LRRangeTest", "params": {}}, (1e-3, "")),
        ({"type": "OneCycle", "params": {"cycle_max_lr": 0.3}}, (0.3, "")),
        ({"type": "WarmupLR", "params": {"warmup_max_lr": 0.4}}, (0.4, "")),
        ({"type": "WarmupDecayLR", "params": {"total_num_steps": 3}}, (0.001, "")),
    ],
)
def test_get_lr_from_config(config, expected):
    assert get_lr_from_config(config) == expected


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"params": {}}, "LR schedule type not defined in config"),
        ({"type": "WarmupLR"}, "LR schedule params not defined in config"),
        ({"type": "Foo", "params": {}}, "Foo is not a valid LR schedule"),
        ({"type": "WarmupCosineLR", "params": {}}, "scales the optimizer lr"),
        ({"type": "WarmupLR", "params": {}}, "uses the optimizer's lr"),
        ({"type": "OneCycle", "params": {}}, "no cycle_max_lr"),
    ],
)
def test_get_lr_from_config_without_an_lr(config, message):
    lr, reason = get_lr_from_config(config)
    assert lr is None and message in reason

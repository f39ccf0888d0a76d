"""build_optimizer from DeepSpeed config blocks, and the entry points zero-core reads."""

from __future__ import annotations

import math
from importlib.metadata import entry_points

import pytest
import torch

import zero_optim
from zero_optim import (
    CPUAdagrad,
    CPUAdam,
    CPULion,
    FusedAdam,
    FusedLamb,
    FusedLion,
    OptimizerConfigError,
    build_optimizer,
)


def params():
    return [torch.nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize(
    ("config", "cls", "adamw_mode"),
    [
        (
            {"type": "Adam", "params": {"lr": 0.1}},
            CPUAdam,
            True,
        ),  # DeepSpeed: adam_w_mode defaults true
        ({"type": "Adam", "params": {"adam_w_mode": False}}, CPUAdam, False),
        (
            {"type": "AdamW", "params": {"adam_w_mode": False}},
            CPUAdam,
            True,
        ),  # AdamW always decouples
        ({"type": "adam"}, CPUAdam, True),  # case-insensitive, as in DeepSpeed
        ({"type": "FusedAdam"}, FusedAdam, True),
        ({"type": "Lamb", "params": {"max_coeff": 5.0}}, FusedLamb, None),
        ({"type": "Lion"}, CPULion, None),
        ({"type": "FusedLion"}, FusedLion, None),
        ({"type": "Adagrad", "params": {"eps": 1e-8}}, CPUAdagrad, None),
    ],
)
def test_types_map_to_our_optimizers(config, cls, adamw_mode):
    opt = build_optimizer(params(), config)
    assert type(opt) is cls
    if adamw_mode is not None:
        assert opt.param_groups[0]["adamw_mode"] is adamw_mode


def test_values_reach_the_optimizer():
    opt = build_optimizer(
        params(),
        {
            "type": "Adam",
            "params": {"lr": 0.01, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.1},
        },
    )
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (
        0.01,
        (0.8, 0.99),
        1e-6,
        0.1,
    )


@pytest.mark.parametrize(
    ("adam_w_mode", "cls"), [(True, torch.optim.AdamW), (False, torch.optim.Adam)]
)
def test_torch_adam(adam_w_mode, cls):
    opt = build_optimizer(
        params(), {"type": "Adam", "params": {"torch_adam": True, "adam_w_mode": adam_w_mode}}
    )
    assert type(opt) is cls


def test_whole_deepspeed_config_and_torch_fallback():
    opt = build_optimizer(
        params(),
        {
            "train_batch_size": 4,
            "optimizer": {"type": "SGD", "params": {"lr": 0.5, "momentum": 0.9}},
        },
    )
    assert type(opt) is torch.optim.SGD and opt.param_groups[0]["momentum"] == 0.9
    assert type(build_optimizer(params(), {"type": "rmsprop"})) is torch.optim.RMSprop


def test_device_params_get_the_fused_classes():
    meta = [torch.nn.Parameter(torch.zeros(3, device="meta"))]
    assert type(build_optimizer(meta, {"type": "Adam"})) is FusedAdam
    assert type(build_optimizer(meta, {"type": "Lion"})) is FusedLion
    assert type(build_optimizer(meta, {"type": "Adagrad"})) is torch.optim.Adagrad


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"type": "Adamm"},
            r"unknown optimizer type 'Adamm' \(did you mean 'Adam'\?\)\. Valid types: Adam, AdamW",
        ),
        (
            {"type": "Adam", "params": {"weight_decy": 0.1}},
            r"'Adam' \(CPUAdam\) has no parameter 'weight_decy' \(did you mean 'weight_decay'\?\)",
        ),
        (
            {"type": "SGD", "params": {"lr": 0.1, "betas": [0.9, 0.99]}},
            r"'SGD' \(SGD\) has no parameter 'betas'",
        ),
        (
            {"type": "Adam", "params": {"lr": math.nan}},
            r"optimizer params.lr must be a finite number >= 0, got nan",
        ),
        ({"type": "Adam", "params": {"lr": -0.1}}, r"params.lr must be a finite number >= 0"),
        (
            {"type": "Lion", "params": {"betas": [0.9, 1.2]}},
            r"params.betas must be two numbers in \[0, 1\)",
        ),
        (
            {"type": "Adam", "params": {"torch_adam": "yes"}},
            r"params.torch_adam must be true or false",
        ),
        ({"params": {}}, "optimizer config has no 'type'"),
        ({"type": "Adam", "parameters": {}}, r"unexpected keys \['parameters'\]"),
        ({"type": "Adam", "params": {"amsgrad": True}}, "CPUAdam does not implement amsgrad"),
    ],
)
def test_bad_config(config, message):
    with pytest.raises(OptimizerConfigError, match=message):
        build_optimizer(params(), config)


def test_entry_points_build_each_type():
    found = {ep.name: ep.load() for ep in entry_points(group="zerospeed.optimizers")}
    assert set(found) == {
        "Adam", "AdamW", "Lamb", "Lion", "Adagrad", "OneBitAdam", "ZeroOneAdam", "OneBitLamb"
    }  # fmt: skip
    opt = found["AdamW"](params(), lr=0.2, adam_w_mode=False)
    assert (
        type(opt) is CPUAdam
        and opt.param_groups[0]["adamw_mode"]
        and opt.param_groups[0]["lr"] == 0.2
    )
    assert type(found["Lamb"](params())) is FusedLamb


def test_optimizer_types_lists_ours_then_torch():
    names = zero_optim.optimizer_types()
    assert names[:5] == ["Adam", "AdamW", "Lamb", "Lion", "Adagrad"]
    assert "SGD" in names and names.count("Adagrad") == 1


def test_report_section():
    section = zero_optim.report()
    assert section["version"] == zero_optim.__version__
    assert zero_optim.cpu_features()["isa"] in section["cpu kernels"]

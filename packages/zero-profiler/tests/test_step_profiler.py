"""The "flops_profiler" config block and the step-driven profiler the engine will use."""

from __future__ import annotations

import pytest
import torch

from conftest import MLP, assert_same_fingerprint, model_fingerprint
from zero_profiler import ConfigError, FlopsProfilerConfig, flops_profiler_from_config


def test_defaults_match_the_reference() -> None:
    config = FlopsProfilerConfig.from_dict({})
    assert (config.enabled, config.profile_step, config.module_depth) == (False, 1, -1)
    assert (config.top_modules, config.detailed, config.output_file) == (1, True, None)


@pytest.mark.parametrize(
    ("block", "match"),
    [
        (
            {"profile_stp": 3},
            r"unknown key \"flops_profiler.profile_stp\" \(did you mean 'profile_step'\?\)",
        ),
        ({"enabled": "true"}, r'"flops_profiler.enabled" must be bool'),
        ({"profile_step": True}, r'"flops_profiler.profile_step" must be int'),
        ({"output_file": 3}, r'"flops_profiler.output_file" must be str'),
    ],
)
def test_bad_blocks(block: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FlopsProfilerConfig.from_dict(block)
    with pytest.raises(ValueError, match="top_modules >= 1"):
        FlopsProfilerConfig.from_dict({"top_modules": 0})


def test_profiles_exactly_the_configured_step(tmp_path) -> None:
    model = MLP()
    before = model_fingerprint(model)
    out = tmp_path / "prof.txt"
    config = {
        "train_batch_size": 5,  # a whole DeepSpeed config is accepted
        "flops_profiler": {
            "enabled": True,
            "profile_step": 2,
            "module_depth": 1,
            "top_modules": 2,
            "detailed": False,
            "output_file": str(out),
        },
    }
    prof = flops_profiler_from_config(model, config)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    reports = []
    for step in range(4):
        prof.begin_step(step)
        model(torch.randn(5, 8)).sum().backward()
        opt.step()
        reports.append(prof.end_step(step, backward_latency=0.001, step_latency=0.0005))
    assert [r is not None for r in reports] == [False, False, True, False]
    text = out.read_text()
    assert "Profile summary at step 2:" in text
    assert "Detailed profile" not in text
    assert "step latency:" in text and "500 us" in text
    assert "bwd flops (measured):" in text
    assert "depth 1:" in text and "depth 2:" not in text
    opt.zero_grad(set_to_none=True)
    assert_same_fingerprint(before[:2], model_fingerprint(model)[:2])  # no hooks left


def test_disabled_does_nothing() -> None:
    model = MLP()
    prof = flops_profiler_from_config(model, {"enabled": False, "profile_step": 0})
    prof.begin_step(0)
    model(torch.randn(5, 8))
    assert prof.end_step(0) is None
    assert not prof.enabled

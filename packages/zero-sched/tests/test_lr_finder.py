"""lr_range_test on a real (tiny) model: exact lrs, divergence stop, suggestion, restore."""

from __future__ import annotations

import math

import pytest
import torch

from zero_sched import build_scheduler, lr_range_test


def regression_problem(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(64, 4, generator=generator)
    targets = inputs @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.3 * torch.randn(
        64, 1, generator=generator
    )
    batches = [(inputs[i : i + 16], targets[i : i + 16]) for i in range(0, 64, 16)]
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 1)
    return model, batches


def ema(values, beta):
    out, average = [], 0.0
    for i, v in enumerate(values):
        average = beta * average + (1 - beta) * v
        out.append(average / (1 - beta ** (i + 1)))
    return out


def run(seed=0, **kwargs):
    model, batches = regression_problem(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=123.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = lr_range_test(model, torch.nn.functional.mse_loss, batches, optimizer, **kwargs)
    return result, model, optimizer, before


def test_diverges_and_suggests_the_best_lr():
    result, model, optimizer, before = run(
        lr_range_test_min_lr=1e-2, lr_range_test_step_rate=1.0, max_steps=300
    )
    n = len(result.lrs)
    # the lr of step i is min_lr * (1 + rate * i / step_size), exactly the LRRangeTest schedule
    assert result.lrs == pytest.approx([1e-2 * (1 + i) for i in range(n)], rel=1e-12)
    assert result.diverged and n < 300
    assert result.smoothed_losses == pytest.approx(ema(result.losses, 0.9), rel=1e-12)
    best = min(range(n), key=result.smoothed_losses.__getitem__)
    assert result.suggested_max_lr == result.lrs[best]
    assert result.suggested_min_lr == pytest.approx(result.lrs[best] / 10)
    # SGD on this quadratic diverges above lr ~ 2 / lambda_max; the suggestion is below that
    assert 0.01 < result.suggested_max_lr < result.lrs[-1]
    assert result.smoothed_losses[-1] > 4 * min(result.smoothed_losses)
    # restore=True: model and optimizer are as before
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert (
        optimizer.param_groups[0]["lr"] == 123.0 and "initial_lr" not in optimizer.param_groups[0]
    )


def test_is_deterministic():
    first, *_ = run(lr_range_test_min_lr=1e-3, lr_range_test_step_rate=1.0, max_steps=50)
    second, *_ = run(lr_range_test_min_lr=1e-3, lr_range_test_step_rate=1.0, max_steps=50)
    assert first == second


def test_bounded_by_max_steps_without_divergence():
    result, model, _, before = run(
        lr_range_test_min_lr=1e-4, lr_range_test_step_rate=0.01, max_steps=12, restore=False
    )
    assert len(result.lrs) == 12 and not result.diverged
    assert result.suggested_max_lr == result.lrs[-1]  # still improving: only a lower bound
    assert not torch.equal(model.weight, before["weight"])  # restore=False keeps the training


def test_one_cycle_config_builds():
    result, *_ = run(lr_range_test_min_lr=1e-2, lr_range_test_step_rate=1.0, max_steps=300)
    config = result.one_cycle_config(cycle_first_step_size=100, cycle_momentum=False)
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    scheduler = build_scheduler(optimizer, config)
    scheduler.step(99)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(result.suggested_max_lr)
    assert "smoothed loss" in result.text_chart()


def test_custom_forward_and_nan_first_loss():
    model, batches = regression_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    result = lr_range_test(
        model,
        None,
        [{"x": x, "y": y} for x, y in batches],
        optimizer,
        forward=lambda m, b: torch.nn.functional.mse_loss(m(b["x"]), b["y"]),
        max_steps=3,
    )
    assert len(result.losses) == 3
    with pytest.raises(RuntimeError, match="the first loss is nan"):
        lr_range_test(model, None, batches, optimizer, forward=lambda m, b: torch.tensor(math.nan))
    with pytest.raises(TypeError, match=r"\(inputs, targets\) pair"):
        lr_range_test(model, torch.nn.functional.mse_loss, [torch.zeros(3)], optimizer)


def test_bad_arguments():
    model, batches = regression_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="max_steps must be positive"):
        lr_range_test(model, torch.nn.functional.mse_loss, batches, optimizer, max_steps=0)
    with pytest.raises(ValueError, match="smoothing must be below 1"):
        lr_range_test(model, torch.nn.functional.mse_loss, batches, optimizer, smoothing=1.0)
    with pytest.raises(RuntimeError, match="produced no batch"):
        lr_range_test(model, torch.nn.functional.mse_loss, [], optimizer)


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "lrrt.png"
    run(lr_range_test_min_lr=1e-3, lr_range_test_step_rate=1.0, max_steps=40, plot_path=target)
    assert target.read_bytes()[:4] == b"\x89PNG"

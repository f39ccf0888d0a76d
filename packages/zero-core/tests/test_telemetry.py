"""The engine's observers from the config: monitors, wall-clock timers, flops profiler, comms
logger and the progress line, against values computed another way (the losses and learning
rates the loop saw, sleeps of known length, zero_profiler's own counts and a hand count,
the partition layout's message sizes).

Tests that need zero-profiler skip without it; the missing-package error, the progress
line and the "all off" behaviour run with zero-core alone.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

import zero_core
from harness import run_ranks
from zero_core import _telemetry

PHASES = ("forward", "backward", "backward_inner", "backward_allreduce", "step")


@pytest.fixture
def profiler():
    return pytest.importorskip("zero_profiler")


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def base(**extra) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 2,
        "steps_per_print": 1000,
        "optimizer": {"type": "SGD", "params": {"lr": 0.1}},
        **extra,
    }


def train(engine, steps: int, gas: int = 1, seed: int = 0) -> list[list[float]]:
    """``steps`` optimizer steps; the losses given to backward, per step."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        losses = []
        for _ in range(gas):
            loss = engine(torch.randn(2, 4, generator=g)).pow(2).mean()
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        out.append(losses)
    return out


def read_csv(directory: Path, label: str) -> list[tuple[int, float]]:
    path = directory / (label.replace("/", "_") + ".csv")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", label]
    return [(int(step), float(value)) for step, value in rows[1:]]


# -- monitors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gas", "fp16"), [(1, False), (3, False), (1, True)], ids=["fp32", "fp32-gas3", "fp16"]
)
def test_csv_monitor_one_row_per_optimizer_step(profiler, tmp_path, gas, fp16):
    config = base(
        gradient_accumulation_steps=gas,
        scheduler={"type": "StepLR", "params": {"step_size": 1, "gamma": 0.5}},
        csv_monitor={"enabled": True, "output_path": str(tmp_path), "job_name": "run"},
    )
    if fp16:
        config["fp16"] = {"enabled": True, "initial_scale_power": 4}
    engine, _, _, scheduler = zero_core.initialize(model=tiny(), config=config)
    lrs, scales, losses = [], [], []
    for step in range(4):
        losses += train(engine, 1, gas, seed=step)
        lrs.append(scheduler.get_last_lr()[0])
        scales.append(engine.loss_scale)
    engine.destroy()

    run = tmp_path / "run"
    samples = [2 * gas * (s + 1) for s in range(4)]  # global samples after each step
    expected = {"Train_Samples_train_loss.csv", "Train_Samples_lr.csv"}
    if fp16:
        expected.add("Train_Samples_loss_scale.csv")
        assert read_csv(run, "Train/Samples/loss_scale") == list(zip(samples, scales))
    assert {p.name for p in run.iterdir()} == expected  # no timer files: timing is off
    assert read_csv(run, "Train/Samples/lr") == list(zip(samples, lrs))
    assert lrs == [0.1 * 0.5 ** (s + 1) for s in range(4)]
    logged = read_csv(run, "Train/Samples/train_loss")
    assert [s for s, _ in logged] == samples
    for (_, value), window in zip(logged, losses):
        assert value == pytest.approx(sum(window) / gas, rel=1e-12, abs=0)


def two_rank_run(rank: int, out: str) -> dict:
    """Stage 2 on 2 ranks with the CSV monitor, the comms logger and the timers."""
    from training import make_model

    config = {
        "train_micro_batch_size_per_gpu": 4,
        "steps_per_print": 2,
        "wall_clock_breakdown": True,
        "zero_optimization": {"stage": 2},
        "optimizer": {"type": "SGD", "params": {"lr": 0.05}},
        "csv_monitor": {"enabled": True, "output_path": out, "job_name": "ranks"},
        "comms_logger": {"enabled": True},
    }
    model = make_model()
    numels = [p.numel() for p in model.parameters()]
    engine, *_ = zero_core.initialize(model=model, config=config)
    wrapped = hasattr(dist.all_reduce, "_zero_profiler_original")
    g = torch.Generator().manual_seed(rank)
    losses, summaries, printed = [], [], ""
    for _ in range(2):
        x, y = torch.randn(4, 8, generator=g), torch.randn(4, 1, generator=g)
        loss = nn.functional.mse_loss(engine(x), y)
        engine.backward(loss)
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            engine.step()
        printed += buffer.getvalue()
        losses.append(loss.item())
        summaries.append(engine.telemetry.comms.summary())
    engine.destroy()
    return {
        "numels": numels,
        "losses": losses,
        "summaries": summaries,
        "printed": printed,
        "wrapped": wrapped,
        "unwrapped": not hasattr(dist.all_reduce, "_zero_profiler_original"),
    }


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    pytest.importorskip("zero_profiler")
    out = tmp_path_factory.mktemp("telemetry")
    return out, run_ranks(two_rank_run, str(out))


def test_two_ranks_rank_0_writes_rank_0_losses(two_ranks):
    out, ranks = two_ranks
    run = out / "ranks"
    logged = read_csv(run, "Train/Samples/train_loss")
    assert logged == [(8, ranks[0]["losses"][0]), (16, ranks[0]["losses"][1])]
    assert read_csv(run, "Train/Samples/lr") == [(8, 0.05), (16, 0.05)]
    for phase in PHASES:
        times = read_csv(run, f"Train/Samples/elapsed_time_ms_{phase}")
        assert [s for s, _ in times] == [8, 16] and all(ms > 0 for _, ms in times), phase
    assert ranks[0]["printed"].startswith("step 2:")
    assert ranks[1]["printed"] == ""  # only rank 0 prints


def test_two_ranks_comms_logger_sees_a_stage_2_step(two_ranks):
    _, ranks = two_ranks
    numels = ranks[0]["numels"]
    # [Note: the partition layout]: each parameter padded to a multiple of 2 ranks, one
    # bucket holding all of them, fp32
    flat_bytes = sum(-(-n // 2) * 2 for n in numels) * 4
    gather = "all_gather_single" if hasattr(dist, "all_gather_single") else "all_gather_into_tensor"
    scatter = (
        "reduce_scatter_single"
        if hasattr(dist, "reduce_scatter_single")
        else "reduce_scatter_tensor"
    )
    expected = {
        # the non-finite loss check (1 float32), the gradient norm (1 float64), the
        # "gradient anywhere" flags (one int32 per parameter)
        "all_reduce": {4: 1, 8: 1, 4 * len(numels): 1},
        scatter: {flat_bytes: 1},  # the gradients, in backward
        gather: {flat_bytes: 1},  # the new weights, in the step
    }
    for rank in ranks:
        assert rank["wrapped"] and rank["unwrapped"]
        first, second = rank["summaries"]
        assert {
            op: {n: row["count"] for n, row in sizes.items()} for op, sizes in first.items()
        } == (expected)
        assert second == {}  # printed at step 2, then forgotten on every rank
    table = ranks[0]["printed"]
    assert "collectives of the last 2 steps, rank 0:" in table
    for op, sizes in expected.items():  # the window's table: every size twice
        rows = table.split(f"\n{op}\n")[1].splitlines()[: len(sizes)]
        assert [row.split()[2] for row in rows] == ["2"] * len(sizes), rows  # "7.51 KB 2 ..."


# -- timers ------------------------------------------------------------------------------------


class _SlowBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        time.sleep(0.03)
        return grad


class Slow(nn.Module):
    """Forward sleeps 20 ms; backward sleeps 30 ms (lower bounds the timers must show)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny()

    def forward(self, x):
        time.sleep(0.02)
        return self.inner(_SlowBackward.apply(x.requires_grad_()))


def test_wall_clock_breakdown_times_each_phase(profiler, tmp_path, capsys):
    config = base(
        wall_clock_breakdown=True,
        steps_per_print=2,
        csv_monitor={"enabled": True, "output_path": str(tmp_path), "job_name": "t"},
    )
    engine, *_ = zero_core.initialize(model=Slow(), config=config)
    train(engine, 2)
    engine.destroy()
    ms = {p: read_csv(tmp_path / "t", f"Train/Samples/elapsed_time_ms_{p}") for p in PHASES}
    for step in range(2):
        row = {p: ms[p][step][1] for p in PHASES}
        assert row["forward"] >= 20 and row["backward_inner"] >= 30, row
        assert row["step"] > 0 and row["backward_allreduce"] > 0, row
        assert row["backward"] == pytest.approx(row["backward_inner"] + row["backward_allreduce"])
    printed = capsys.readouterr().out.splitlines()
    timing = next(line for line in printed if line.startswith("time (ms per step, last 2) |"))
    means = dict(re.findall(r"(\w+): ([\d.]+)", timing.split("|", 1)[1]))
    assert list(means) == list(PHASES)
    for phase in PHASES:  # the window's mean per step, as printed (2 decimals)
        assert float(means[phase]) == pytest.approx(
            (ms[phase][0][1] + ms[phase][1][1]) / 2, abs=0.006
        )


# -- flops profiler ----------------------------------------------------------------------------


@pytest.mark.parametrize("stage", [0, 3])
def test_flops_profiler_reports_the_configured_step_once(profiler, tmp_path, capsys, stage):
    report = tmp_path / "flops.txt"
    config = base(
        zero_optimization={"stage": stage},
        flops_profiler={
            "enabled": True,
            "profile_step": 1,
            "detailed": False,
            "output_file": str(report),
        },
    )
    model = tiny()
    engine, *_ = zero_core.initialize(model=model, config=config)
    seen = []
    for step in range(3):
        train(engine, 1, seed=step)
        seen.append(report.exists())
        assert torch._C._len_torch_dispatch_stack() == 0  # nothing left counting
    assert seen == [False, True, True]
    assert engine.telemetry.flops is None  # detached: later steps pay nothing
    assert capsys.readouterr().out == ""  # to output_file, not stdout
    text = report.read_text()
    assert text.count("Profile summary at step 1:") == 1
    printed = dict(re.findall(r"^(params|fwd flops):\s+(\S+)", text, re.MULTILINE))
    # by hand: Linear(4,3) on 2 rows = 2*2*4*3 + 6 bias, ReLU 6, Linear(3,2) = 2*2*3*2 + 4
    by_hand = (2 * 2 * 4 * 3 + 6) + 6 + (2 * 2 * 3 * 2 + 4)
    flops, _, params = profiler.get_model_profile(
        tiny(), args=[torch.randn(2, 4)], print_profile=False, as_string=False
    )
    assert int(printed["fwd flops"]) == flops == by_hand
    # stage 3 leaves each parameter empty between uses: the count comes from ds_numel
    assert int(printed["params"]) == params == sum(p.numel() for p in tiny().parameters())
    assert "step latency:" in text and "not measured" not in text  # the engine's timers


# -- comms logger life cycle -------------------------------------------------------------------


def test_destroy_unwraps_torch_distributed(profiler):
    engine, *_ = zero_core.initialize(model=tiny(), config=base(comms_logger={"enabled": True}))
    assert hasattr(dist.all_reduce, "_zero_profiler_original")
    engine.destroy()
    engine.destroy()  # twice is fine
    assert not hasattr(dist.all_reduce, "_zero_profiler_original")
    train(engine, 1)  # still trains, unobserved


# -- without zero-profiler ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"csv_monitor": {"enabled": True}},
        {"tensorboard": {"enabled": True}},
        {"flops_profiler": {"enabled": True}},
        {"comms_logger": {"enabled": True}},
        {"wall_clock_breakdown": True},
    ],
    ids=lambda extra: next(iter(extra)),
)
def test_missing_zero_profiler_is_named_at_initialize(monkeypatch, extra):
    monkeypatch.setattr(_telemetry, "_entry_points", lambda: {})
    block = next(iter(extra))
    with pytest.raises(ImportError) as caught:
        zero_core.initialize(model=tiny(), config=base(**extra))
    message = str(caught.value)
    assert message.startswith(f"{block} is switched on in the config")
    assert "zero-profiler is not installed: pip install zero-profiler" in message


def test_nothing_happens_with_every_block_off(monkeypatch, tmp_path, capsys):
    def no_lookup():
        raise AssertionError("zero-profiler looked up with every block off")

    monkeypatch.setattr(_telemetry, "_entry_points", no_lookup)
    monkeypatch.chdir(tmp_path)  # where monitors without output_path would write
    off = {"enabled": False}
    config = base(
        wall_clock_breakdown=False,
        steps_per_print=10,
        flops_profiler={**off, "output_file": str(tmp_path / "flops.txt")},
        comms_logger=off,
        csv_monitor=off,
        tensorboard=off,
        wandb=off,
        comet=off,
    )
    original = dist.all_reduce
    engine, *_ = zero_core.initialize(model=tiny(), config=config)
    train(engine, 3)
    engine.destroy()
    t = engine.telemetry
    assert (t.timers, t.flops, t.comms, t.monitor) == (None, None, None, None)
    assert dist.all_reduce is original
    assert capsys.readouterr().out == ""
    assert list(tmp_path.iterdir()) == []


def test_progress_line_every_steps_per_print(capsys):
    engine, *_ = zero_core.initialize(
        model=tiny(), config=base(steps_per_print=2, gradient_accumulation_steps=2)
    )
    losses = train(engine, 5, gas=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2  # steps 2 and 4
    for line, step in zip(lines, (2, 4)):
        found = re.fullmatch(r"step (\d+): loss (\S+), lr \[0\.1\], samples/s ([\d.]+)", line)
        assert found, line
        assert int(found[1]) == step
        assert float(found[2]) == pytest.approx(sum(losses[step - 1]) / 2, rel=1e-5)
        assert float(found[3]) > 0

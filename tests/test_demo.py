"""The demo's whole story at toy size, as ``nox -s demo`` runs it: launch 2 ranks, stop half
way and save, resume in new processes, convert, sample from the plain model."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).parents[1] / "demo"
ZEROSPEED = str(Path(sys.executable).with_name("zerospeed"))
TINY = ["--steps", "6", "--width", "32", "--layers", "1", "--heads", "2", "--context", "32"]
TINY += ["--micro-batch", "2", "--eval-batches", "2", "--warmup", "2", "--profile-step", "2"]


def run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    out = tmp_path_factory.mktemp("demo") / "run"
    train = [ZEROSPEED, "launch", "--nproc-per-node", "2", str(DEMO / "train.py")]
    train += ["--out", str(out), *TINY]
    first = run(*train, "--stop-at", "half")
    second = run(*train, "--resume")
    return out, first, second


def test_first_run_trains_half_the_schedule_and_profiles_once(demo_run):
    out, first, _ = demo_run
    assert "ZeRO stage 3, bf16" in first
    assert first.count("flops profile ---") == 1, first
    assert (out / "checkpoints" / "global_step3").is_dir()


def test_resume_continues_exactly(demo_run):
    out, _, second = demo_run
    assert "resumed from" in second and "at step 3" in second
    loaded, saved = re.search(r"after loading ([\d.]+) \(saved run: ([\d.]+)\)", second).groups()
    assert loaded == saved  # the same weights give the same held-out loss, to 4 decimals
    with open(out / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert (out / "loss.png").stat().st_size > 0


def test_engine_monitor_logged_every_step(demo_run):
    out, _, _ = demo_run
    logs = sorted((out / "logs" / "demo").glob("*train_loss*.csv"))
    assert logs, list((out / "logs").rglob("*"))
    with open(logs[0], newline="") as f:
        rows = list(csv.reader(f))[1:]
    samples_per_step = 2 * 2  # 2 ranks x micro batch 2
    assert [int(r[0]) for r in rows] == [samples_per_step * s for s in range(1, 7)]


def test_converted_weights_load_into_the_plain_model_and_sample(demo_run):
    out, _, _ = demo_run
    weights = out / "model.safetensors"
    run(ZEROSPEED, "convert", str(out / "checkpoints"), str(weights), "--safetensors")
    text = run(sys.executable, str(DEMO / "sample.py"), str(weights), "--chars", "20")
    assert text.count("--- ") == 4 and "In the beginning" in text


@pytest.mark.parametrize("offload", ["cpu", "nvme"])
def test_offload_flag_trains_the_same_model(demo_run, tmp_path, offload):
    """Optimizer offload changes where the optimizer state lives, not the numbers: the
    straight run with --offload logs the losses of the stopped-and-resumed run without it."""
    out, _, _ = demo_run
    run(
        ZEROSPEED, "launch", "--nproc-per-node", "2", str(DEMO / "train.py"),
        "--out", str(tmp_path), "--offload", offload, *TINY,
    )  # fmt: skip

    def losses(run_dir: Path) -> list[str]:
        with open(run_dir / "train_log.csv", newline="") as f:
            return [r["loss"] for r in csv.DictReader(f)]

    assert losses(tmp_path) == losses(out)

"""Monitors: CSV fully; TensorBoard, W&B and Comet through stand-in modules (the real
packages are optional), and the error when one is enabled without its package."""

from __future__ import annotations

import csv
import sys
import types

import pytest
import torch

from zero_profiler import ConfigError, CsvMonitor, MonitorConfig, MonitorMaster


def _rows(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_csv_monitor_writes_one_file_per_label(tmp_path) -> None:
    config = {"csv_monitor": {"enabled": True, "output_path": str(tmp_path), "job_name": "run1"}}
    master = MonitorMaster(config)
    assert master.enabled and [type(m) for m in master.monitors] == [CsvMonitor]
    master.write_events([("Train/Samples/train_loss", 2.5, 8), ("Train/Samples/lr", 1e-3, 8)])
    master.write_events([("Train/Samples/train_loss", torch.tensor(2.25), 16)])
    master.close()
    loss = tmp_path / "run1" / "Train_Samples_train_loss.csv"
    assert _rows(loss) == [["step", "Train/Samples/train_loss"], ["8", "2.5"], ["16", "2.25"]]
    assert _rows(tmp_path / "run1" / "Train_Samples_lr.csv")[1] == ["8", "0.001"]


def test_csv_defaults_to_the_working_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    MonitorMaster({"csv_monitor": {"enabled": True}}).write_events([("a", 1, 1)])
    assert _rows(tmp_path / "DeepSpeedJobName" / "a.csv") == [["step", "a"], ["1", "1.0"]]


def test_nothing_enabled_writes_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    master = MonitorMaster({"train_batch_size": 8})
    assert not master.enabled and master.monitors == []
    master.write_events([("a", 1, 1)])
    assert list(tmp_path.iterdir()) == []


def test_reference_defaults() -> None:
    c = MonitorConfig.from_dict({})
    assert (c.tensorboard.job_name, c.csv_monitor.job_name) == ("DeepSpeedJobName",) * 2
    assert (c.wandb.project, c.wandb.team, c.wandb.group) == ("deepspeed", None, None)
    assert c.comet.samples_log_interval == 100 and c.comet.mode is None


@pytest.mark.parametrize(
    ("block", "match"),
    [
        ({"tensorboard": {"enable": True}}, r"did you mean 'enabled'"),
        ({"wandb": {"enabled": 1}}, r'"wandb.enabled" must be bool'),
        ({"comet": {"mode": "append"}}, r'"comet.mode" must be'),
        ({"csv_monitor": {"job_name": None}}, r'"csv_monitor.job_name" must be str'),
    ],
)
def test_bad_blocks(block: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MonitorConfig.from_dict(block)
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    ("block", "module", "extra"),
    [
        ("tensorboard", "tensorboard", "tensorboard"),
        ("wandb", "wandb", "wandb"),
        ("comet", "comet_ml", "comet"),
    ],
)
def test_missing_package_names_the_extra(monkeypatch, block: str, module: str, extra: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(
        ImportError,
        match=rf'{module} package is not installed: pip install "zero-profiler\[{extra}\]"',
    ):
        MonitorMaster({block: {"enabled": True}})


def test_wandb_calls(monkeypatch) -> None:
    calls = []
    fake = types.SimpleNamespace(
        init=lambda **kw: calls.append(("init", kw)),
        log=lambda data, step: calls.append(("log", data, step)),
        finish=lambda: calls.append(("finish",)),
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    master = MonitorMaster({"wandb": {"enabled": True, "team": "t", "group": "g", "project": "p"}})
    master.write_events([("loss", 1.5, 4)])
    master.close()
    assert calls == [
        ("init", {"project": "p", "group": "g", "entity": "t"}),
        ("log", {"loss": 1.5}, 4),
        ("finish",),
    ]


def test_comet_calls_and_interval(monkeypatch) -> None:
    logged, started = [], []

    class Experiment:
        def set_name(self, name):
            logged.append(("name", name))

        def log_metric(self, name, value, step):
            logged.append((name, value, step))

        def end(self):
            logged.append(("end",))

    def start(**kw):
        started.append(kw)
        return Experiment()

    monkeypatch.setitem(sys.modules, "comet_ml", types.SimpleNamespace(start=start))
    config = {
        "comet": {
            "enabled": True,
            "project": "p",
            "experiment_name": "e",
            "samples_log_interval": 50,
            "online": False,
        }
    }
    master = MonitorMaster(config)
    for step in (0, 32, 64, 96, 128):
        master.write_events([("loss", step / 100, step)])
    master.close()
    assert started == [{"project": "p", "online": False}]
    assert logged == [
        ("name", "e"),
        ("loss", 0.0, 0),
        ("loss", 0.64, 64),
        ("loss", 1.28, 128),
        ("end",),
    ]


def test_tensorboard_calls(monkeypatch, tmp_path) -> None:
    calls = []

    class SummaryWriter:
        def __init__(self, log_dir):
            calls.append(("dir", log_dir))

        def add_scalar(self, label, value, step):
            calls.append((label, value, step))

        def flush(self):
            calls.append(("flush",))

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "tensorboard", types.ModuleType("tensorboard"))
    board = types.ModuleType("torch.utils.tensorboard")
    board.SummaryWriter = SummaryWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", board)
    config = {"tensorboard": {"enabled": True, "output_path": str(tmp_path), "job_name": "j"}}
    master = MonitorMaster(config)
    master.write_events([("loss", 3, 7)])
    master.close()
    assert calls == [("dir", str(tmp_path / "j")), ("loss", 3.0, 7), ("flush",), ("close",)]


def test_real_tensorboard_when_installed(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    config = {"tensorboard": {"enabled": True, "output_path": str(tmp_path), "job_name": "j"}}
    master = MonitorMaster(config)
    master.write_events([("loss", 3.0, 7)])
    master.close()
    assert any((tmp_path / "j").iterdir())

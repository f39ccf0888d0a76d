"""``python -m zero_sched plot``: terminal chart, PNG, and errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from zero_sched._cli import main


@pytest.fixture
def warmup_config(tmp_path):
    path = tmp_path / "ds_config.json"
    path.write_text(
        json.dumps(
            {
                "optimizer": {"type": "AdamW", "params": {"lr": 0.5}},
                "scheduler": {
                    "type": "WarmupDecayLR",
                    "params": {
                        "total_num_steps": 20,
                        "warmup_max_lr": 0.001,
                        "warmup_num_steps": 10,
                        "warmup_type": "linear",
                    },
                },
            }
        )
    )
    return path


def test_plot_prints_summary_and_chart(warmup_config, capsys):
    assert main(["plot", str(warmup_config), "--steps", "25"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "WarmupDecayLR: 25 steps"
    # index 0 is the construction value; step 11 is last_batch_iteration 10, the peak
    assert lines[1] == "lr first 0.000e+00, peak 1.000e-03 at step 11, last 0.000e+00"
    chart = out[out.index("learning rate\n") :].splitlines()[1:13]
    assert chart[0].startswith("1.000e-03 |") and chart[-1].startswith("0.000e+00 |")
    stars = [line.split("|", 1)[1] for line in chart]
    assert all(len(row) == 25 for row in stars)  # one column per step when they fit
    top_column = stars[0].index("*")
    assert top_column == 11
    assert "momentum" not in out


def test_plot_shows_momentum_for_one_cycle(tmp_path, capsys):
    path = tmp_path / "sched.json"
    path.write_text(
        json.dumps(
            {
                "type": "OneCycle",
                "params": {"cycle_min_lr": 0.01, "cycle_max_lr": 0.1, "cycle_first_step_size": 5},
            }
        )
    )
    assert main(["plot", str(path), "--steps", "12"]) == 0
    out = capsys.readouterr().out
    assert "momentum first 0.8000, min 0.8000, last 0.9000" in out
    assert "momentum / beta1" in out


def test_plot_uses_lr_flag_for_cosine(tmp_path, capsys):
    path = tmp_path / "sched.json"
    path.write_text(
        json.dumps(
            {"type": "WarmupCosineLR", "params": {"total_num_steps": 10, "warmup_num_steps": 2}}
        )
    )
    assert main(["plot", str(path), "--steps", "4", "--lr", "2.0"]) == 0
    assert "peak 2.000e+00 at step 2" in capsys.readouterr().out


def test_png_is_written(warmup_config, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    target = tmp_path / "lr.png"
    assert main(["plot", str(warmup_config), "--steps", "30", "-o", str(target)]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {target}" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".plot-")] == []


def test_png_without_matplotlib_names_the_extra(warmup_config, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    target = tmp_path / "lr.png"
    assert main(["plot", str(warmup_config), "--steps", "5", "-o", str(target)]) == 2
    assert 'pip install "zero-sched[plot]"' in capsys.readouterr().err
    assert not target.exists()


def test_bad_inputs(tmp_path, capsys):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(SystemExit, match="is not valid JSON"):
        main(["plot", str(bad_json), "--steps", "5"])
    with pytest.raises(SystemExit, match="cannot read"):
        main(["plot", str(tmp_path / "missing.json"), "--steps", "5"])
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"type": "WarmupLr"}))
    assert main(["plot", str(unknown), "--steps", "5"]) == 2
    assert "did you mean 'WarmupLR'" in capsys.readouterr().err
    assert main(["plot", str(unknown), "--steps", "0"]) == 2
    assert "--steps must be a positive integer" in capsys.readouterr().err


def test_module_entry_point(warmup_config):
    result = subprocess.run(
        [sys.executable, "-m", "zero_sched", "plot", str(warmup_config), "--steps", "3"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("WarmupDecayLR: 3 steps")

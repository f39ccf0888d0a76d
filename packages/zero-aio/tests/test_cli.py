"""zero-aio-bench and zero-nvme-tune: output, the config block, and every refused input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import zero_aio
from zero_aio import _cli_bench, _cli_tune
from zero_aio._measure import HandleConfig, Measurement, new_buffer, parse_size


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4096", 4096),
        ("128K", 131072),
        ("1M", 1 << 20),
        ("1.5G", 3 << 29),
        ("2MiB", 2 << 20),
        (7, 7),
    ],
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "12Q", "-1", "0", "M"])
def test_parse_size_refuses(text):
    with pytest.raises(Exception, match="size"):
        parse_size(text)


def test_measurement_rate_is_bytes_over_the_median_time():
    m = Measurement(HandleConfig(), "read", 2 * 10**9, [4.0, 1.0, 2.0])
    assert m.gbps == pytest.approx(1.0) and m.best_gbps == pytest.approx(2.0)


def test_bench_prints_rates_and_writes_the_real_bytes(tmp_path, capsys):
    path = tmp_path / "b.bin"
    argv = ["--file", str(path), "--io_size", "1M", "--block_size", "64K", "--loops", "2"]
    assert _cli_bench.main([*argv, "--queue_depth", "4", "--keep"]) == 0
    out = capsys.readouterr().out
    assert "write:" in out and "read:" in out and "GB/s median of 2" in out
    assert "page cache: bypassed (O_DIRECT)" in out
    on_disk = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    assert torch.equal(on_disk, new_buffer(1 << 20))


def test_bench_json_and_cleanup(tmp_path, capsys):
    argv = ["--dir", str(tmp_path), "--io_size", "100000", "--no_read", "--json", "--loops", "1"]
    assert _cli_bench.main([*argv, "--backend", "threads", "--intra_op_parallelism", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["io_size"] == 102400  # rounded up to whole pages
    assert out["backend"] == "threads" and "read_gbps" not in out and out["write_gbps"] > 0
    assert out["config"]["intra_op_parallelism"] == 2
    assert os.listdir(tmp_path) == []  # the test file is removed


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--dir", "/no/such/dir"], "does not exist"),
        (["--dir", "{tmp}", "--no_read", "--no_write"], "nothing to measure"),
        (["--dir", "{tmp}", "--io_size", "12Q"], "not a size"),
        (["--dir", "{tmp}", "--loops", "0"], "--loops"),
        (["--dir", "{tmp}", "--backend", "gds"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bench_refuses(tmp_path, capsys, argv, match):
    with pytest.raises(SystemExit) as info:
        _cli_bench.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert info.value.code == 2
    assert match in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_bench_refuses_a_bad_handle_configuration(tmp_path):
    with pytest.raises(ValueError, match="queue_depth"):
        _cli_bench.main(["--dir", str(tmp_path), "--queue_depth", "0", "--io_size", "4K"])
    assert os.listdir(tmp_path) == []


def write_sweep(tmp_path, sweep) -> str:
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(sweep))
    return str(path)


def test_tune_sweeps_and_prints_a_config_block(tmp_path, capsys):
    sweep = write_sweep(
        tmp_path,
        {
            "block_size": ["64K", 131072],
            "queue_depth": [4],
            "thread_count": [1],  # DeepSpeed's older name for intra_op_parallelism
            "single_submit": ["false"],  # ds_nvme_tune writes booleans as strings
            "overlap_events": [True],
            "backend": zero_aio.available_backends()[:1],
        },
    )
    results = tmp_path / "all.json"
    nvme = tmp_path / "nvme"
    nvme.mkdir()
    argv = ["--nvme_dir", str(nvme), "--io_size", "512K", "--sweep_config", sweep]
    assert _cli_tune.main([*argv, "--loops", "1", "--output", str(results)]) == 0
    captured = capsys.readouterr()
    assert "2 configurations x read, write of 0.5 MiB" in captured.out
    assert "Best performance (GB/sec): read = " in captured.out
    block = json.loads(captured.out[captured.out.index("{\n") :])
    assert set(block["aio"]) == {
        "block_size",
        "queue_depth",
        "intra_op_parallelism",
        "single_submit",
        "overlap_events",
    }
    assert block["aio"]["block_size"] in (65536, 131072)
    assert block["aio"]["overlap_events"] is True and block["aio"]["single_submit"] is False
    measured = json.loads(results.read_text())
    assert len(measured) == 4 and {m["op"] for m in measured} == {"read", "write"}
    assert "4/4" in captured.err  # the progress bar reached the end
    assert os.listdir(nvme) == []


def test_tune_recommends_the_config_closest_to_both_bests(monkeypatch, tmp_path, capsys):
    # Fake measurements: A is best at reads, B at writes, C is 90% of both: C is recommended.
    a, b, c = (HandleConfig(block_size=s, backend="threads") for s in (4096, 8192, 16384))
    rates = {(a, "read"): 10.0, (a, "write"): 1.0, (b, "read"): 1.0, (b, "write"): 10.0}
    rates |= {(c, "read"): 9.0, (c, "write"): 9.0}

    def fake_measure(config, path, buffer, op, loops):
        return Measurement(config, op, 10**9, [1 / rates[config, op]])

    monkeypatch.setattr(_cli_tune, "measure", fake_measure)
    monkeypatch.setattr(_cli_tune, "configurations", lambda space: [a, b, c])
    assert _cli_tune.main(["--nvme_dir", str(tmp_path), "--io_size", "4K"]) == 0
    out = capsys.readouterr().out
    assert "read = 10.00, write = 10.00" in out
    assert json.loads(out[out.index("{\n") :])["aio"]["block_size"] == 16384


@pytest.mark.parametrize(
    ("sweep", "match"),
    [
        ({"blocksize": [1]}, "unknown key 'blocksize'; valid keys: backend, block_size"),
        ({"queue_depth": [0]}, "queue_depth value 0"),
        ({"single_submit": ["maybe"]}, "single_submit value 'maybe'"),
        ({"backend": ["gds"]}, "backend value 'gds': not usable here"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_tune_refuses_bad_sweep_configs(tmp_path, sweep, match):
    with pytest.raises(SystemExit, match=match):
        _cli_tune.main(
            ["--nvme_dir", str(tmp_path), "--sweep_config", write_sweep(tmp_path, sweep)]
        )
    assert sorted(os.listdir(tmp_path)) == ["sweep.json"]


def test_tune_refuses_a_missing_directory(capsys):
    with pytest.raises(SystemExit):
        _cli_tune.main(["--nvme_dir", "/no/such/dir"])
    assert "is not a directory" in capsys.readouterr().err


def test_cli_modules_run_as_scripts():
    for module in ("zero_aio._cli_bench", "zero_aio._cli_tune"):
        done = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True
        )
        assert "usage: zero-" in done.stdout

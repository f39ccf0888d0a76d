"""The meta-package: re-exports are the sibling modules themselves, the CLI dispatches."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import zero_aio
import zero_core
import zero_moe
import zero_optim
import zero_profiler
import zero_sched
import zerospeed
from zerospeed._cli import main

EXAMPLE = Path(__file__).parents[1] / "examples" / "one_cycle.json"


def test_sched_is_zero_sched():
    assert zerospeed.sched is zero_sched
    import zerospeed.sched as via_import
    from zerospeed.sched import WarmupLR

    assert via_import is zero_sched and WarmupLR is zero_sched.WarmupLR


def test_optim_is_zero_optim():
    import zerospeed.optim as via_import
    from zerospeed.optim import CPUAdam

    assert zerospeed.optim is zero_optim and via_import is zero_optim
    assert CPUAdam is zero_optim.CPUAdam


def test_aio_is_zero_aio():
    import zerospeed.aio as via_import

    assert zerospeed.aio is zero_aio and via_import is zero_aio


def test_profiler_core_and_initialize():
    import zerospeed.core as core_alias
    import zerospeed.profiler as profiler_alias

    assert zerospeed.profiler is zero_profiler and profiler_alias is zero_profiler
    assert zerospeed.core is zero_core and core_alias is zero_core
    assert zerospeed.initialize is zero_core.initialize
    assert zerospeed.moe is zero_moe


def test_checkpointing_is_zero_cores():
    import zero_core.checkpointing
    import zerospeed.checkpointing as via_import

    assert zerospeed.checkpointing is zero_core.checkpointing is via_import


def test_report_lists_every_package(capsys):
    assert main(["report"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"zerospeed {zerospeed.__version__}\n")
    assert "[zero-sched]" in out and f"version    {zero_sched.__version__}" in out
    assert "[zero-optim]" in out and f"cpu kernels       {zero_optim.cpu_features()['isa']}" in out
    assert "[zero-profiler]" in out
    assert "[zero-aio]" in out and f"default backend   {zero_aio.default_backend()}" in out


def test_sched_subcommand_is_zero_sched_cli(capsys):
    assert main(["sched", "plot", str(EXAMPLE), "--steps", "120"]) == 0
    front = capsys.readouterr().out
    assert zero_sched._cli.main(["plot", str(EXAMPLE), "--steps", "120"]) == 0
    assert capsys.readouterr().out == front


def test_demo_shows_the_example_schedule():
    """What `nox -s demo` runs, through the installed console script."""
    script = Path(sys.executable).with_name("zerospeed")
    result = subprocess.run(
        [str(script), "sched", "plot", str(EXAMPLE), "--steps", "120"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "OneCycle: 120 steps"
    # 40 steps up to cycle_max_lr, 40 down, then decay: the last traced step (119) is 39
    # decay steps in, 1e-4 / (1 + 0.05 * 39/10) = 8.368e-05
    assert lines[1] == "lr first 1.000e-04, peak 1.000e-03 at step 40, last 8.368e-05"
    assert lines[2] == "momentum first 0.8500, min 0.8500, last 0.9500"


def test_unknown_command_fails(capsys):
    try:
        main(["nope"])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("expected argparse to exit")
    assert "invalid choice: 'nope'" in capsys.readouterr().err

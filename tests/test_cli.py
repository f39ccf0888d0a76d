"""The ``zerospeed`` command: launch (translation to torchrun, and a real 2-process run),
report (text and JSON against the values torch and the installed packages give), routing."""

from __future__ import annotations

import importlib.metadata
import json
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import zero_aio
import zero_core
import zero_moe
import zerospeed
from zero_core import _report as core_report
from zerospeed import _cli
from zerospeed import _report as meta_report
from zerospeed._launch import LaunchError, parse_host_filter, parse_hostfile, translate

ZEROSPEED = Path(sys.executable).with_name("zerospeed")
RDZV_ID = re.compile(r"zs-[0-9a-f]{16}")


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture
def hosts4(tmp_path):
    """Two hosts with 4 slots each, with DeepSpeed-style comments and blank lines."""
    return write(
        tmp_path,
        "hostfile",
        """\
        # training nodes
        worker-1 slots=4   # first node: rendezvous host

        worker-2  slots=4
        """,
    )


# -- hostfile and host filters -------------------------------------------------------------


def test_hostfile_keeps_order_and_skips_comments(hosts4):
    assert list(parse_hostfile(hosts4).items()) == [("worker-1", 4), ("worker-2", 4)]


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ("worker-1 slots=2\nworker-2\n", 2, "expected 'HOSTNAME slots=N'"),
        ("worker-1 slots=two\n", 1, "expected 'HOSTNAME slots=N'"),
        ("# c\nworker-1 gpus=2\n", 2, "expected 'HOSTNAME slots=N'"),
        ("worker-1 slots=2 extra\n", 1, "expected 'HOSTNAME slots=N'"),
        ("worker-1 slots=0\n", 1, "slots must be at least 1"),
        ("a slots=1\nb slots=1\na slots=2\n", 3, "already listed on line 1"),
    ],
    ids=["no-slots", "not-a-number", "other-key", "extra-field", "zero-slots", "repeated"],
)
def test_hostfile_errors_name_file_and_line(tmp_path, text, line, expected):
    path = write(tmp_path, "hosts", text)
    with pytest.raises(LaunchError) as info:
        parse_hostfile(path)
    assert f"hostfile {path}, line {line}: " in str(info.value)
    assert expected in str(info.value)


def test_hostfile_without_hosts_or_missing(tmp_path):
    with pytest.raises(LaunchError, match="lists no hosts"):
        parse_hostfile(write(tmp_path, "empty", "# nothing\n\n"))
    with pytest.raises(LaunchError, match=r"cannot read hostfile .*nope"):
        parse_hostfile(tmp_path / "nope")


def test_host_filter_syntax():
    assert parse_host_filter("a:1,0@b", "--include") == {"a": [0, 1], "b": None}
    for bad, message in [
        ("a:", "is not HOST or HOST:SLOT"),
        ("a@@b", "is not HOST or HOST:SLOT"),
        ("a@a:1", "named twice"),
        ("a:x", "must be numbers"),
    ]:
        with pytest.raises(LaunchError, match=message):
            parse_host_filter(bad, "--include")


# -- translation -----------------------------------------------------------------------------


def rendezvous(nodes: int, nproc: int, endpoint: str) -> list[str]:
    return [
        "--nnodes",
        str(nodes),
        "--nproc-per-node",
        str(nproc),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        endpoint,
    ]


def without_id(argv: list[str]) -> list[str]:
    """argv with ``--rdzv-id ID`` removed, after checking ID has the derived form."""
    i = argv.index("--rdzv-id")
    assert RDZV_ID.fullmatch(argv[i + 1])
    return argv[:i] + argv[i + 2 :]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--num_gpus", "2", "t.py", "x"], ["--nproc-per-node", "2", "t.py", "x"]),
        (["--num-gpus=3", "t.py"], ["--nproc-per-node", "3", "t.py"]),
        (["--num_nodes", "1", "t.py"], ["--nnodes", "1", "t.py"]),
        (
            ["--master_addr", "10.0.0.1", "--master_port", "6000", "--nnodes", "1", "t.py"],
            ["--master_addr", "10.0.0.1", "--master_port", "6000", "--nnodes", "1", "t.py"],
        ),
        (
            ["--standalone", "--nproc-per-node=2", "--max-restarts", "3", "-r3", "t.py"],
            ["--standalone", "--nproc-per-node=2", "--max-restarts", "3", "-r3", "t.py"],
        ),
        (
            ["--rdzv-conf", "timeout=5", "-m", "pkg.train", "--hostfile", "h", "--num_gpus", "9"],
            ["--rdzv-conf", "timeout=5", "-m", "pkg.train", "--hostfile", "h", "--num_gpus", "9"],
        ),
        (
            ["--num_gpus", "2", "--nproc-per-node", "2", "t.py"],
            ["--nproc-per-node", "2", "t.py"],
        ),
    ],
    ids=[
        "num_gpus",
        "num-gpus",
        "num_nodes-1",
        "master-passes-through",
        "torchrun-flags-unchanged",
        "script-args-untouched",
        "agreeing-duplicate",
    ],
)
def test_single_node_translation(args, expected):
    plan = translate(args)
    assert plan.argv == expected and plan.env == {} and not plan.dry_run


def test_num_nodes_without_hostfile_is_a_c10d_rendezvous():
    plan = translate(
        ["--num_nodes", "2", "--num_gpus", "4", "--master_addr", "n0", "--master_port", "7", "t.py"]
    )
    assert without_id(plan.argv) == [
        "--nproc-per-node",
        "4",
        "--nnodes",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "n0:7",
        "t.py",
    ]


def test_hostfile_translation(hosts4):
    plan = translate(["--hostfile", hosts4, "train.py", "--deepspeed"])
    assert without_id(plan.argv) == [*rendezvous(2, 4, "worker-1:29500"), "train.py", "--deepspeed"]
    assert plan.env == {}


@pytest.mark.parametrize(
    ("options", "nodes", "nproc", "endpoint", "env"),
    [
        (["--master_port", "6000"], 2, 4, "worker-1:6000", {}),
        (["--master_addr", "10.1.1.1"], 2, 4, "10.1.1.1:29500", {}),
        (["--num_nodes", "1"], 1, 4, "worker-1:29500", {}),
        (["--num_gpus", "2"], 2, 2, "worker-1:29500", {}),
        (["--include", "worker-2"], 1, 4, "worker-2:29500", {}),
        (
            ["--include", "worker-1:2,3@worker-2:3,2"],
            2,
            2,
            "worker-1:29500",
            {"CUDA_VISIBLE_DEVICES": "2,3"},
        ),
        (["--exclude", "worker-1"], 1, 4, "worker-2:29500", {}),
        (
            ["--exclude", "worker-1:0@worker-2:0"],
            2,
            3,
            "worker-1:29500",
            {"CUDA_VISIBLE_DEVICES": "1,2,3"},
        ),
        (["--exclude", "worker-1:3@worker-2:3"], 2, 3, "worker-1:29500", {}),
        (["--nnodes", "2", "--nproc_per_node", "4"], 2, 4, "worker-1:29500", {}),
    ],
    ids=[
        "master_port",
        "master_addr",
        "first-host",
        "first-gpus",
        "include-host",
        "include-slots",
        "exclude-host",
        "exclude-first-slot",
        "exclude-last-slot",
        "agreeing-torchrun-flags",
    ],
)
def test_hostfile_mappings(hosts4, options, nodes, nproc, endpoint, env):
    plan = translate(["--hostfile", hosts4, *options, "t.py"])
    argv = without_id(plan.argv)
    for flag, value in [
        ("--nnodes", nodes),
        ("--nproc-per-node", nproc),
        ("--nproc_per_node", nproc),
    ]:
        if flag in argv:
            assert argv[argv.index(flag) + 1] == str(value)
    assert argv[argv.index("--rdzv-endpoint") + 1] == endpoint
    assert "--master_port" not in argv and "--master_addr" not in argv
    assert plan.env == env


def test_unequal_slots_take_the_first_num_gpus(tmp_path):
    path = write(tmp_path, "hosts", "a slots=4\nb slots=2\n")
    plan = translate(["--hostfile", path, "--num_gpus", "2", "t.py"])
    assert without_id(plan.argv) == [*rendezvous(2, 2, "a:29500"), "t.py"]


def test_rendezvous_id_is_the_same_for_the_same_command(hosts4):
    """Every host runs the same command and must derive the same id; another job gets
    another id; a given --rdzv-id is kept."""
    first = translate(["--hostfile", hosts4, "t.py", "1"]).argv
    again = translate(["--hostfile", hosts4, "t.py", "1"]).argv
    other = translate(["--hostfile", hosts4, "t.py", "2"]).argv
    ident = first.index("--rdzv-id") + 1
    assert first == again and other[ident] != first[ident]
    kept = translate(["--hostfile", hosts4, "--rdzv-id", "job7", "t.py"]).argv
    assert kept[:2] == ["--rdzv-id", "job7"] and kept.count("--rdzv-id") == 1


def test_include_localhost_without_hostfile():
    plan = translate(["--include", "localhost:1,3", "t.py"])
    assert plan.argv == ["--nproc-per-node", "2", "t.py"]
    assert plan.env == {"CUDA_VISIBLE_DEVICES": "1,3"}
    assert plan.command() == "CUDA_VISIBLE_DEVICES=1,3 torchrun --nproc-per-node 2 t.py"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--nnodes", "3"], r"--nnodes 3 contradicts --hostfile .*, which gives 2"),
        (["--nproc-per-node", "8"], r"--nproc-per-node 8 contradicts --hostfile .*gives 4"),
        (["--rdzv-backend", "static"], "--rdzv-backend static contradicts --hostfile"),
        (["--standalone"], "--standalone runs one node"),
        (["--include", "a", "--exclude", "b"], "cannot be combined"),
        (["--include", "worker-1", "--num_gpus", "1"], "cannot be combined with --include"),
        (["--include", "worker-9"], "host worker-9 is not in the hostfile"),
        (["--include", "worker-1:4"], "worker-1 has slots 0-3 in the hostfile, not 4"),
        (["--include", "worker-1:0@worker-2:1"], "different device indices per host"),
        (["--exclude", "worker-1:0"], r"unequal slots \(worker-1=3, worker-2=4\).*--exclude"),
        (["--exclude", "worker-1@worker-2"], "leaves no hosts"),
        (["--num_nodes", "3"], "lists only 2 hosts"),
        (["--num_gpus", "5"], r"more than worker-1 \(slots=4\), worker-2 \(slots=4\) has"),
    ],
    ids=[
        "nnodes",
        "nproc",
        "rdzv-backend",
        "standalone",
        "include-and-exclude",
        "filter-and-num_gpus",
        "unknown-host",
        "slot-out-of-range",
        "different-devices",
        "unequal-after-exclude",
        "exclude-all",
        "too-many-nodes",
        "too-many-gpus",
    ],
)
def test_hostfile_conflicts(hosts4, options, message):
    with pytest.raises(LaunchError, match=message):
        translate(["--hostfile", hosts4, *options, "t.py"])


def test_unequal_slots_name_the_hosts(tmp_path):
    path = write(tmp_path, "hosts", "a slots=4\nb slots=2\n")
    with pytest.raises(LaunchError, match=r"unequal slots \(a=4, b=2\).*--num_gpus N with N <= 2"):
        translate(["--hostfile", path, "t.py"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num_gpus", "2", "--nproc-per-node", "3", "t.py"], "contradicts --num_gpus"),
        (["--num_nodes", "1", "--nnodes", "3", "t.py"], "contradicts --num_nodes"),
        (["--num_nodes", "2", "t.py"], "needs --master_addr"),
        (["--exclude", "localhost:0", "t.py"], "--exclude needs a --hostfile"),
        (["--include", "worker-1:0", "t.py"], "can only select devices of localhost"),
    ],
    ids=["nproc", "nnodes", "no-master", "exclude", "include-remote"],
)
def test_conflicts_without_hostfile(args, message):
    with pytest.raises(LaunchError, match=message):
        translate(args)


def test_abbreviations_and_unknown_options_are_usage_errors(capsys):
    for args in (["--nproc", "2", "t.py"], ["--hostf", "h", "t.py"], ["--bogus", "t.py"]):
        with pytest.raises(SystemExit) as info:
            translate(args)
        assert info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_dry_run_prints_the_command(hosts4, capsys):
    args = ["launch", "--dry-run", "--hostfile", hosts4, "--include", "worker-1:1", "t.py", "-x"]
    assert _cli.main(args) == 0
    out = capsys.readouterr().out.strip()
    expected = translate(args[1:]).command()
    assert out == expected
    assert out.startswith("CUDA_VISIBLE_DEVICES=1 torchrun --nnodes 1 --nproc-per-node 1 ")
    assert out.endswith(" t.py -x")


def test_bad_options_exit_2_with_the_reason(hosts4, capsys):
    assert _cli.main(["launch", "--hostfile", hosts4, "--nnodes", "5", "t.py"]) == 2
    assert "zerospeed launch: error: --nnodes 5 contradicts" in capsys.readouterr().err


# -- a real launch ----------------------------------------------------------------------------

WORKER = """\
import json, sys
import torch, torch.distributed as dist

dist.init_process_group("gloo")
total = torch.tensor([float(dist.get_rank())])
dist.all_reduce(total)
if dist.get_rank() == 0:
    with open(sys.argv[1], "w") as out:
        json.dump({"world": dist.get_world_size(), "sum": total.item(), "args": sys.argv[2:]}, out)
dist.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("how", ["standalone", "hostfile"])
def test_launch_runs_two_ranks(tmp_path, how):
    """Two gloo ranks all-reduce their ranks: rank 0 writes world size and the sum, which
    must be 0 + 1; the script's own arguments arrive untouched."""
    script = write(tmp_path, "worker.py", WORKER)
    result = tmp_path / "result.json"
    if how == "standalone":
        launcher = ["--standalone", "--nproc-per-node", "2"]
    else:
        hostfile = write(tmp_path, "hosts", "localhost slots=2\n")
        launcher = ["--hostfile", hostfile, "--master_port", str(free_port())]
    run = subprocess.run(
        [str(ZEROSPEED), "launch", *launcher, script, str(result), "--num_gpus", "7"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(result.read_text()) == {
        "world": 2,
        "sum": float(sum(range(2))),
        "args": ["--num_gpus", "7"],
    }


def test_failed_worker_gives_exit_1(tmp_path):
    script = write(tmp_path, "fail.py", "raise SystemExit(3)\n")
    run = subprocess.run(
        [str(ZEROSPEED), "launch", "--standalone", "--nproc-per-node", "1", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    assert "fail.py FAILED" in run.stderr


# -- report -----------------------------------------------------------------------------------


def test_report_header_and_torch_facts(capsys):
    assert _cli.main(["report"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"zerospeed {zerospeed.__version__}\n")
    assert f"torch {torch.__version__}\n" in out
    core = zero_core.report()
    assert core["torch build"].startswith(f"{torch.__version__} (")
    assert ("CPU-only" in core["torch build"]) == (torch.version.cuda is None)
    assert core["backend gloo"] == "available"
    assert dist.is_gloo_available()
    if not dist.is_nccl_available():
        assert "not available" in core["backend nccl"]
        if torch.version.cuda is None:
            assert "install a CUDA build of torch to train on GPUs" in core["backend nccl"]
    if not torch.cuda.is_available():
        assert core["cuda devices"].startswith("none")
    else:
        assert core["cuda devices"].startswith(f"{torch.cuda.device_count()}: ")
    for name in ("mpi", "ucc"):
        assert (core[f"backend {name}"] == "available") == getattr(dist, f"is_{name}_available")()
    for label, value in core.items():
        assert re.search(rf"^  {re.escape(label)} +{re.escape(value)}$", out, flags=re.M)


@pytest.mark.parametrize(
    ("group", "label"),
    [("zerospeed.optimizers", "optimizer types"), ("zerospeed.schedulers", "scheduler types")],
)
def test_registered_types_are_the_installed_entry_points(group, label):
    declared = [
        (ep.name, dist_name)
        for dist_name in ("zero-optim", "zero-sched")
        for ep in importlib.metadata.distribution(dist_name).entry_points
        if ep.group == group
    ]
    assert declared
    listed = zero_core.report()[label]
    for name, dist_name in declared:
        assert re.search(rf"\b{name}\b[^;]*\({dist_name}\)", listed), (name, listed)


def test_integrations_follow_what_is_installed(monkeypatch):
    core = zero_core.report()
    assert core["with zero-aio"].startswith(f"installed {zero_aio.__version__};")
    assert core["with zero-moe"].startswith(f"installed {zero_moe.__version__};")
    real = importlib.metadata.version

    def without_aio(name):
        if name == "zero-aio":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", without_aio)
    assert zero_core.report()["with zero-aio"].startswith("not installed (pip install zero-aio);")
    assert zero_core.report()["with zero-profiler"].startswith("installed ")
    # an old zero-profiler: installed, but without the entry points zero-core looks in
    monkeypatch.setattr(core_report, "entry_points", lambda group: [])
    assert zero_core.report()["with zero-profiler"].endswith(
        "registers no 'zerospeed.profiler' entry points for zero-core to find; upgrade it: "
        "pip install -U zero-profiler"
    )


def test_moe_section_lists_modes_the_config_parser_accepts():
    section = zero_moe.report()
    layouts = section["sparsity layouts"].split(", ")
    for mode in section["sparse_attention modes"].split(", "):
        built = zero_moe.sparsity_config_from_dict({"mode": mode}, num_heads=2)
        assert type(built).__name__ in layouts
    with pytest.raises(ValueError):
        zero_moe.sparsity_config_from_dict({"mode": "unlisted"}, num_heads=2)
    for policy in section["gating"].split("policies: ")[1].split(", "):
        zero_moe.TopKGate(4, 2, k=1, noisy_gate_policy=policy)


def test_report_json_matches_the_sections(capsys):
    assert _cli.main(["report", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["torch"] == torch.__version__
    assert found["zerospeed"] == zerospeed.__version__
    assert found["python"] == sys.version.split()[0]
    assert list(found["sections"]) == list(meta_report.SECTIONS)
    assert found["problems"] == {}
    for dist_name, module in meta_report.SECTIONS.items():
        assert found["sections"][dist_name] == __import__(module).report()


def test_report_names_the_fix_for_missing_and_broken_packages(monkeypatch, capsys):
    real_version, real_import = importlib.metadata.version, meta_report.importlib.import_module

    def version(name):
        if name == "zero-moe":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    def import_module(name):
        if name == "zero_aio":
            raise ImportError("libfoo.so: cannot open shared object file")
        return real_import(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setattr(meta_report.importlib, "import_module", import_module)
    assert _cli.main(["report"]) == 0
    out = capsys.readouterr().out
    assert "[zero-moe]\n  not installed (pip install zero-moe)\n" in out
    assert (
        "[zero-aio]\n  installed but fails to import (libfoo.so: cannot open shared object "
        "file); reinstall: pip install --force-reinstall zero-aio\n"
    ) in out
    assert "zero-aio" not in meta_report.collect()["sections"]


# -- routing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["estimate", "convert"])
def test_core_commands_are_routed_to_zero_core(monkeypatch, command):
    import zero_core.__main__ as core_main

    calls = []
    monkeypatch.setattr(core_main, "main", lambda argv, prog: calls.append((argv, prog)) or 0)
    assert _cli.main([command, "a", "--b"]) == 0
    assert calls == [([command, "a", "--b"], "zerospeed")]


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        _cli.main(["--help"])
    out = capsys.readouterr().out
    for command in ("launch", "report", "estimate", "convert", "sched"):
        assert re.search(rf"^    {command} ", out, flags=re.M)

"""The comms logger, with two real processes on the gloo backend (one spawn for the module)."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zero_profiler import (
    COLLECTIVES,
    CommsLogger,
    CommsLoggerConfig,
    ConfigError,
    comms_logger_from_config,
)
from zero_profiler._comms_size import bus_factor, message_bytes

F32 = 4  # bytes per element
#: torch 2.13's single-tensor collectives -> the bytes one call above logs
RENAMED = {"all_gather_single": 8 * F32, "reduce_scatter_single": 4 * F32}


def _scenario(rank: int, out_dir: str) -> dict:
    """Everything each rank does; returns what the test asserts on."""
    original = dist.all_reduce
    result: dict = {}

    disabled = comms_logger_from_config({"comms_logger": {"enabled": False}})
    result["disabled_wraps_nothing"] = dist.all_reduce is original and not disabled.enabled

    logger = comms_logger_from_config({"comms_logger": {"enabled": True}})
    result["wrapped"] = dist.all_reduce is not original
    t = torch.ones(4)
    for _ in range(3):
        dist.all_reduce(t)
    result["all_reduce_value"] = t.tolist()  # 1 -> 2 -> 4 -> 8 across two ranks
    dist.all_reduce(torch.ones(256))
    dist.all_gather([torch.empty(4), torch.empty(4)], torch.ones(4))
    dist.all_gather_into_tensor(torch.empty(8), torch.ones(4))
    dist.reduce_scatter(torch.empty(2), [torch.ones(2), torch.ones(2)])
    dist.reduce_scatter_tensor(torch.empty(2), torch.ones(4))
    for name in RENAMED:  # torch 2.13's names, which its old names call: logged once each
        if hasattr(dist, name):
            out = torch.empty(8) if name == "all_gather_single" else torch.empty(2)
            getattr(dist, name)(out, torch.ones(4))
    dist.broadcast(torch.ones(4), src=0)
    dist.all_to_all([torch.empty(2), torch.empty(2)], [torch.ones(2), torch.ones(2)])
    dist.all_to_all_single(torch.empty(4), torch.ones(4))
    if rank == 0:
        dist.send(torch.ones(4), dst=1)
    else:
        dist.recv(torch.empty(4), src=0)
    work = dist.all_reduce(torch.ones(4), async_op=True)
    work.wait()
    dist.barrier()
    result["summary"] = json.loads(logger.to_json())
    result["table"] = logger.log_summary(print_fn=None)
    logger.disable()
    result["restored"] = (
        dist.all_reduce is original and dist.distributed_c10d.all_reduce is original
    )

    only = {"enabled": True, "prof_all": False, "prof_ops": ["all_reduce"], "debug": True}
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), CommsLogger({**only, "verbose": True}) as logger:
        dist.all_reduce(torch.ones(2))
        dist.broadcast(torch.ones(2), src=0)
        result["broadcast_wrapped"] = dist.broadcast is not dist.distributed_c10d.broadcast
    result["debug_summary"] = json.loads(logger.to_json())
    result["verbose"] = buffer.getvalue()
    return result


def _worker(rank: int, store_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    try:
        result = _scenario(rank, out_dir)
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("comms")
    mp.spawn(_worker, args=(str(out / "store"), str(out)), nprocs=2, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_disabled_wraps_nothing_and_disable_restores(ranks: list[dict]) -> None:
    for r in ranks:
        assert r["disabled_wraps_nothing"]
        assert r["wrapped"]
        assert r["restored"]
        assert r["all_reduce_value"] == [8.0] * 4  # wrapped collectives still compute


def test_counts_and_sizes_per_op(ranks: list[dict]) -> None:
    expected = {
        "all_reduce": {str(4 * F32): 4, str(256 * F32): 1},  # 3 sync + 1 async of 16 B
        "all_gather": {str(8 * F32): 1},  # the whole output
        "all_gather_into_tensor": {str(8 * F32): 1},
        "reduce_scatter": {str(4 * F32): 1},  # the whole input
        "reduce_scatter_tensor": {str(4 * F32): 1},
        "broadcast": {str(4 * F32): 1},
        "all_to_all": {str(4 * F32): 1},
        "all_to_all_single": {str(4 * F32): 1},
        "barrier": {"0": 1},
    }
    expected |= {op: {str(size): 1} for op, size in RENAMED.items() if hasattr(dist, op)}
    for rank, r in enumerate(ranks):
        summary = r["summary"]
        p2p = "send" if rank == 0 else "recv"
        assert {
            op: {s: row["count"] for s, row in sizes.items()} for op, sizes in summary.items()
        } == {
            **expected,
            p2p: {str(4 * F32): 1},
        }


def test_bandwidths_follow_nccl_tests_formulas(ranks: list[dict]) -> None:
    factors = {"all_reduce": 1.0, "all_gather": 0.5, "reduce_scatter_tensor": 0.5, "broadcast": 1}
    for r in ranks:
        for op, factor in factors.items():
            for size, row in r["summary"][op].items():
                assert row["avg_latency_ms"] == pytest.approx(
                    row["total_latency_ms"] / row["count"]
                )
                assert row["algbw_GBps"] > 0
                assert row["busbw_GBps"] == pytest.approx(factor * row["algbw_GBps"]), (op, size)
        barrier = r["summary"]["barrier"]["0"]
        assert barrier["algbw_GBps"] == barrier["busbw_GBps"] == 0


def test_summary_table(ranks: list[dict]) -> None:
    table = ranks[0]["table"].splitlines()
    assert table[0].split()[:4] == ["Comm.", "Op", "Message", "Size"]
    assert "all_reduce" in table
    row = table[table.index("all_reduce") + 1].split()
    assert row[:3] == ["16", "B", "4"]
    assert [line for line in table if line.strip().startswith("1.00 KB")]


def test_prof_ops_debug_and_verbose(ranks: list[dict]) -> None:
    for rank, r in enumerate(ranks):
        assert list(r["debug_summary"]) == ["all_reduce | _scenario"]  # caller appended
        assert not r["broadcast_wrapped"]  # not in prof_ops: left alone
        assert f"[rank {rank}] comm op: all_reduce | _scenario |" in r["verbose"]
        assert "msg size: 8 B" in r["verbose"]


def test_message_bytes_and_bus_factor_without_processes() -> None:
    sig = inspect.signature(dist.all_gather)
    assert message_bytes("all_gather", sig, ([torch.empty(3)] * 4, torch.empty(3)), {}) == 48
    sig = inspect.signature(dist.all_to_all_single)
    assert (
        message_bytes(
            "all_to_all_single",
            sig,
            (),
            {"output": torch.empty(2), "input": torch.empty(8, dtype=torch.float16)},
        )
        == 16
    )
    assert bus_factor("all_reduce", 8) == pytest.approx(2 * 7 / 8)
    assert bus_factor("reduce_scatter", 8) == pytest.approx(7 / 8)
    assert bus_factor("send", 8) == 1.0
    assert set(COLLECTIVES) >= {"all_reduce", "all_to_all", "send", "recv", "barrier"}


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'prof_all'"):
        CommsLoggerConfig.from_dict({"prof_al": True})
    with pytest.raises(ConfigError, match=r"unknown collective 'allreduce'.*'all_reduce'"):
        CommsLoggerConfig.from_dict({"prof_ops": ["allreduce"]})
    with pytest.raises(ConfigError, match=r'"comms_logger.verbose" must be bool'):
        CommsLoggerConfig.from_dict({"verbose": "yes"})
    config = CommsLoggerConfig.from_dict(
        {"comms_logger": {"enabled": True, "prof_all": False, "prof_ops": ["barrier"]}}
    )
    assert config.profiled_ops() == ["barrier"]


def test_straggler_columns_are_not_implemented() -> None:
    with pytest.raises(NotImplementedError, match="show_straggler"):
        CommsLogger().log_summary(show_straggler=True)


def test_only_one_logger_at_a_time() -> None:
    first = CommsLogger().enable()
    try:
        with pytest.raises(RuntimeError, match="another CommsLogger"):
            CommsLogger().enable()
    finally:
        first.disable()
    assert not hasattr(dist.all_reduce, "_zero_profiler_original")

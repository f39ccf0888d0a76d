"""Parameter offload (``offload_param``) to CPU and NVMe trains exactly like stage 3 without it.

Every comparison is against the same stage-3 engine and config without any offload on 2
gloo ranks: keeping the partitions in CPU memory or in files between uses, fetching them
for each all-gather and writing them back after each step must not change a single bit of
the losses or weights (fp32 and bf16). Memory is checked by counting: between steps the
engine holds no partition on the device (``device_bytes`` drops by exactly the partitions'
bytes, or to the whole small parameters alone when the optimizer is offloaded too).
"""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest
import torch
from test_offload import _DiskFullOnce, _train, checkpoint_resume

import zero_core
import zero_core._aio
from harness import run_ranks
from training import LR, WD, config, make_model
from zero_core._offload import device_bytes

STEPS = 4
THRESHOLD = 40  # stage3_param_persistence_threshold in training.config


def _config(dtype: str = "fp32", param: dict | None = None, opt: dict | None = None, **kw: Any):
    cfg = config(3, dtype=dtype, gas=kw.pop("gas", 1), clip=kw.pop("clip", 0.0), **kw)
    cfg["optimizer"] = {"type": "AdamW", "params": {"lr": LR, "weight_decay": WD}}
    if param is not None:
        cfg["zero_optimization"]["offload_param"] = param
    if opt is not None:
        cfg["zero_optimization"]["offload_optimizer"] = opt
    return cfg


#: NVMe offload reads and writes through zero-aio; the package's own test session installs
#: torch and zero-core only (``nox -s tests-all`` installs zero-aio too).
HAVE_AIO = zero_core._aio.installed()
needs_aio = pytest.mark.skipif(not HAVE_AIO, reason="NVMe offload needs zero-aio, not installed")


def _cases(nvme: str) -> dict[str, tuple[str, dict, dict | None, dict]]:
    """name -> (dtype, offload_param block, offload_optimizer block, other options)."""
    disk = {"device": "nvme", "nvme_path": nvme, "max_in_cpu": 0, "buffer_count": 3}
    opt_disk = {"device": "nvme", "nvme_path": nvme, "buffer_count": 4}
    cases = {}
    for dtype in ("fp32", "bf16"):
        cases[f"param-cpu-{dtype}"] = (dtype, {"device": "cpu"}, None, {})
        cases[f"param-nvme-opt-cpu-{dtype}"] = (dtype, disk, {"device": "cpu"}, {})
        cases[f"param-nvme-opt-nvme-{dtype}"] = (dtype, disk, opt_disk, {})
    cases["param-nvme-opt-nvme-gas2-clip-some-in-cpu"] = (
        "fp32",
        {**disk, "max_in_cpu": 200, "buffer_count": 2},
        opt_disk,
        {"gas": 2, "clip": 0.05},
    )
    return cases


#: Every case, the NVMe ones skipped without zero-aio.
CASE_NAMES = [
    pytest.param(name, marks=needs_aio if "nvme" in name else ()) for name in _cases("/unused")
]


def _partition_bytes(engine: Any) -> int:
    return sum(
        p.zs_shard.shard_numel * p.element_size()
        for p in engine.module.parameters()
        if zero_core.is_partitioned(p)
    )


def _whole_param_bytes(engine: Any) -> int:
    """Bytes of the small params that stay whole on every rank, counted from the model."""
    return sum(
        p.numel() * p.element_size()
        for p in engine.module.parameters()
        if not zero_core.is_partitioned(p)
    )


def _record_io(engine: Any, store: Any, events: list[tuple[str, int]]) -> list[bool]:
    """Log each forward, file read and fetch (by partition index) in order; returns, per
    fetch, whether it gave a copy rather than the stored partition itself."""
    copies: list[bool] = []
    engine.module.register_forward_pre_hook(lambda module, inputs: events.append(("forward", -1)))

    class Logged:
        def __init__(self, real: Any) -> None:
            self.real = real

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

        def async_pread(self, buffer: torch.Tensor, path: str, file_offset: int = 0) -> int:
            events.append(("read", int(os.path.basename(path).split(".")[0][len("param") :])))
            return self.real.async_pread(buffer, path, file_offset)

    for slot in getattr(store, "slots", []):
        slot.handle = Logged(slot.handle)
    fetch = store.fetch

    def logged_fetch(s: Any, device: torch.device) -> torch.Tensor:
        events.append(("fetch", getattr(store, "index", {}).get(id(s), -1)))
        out = fetch(s, device)
        copies.append(out.untyped_storage().data_ptr() != s.local.untyped_storage().data_ptr())
        return out

    store.fetch = logged_fetch
    return copies


def _run(rank: int, cfg: dict) -> dict[str, Any]:
    engine, optimizer, _, _ = zero_core.initialize(model=make_model(), config=cfg)
    store = optimizer.param_store
    events: list[tuple[str, int]] = []
    copies = _record_io(engine, store, events) if store is not None else []
    losses = _train(rank, engine, range(STEPS))
    measured = device_bytes(engine)  # between steps, before full_state_dict gathers
    weights = engine.full_state_dict(torch.float32)
    out = {
        "losses": losses,
        "device_bytes": measured,
        "partition_bytes": _partition_bytes(engine),
        "whole_param_bytes": _whole_param_bytes(engine),
        "gathered_between_steps": sum(
            p.data.numel() for p in engine.module.parameters() if zero_core.is_partitioned(p)
        ),
        "stored": [
            p.zs_shard.store is not None
            for p in engine.module.parameters()
            if zero_core.is_partitioned(p)
        ],
        "copies": copies,
        "fetches": getattr(store, "fetches", 0),
        "events": events,
        "files": sorted(os.listdir(store.dir)) if hasattr(store, "dir") else None,
        "in_cpu": [s.name for s in getattr(store, "in_cpu", [])],
        "weights": weights,
    }
    return out


def _all_cases(rank: int, nvme: str) -> dict[str, Any]:
    plain: dict[tuple, dict] = {}
    out = {}
    for name, (dtype, param, opt, kw) in _cases(nvme).items():
        if "nvme" in name and not HAVE_AIO:
            continue
        key = (dtype, tuple(sorted(kw.items())))
        if key not in plain:
            plain[key] = _run(rank, _config(dtype, **kw))
        out[name] = (plain[key], _run(rank, _config(dtype, param, opt, **kw)))
    return out


@pytest.fixture(scope="module")
def nvme_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("nvme"))


@pytest.fixture(scope="module")
def results(nvme_dir: str) -> dict:
    return run_ranks(_all_cases, nvme_dir, timeout=600)[0]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_param_offload_equals_no_offload(results, name):
    plain, offloaded = results[name]
    assert offloaded["losses"] == plain["losses"]
    for key, value in plain["weights"].items():
        assert torch.equal(offloaded["weights"][key], value), key
    assert plain["losses"][-1] != plain["losses"][0]  # it trained


@pytest.mark.parametrize("name", CASE_NAMES)
def test_no_partition_stays_on_the_device(results, name):
    plain, offloaded = results[name]
    assert offloaded["stored"] and all(offloaded["stored"])
    assert offloaded["gathered_between_steps"] == 0
    assert offloaded["copies"] and all(offloaded["copies"])  # every fetch made a copy
    assert offloaded["fetches"] == len(offloaded["copies"])
    partitions = offloaded["partition_bytes"]
    assert partitions > 0
    if "-opt-" in name:  # masters and Adam state offloaded too: only the small whole params
        assert offloaded["device_bytes"] == offloaded["whole_param_bytes"]
    elif name.endswith("fp32"):
        # without offload fp32 stage 3 steps the partitions themselves; with the partitions
        # moved, the device holds an fp32 master copy of the same size in their place
        assert offloaded["device_bytes"] == plain["device_bytes"]
    else:
        assert offloaded["device_bytes"] == plain["device_bytes"] - partitions


@needs_aio
def test_nvme_partitions_are_read_ahead_in_forward_order(results):
    events = results["param-nvme-opt-cpu-fp32"][1]["events"]
    # the second forward (the first records the order): 4 partitions, indexes in model
    # order, each read once; when module 0 has run, the next two are read at once
    # (buffer_count 3, one kept free) before any of them is fetched
    second = [i for i, e in enumerate(events) if e[0] == "forward"][1]
    forward = events[second + 1 : second + 9]
    assert [k for kind, k in forward if kind == "read"] == [0, 1, 2, 3]
    assert [k for kind, k in forward if kind == "fetch"] == [0, 1, 2, 3]
    assert forward.index(("read", 2)) < forward.index(("fetch", 1))


@needs_aio
def test_nvme_files_and_max_in_cpu(results):
    _, full = results["param-nvme-opt-nvme-fp32"]
    # 4 partitions on disk (2 weights, 1 bias and the last weight), two slot files each
    assert full["files"] == [f"param{k}.{slot}" for k in range(4) for slot in (0, 1)]
    assert full["in_cpu"] == []
    _, some = results["param-nvme-opt-nvme-gas2-clip-some-in-cpu"]
    # max_in_cpu 200: 0.weight (128 elements per rank), 2.bias (24) and 4.weight (24) stay
    # in memory; 2.weight (768) does not fit and goes to disk
    assert some["in_cpu"] == ["0.weight", "2.bias", "4.weight"]
    assert some["files"] == ["param0.0", "param0.1"]


@needs_aio
def test_param_files_removed_when_the_ranks_exit(results, nvme_dir):
    assert os.listdir(nvme_dir) == []


# -- checkpoints --------------------------------------------------------------------------------


@needs_aio
def test_checkpoint_save_load_continue(tmp_path):
    nvme, ckpt = tmp_path / "nvme", tmp_path / "ckpt"
    nvme.mkdir()
    disk = {"device": "nvme", "nvme_path": str(nvme), "max_in_cpu": 0}
    cfg = _config("bf16", disk, {"device": "cpu"})
    for out in run_ranks(checkpoint_resume, cfg, str(nvme), str(ckpt)):
        assert out["left_after_destroy"] == []
        losses, weights = out["unbroken"]
        got_losses, got_weights = out["resumed"]
        assert got_losses == losses
        for key, value in weights.items():
            assert torch.equal(got_weights[key], value), key


# -- a full disk --------------------------------------------------------------------------------


class _Times(list):
    """``armed`` for ``_DiskFullOnce`` that stays armed for ``n`` failures."""

    def __init__(self, n: int) -> None:
        super().__init__([n > 0])
        self.n = n

    def __setitem__(self, i: Any, value: Any) -> None:
        self.n -= 1
        super().__setitem__(i, self.n > 0)


def _disk_config(nvme: str) -> dict:
    disk = {"device": "nvme", "nvme_path": nvme, "max_in_cpu": 0, "buffer_count": 2}
    return _config("fp32", disk, {"device": "cpu"})


def _disk_full(rank: int, nvme: str) -> dict[str, Any]:
    engine, optimizer, _, _ = zero_core.initialize(model=make_model(), config=_disk_config(nvme))
    _train(rank, engine, range(2))
    store = optimizer.param_store
    # one rank's disk is full for the write-back of step 2 and for its first retry
    slot = store.slots[1]
    slot.handle = _DiskFullOnce(slot.handle, _Times(2 if rank == 1 else 0))
    _train(rank, engine, range(2, 3))  # the step stands: its weights are kept in memory
    kept = {"global_steps": engine.global_steps, "dirty": len(store.dirty)}
    with pytest.raises(OSError) as info:  # the retry before the next forward fails too
        _train(rank, engine, range(3, 4))
    refused = {"message": str(info.value), "errno": info.value.errno}
    losses = _train(rank, engine, range(3, 5))  # room again: the write goes through
    return {
        "kept": kept,
        "refused": refused,
        "dirty_after": len(store.dirty),
        "losses": losses,
        "weights": engine.full_state_dict(torch.float32),
    }


def _no_fault(rank: int, nvme: str) -> dict[str, Any]:
    engine, _, _, _ = zero_core.initialize(model=make_model(), config=_disk_config(nvme))
    losses = _train(rank, engine, range(5))
    return {"losses": losses[3:], "weights": engine.full_state_dict(torch.float32)}


@needs_aio
def test_disk_full_on_write_back_keeps_the_state(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    faulty = run_ranks(_disk_full, str(tmp_path / "a"))
    clean = run_ranks(_no_fault, str(tmp_path / "b"))
    for rank, (got, want) in enumerate(zip(faulty, clean)):
        assert got["kept"] == {"global_steps": 3, "dirty": 4}  # on every rank: no commit
        message = got["refused"]["message"]
        assert "no parameter file changed on any rank" in message
        if rank == 1:  # the rank whose disk filled names the file and the error
            assert got["refused"]["errno"] == errno.ENOSPC
            assert os.path.join(str(tmp_path / "a"), "zerospeed-offload-") in message
            assert "/rank1/params/param1." in message
        else:
            assert "another rank failed" in message
        assert got["dirty_after"] == 0
        assert got["losses"] == want["losses"]
        for key, value in want["weights"].items():
            assert torch.equal(got["weights"][key], value), key


# -- errors at initialize -----------------------------------------------------------------------


def _init_error(rank: int, cfg: dict, with_optimizer: bool = True) -> str:
    if not with_optimizer:
        cfg = {k: v for k, v in cfg.items() if k != "optimizer"}
    with pytest.raises((ValueError, ImportError)) as info:
        zero_core.initialize(model=make_model(), config=cfg)
    return f"{type(info.value).__name__}: {info.value}"


def _all_init_errors(rank: int, missing: str, ok: str) -> list[str]:
    disk = {"device": "nvme", "nvme_path": ok}
    return [
        _init_error(rank, _config("fp32", {**disk, "nvme_path": missing})),
        _init_error(rank, _config("fp32", {**disk, "nvme_path": "/sys"})),
        _init_error(rank, _config("fp32", {**disk, "buffer_size": 100, "max_in_cpu": 0})),
        _init_error(rank, _config("fp32", {"device": "cpu"}), with_optimizer=False),
    ]


@needs_aio
def test_initialize_errors(tmp_path):
    missing = str(tmp_path / "missing")
    got = run_ranks(_all_init_errors, missing, str(tmp_path))[0]
    where = "zero_optimization.offload_param"
    assert got[0] == (
        f"ValueError: {where}.nvme_path: {missing!r} does not exist; create it or point "
        f"nvme_path at a directory on the NVMe drive"
    )
    assert got[1].startswith(f"ValueError: {where}.nvme_path: cannot write under '/sys' (")
    assert got[2] == (
        f"ValueError: {where}.buffer_size = 100 elements is smaller than the partition of "
        f"'2.weight' on this rank (768 elements); raise buffer_size to at least 768, or raise "
        f"{where}.max_in_cpu to keep it in CPU memory"
    )
    assert got[3] == (
        f"ValueError: {where}: parameter offload is built with the optimizer (its step "
        f"writes the partitions back), and none was given; pass an optimizer or remove the "
        f"block"
    )
    assert os.listdir(tmp_path) == []  # no run directory was left behind

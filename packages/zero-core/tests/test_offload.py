"""Optimizer offload to CPU and NVMe trains exactly like the engine without offload.

Every comparison is against the same engine and config without ``offload_optimizer`` on 2
gloo ranks: moving the masters and the optimizer state to CPU memory or to swap files, and
stepping sub-group by sub-group, must not change a single bit of the losses or weights
(fp32 and bf16). NVMe runs put ``nvme_path`` in a temporary directory.
"""

from __future__ import annotations

import errno
import glob
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import torch
from torch import nn

import zero_core
import zero_core._aio
from harness import run_ranks
from training import LR, WD, config, make_model, micro_batch
from zero_core._offload import cpu_param_groups, device_bytes

#: NVMe offload reads and writes through zero-aio; the package's own test session installs
#: torch and zero-core only (``nox -s tests-all`` installs zero-aio too).
HAVE_AIO = zero_core._aio.installed()
needs_aio = pytest.mark.skipif(not HAVE_AIO, reason="NVMe offload needs zero-aio, not installed")

STEPS = 4
SUB_GROUP = 300  # elements of a rank's shards per sub-group: several sub-groups per step


def _config(stage: int, dtype: str = "fp32", offload: dict | None = None, **opts: Any) -> dict:
    gas, clip = opts.pop("gas", 1), opts.pop("clip", 0.0)
    cfg = config(stage, dtype=dtype, gas=gas, clip=clip, sub_group_size=SUB_GROUP)
    cfg["optimizer"] = {"type": "AdamW", "params": {"lr": LR, "weight_decay": WD}}
    if offload is not None:
        cfg["zero_optimization"]["offload_optimizer"] = offload
    return cfg


def _train(rank: int, engine: Any, steps: range) -> list[float]:
    gas = engine.gradient_accumulation_steps()
    losses = []
    for step in steps:
        for k in range(gas):
            x, y = micro_batch(step, k, rank, gas)
            loss = nn.functional.mse_loss(engine(x).float(), y)
            engine.backward(loss)
            engine.step()
        losses.append(loss.item())
    return losses


def _run(rank: int, cfg: dict, steps: int = STEPS) -> dict[str, Any]:
    engine, optimizer, _, _ = zero_core.initialize(model=make_model(), config=cfg)
    losses = _train(rank, engine, range(steps))
    weights = engine.full_state_dict(torch.float32)
    return {
        "losses": losses,
        "weights": weights,
        "optimizer": type(optimizer).__name__,
        "inner": type(optimizer.inner).__name__,
        "sub_groups": len(getattr(optimizer, "sub_groups", [])),
        **_held_before_step(rank, engine, steps),
    }


def _storage_bytes(tensors: Any) -> int:
    seen = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(seen.values())


def _held_before_step(rank: int, engine: Any, step: int) -> dict[str, Any]:
    """One more micro-step's backward (the gradients reduced, the step not taken): what the
    device holds then, and where the gradient partitions are."""
    x, y = micro_batch(step, 0, rank, engine.gradient_accumulation_steps())
    engine.backward(nn.functional.mse_loss(engine(x).float(), y))
    opt = engine.optimizer
    partitions = [s.grad for s in opt.shards if s.grad is not None]
    state = [v for st in opt.inner.state.values() for v in st.values() if torch.is_tensor(v)]
    # fp32 stage 3 steps the weight shards themselves: those stay on the device either way
    shards = {s.local.data_ptr() for s in opt.shards if s.local is not None}
    masters = [m for m in opt.masters if m.data_ptr() not in shards]
    return {
        "device_bytes": device_bytes(engine),
        "optimizer_bytes": _storage_bytes(partitions + masters + state),
        "partitions": len(partitions),
        # each partition its own buffer of its own size (no view of a reduced bucket)
        "own_buffers": all(g.untyped_storage().nbytes() == g.numel() * 4 for g in partitions),
    }


def _cases(nvme: str, with_nvme: bool = True) -> dict[str, tuple[dict, dict]]:
    """name -> (config without offload, config with offload)."""
    cases = {}
    for stage in (1, 2, 3):
        for dtype in ("fp32", "bf16"):
            cases[f"cpu-stage{stage}-{dtype}"] = (stage, dtype, {"device": "cpu"}, {})
    cases["cpu-stage2-gas2-clip"] = (2, "fp32", {"device": "cpu"}, {"gas": 2, "clip": 0.05})
    nvme_block = {"device": "nvme", "nvme_path": nvme}
    if not with_nvme:
        return _configs(cases)
    cases["nvme-stage3-fp32"] = (3, "fp32", nvme_block, {})
    cases["nvme-stage3-bf16-pipelined"] = (
        3,
        "bf16",
        {**nvme_block, "pipeline_read": True, "pipeline_write": True, "buffer_count": 3},
        {},
    )
    cases["nvme-stage3-one-buffer-pipelined"] = (
        3,
        "fp32",
        {**nvme_block, "pipeline_read": True, "pipeline_write": True, "buffer_count": 1},
        {"gas": 2, "clip": 0.05},
    )
    return _configs(cases)


def _configs(cases: dict[str, tuple]) -> dict[str, tuple[dict, dict]]:
    return {
        name: (_config(stage, dtype, **dict(opts)), _config(stage, dtype, block, **dict(opts)))
        for name, (stage, dtype, block, opts) in cases.items()
    }


#: Every case, the NVMe ones skipped without zero-aio.
CASE_NAMES = [
    pytest.param(name, marks=needs_aio if name.startswith("nvme") else ())
    for name in _cases("/unused")
]


def _all_cases(rank: int, nvme: str) -> dict[str, tuple[dict, dict]]:
    out = {}
    for name, (plain, offloaded) in _cases(nvme, HAVE_AIO).items():
        out[name] = (_run(rank, plain), _run(rank, offloaded))
    return out


@pytest.fixture(scope="module")
def nvme_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("nvme"))


@pytest.fixture(scope="module")
def results(nvme_dir: str) -> dict:
    per_rank = run_ranks(_all_cases, nvme_dir, timeout=600)
    return per_rank[0]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_offload_equals_no_offload(results, name):
    plain, offloaded = results[name]
    kind = "CpuOffloadOptimizer" if name.startswith("cpu") else "NvmeOffloadOptimizer"
    assert offloaded["optimizer"] == kind
    assert offloaded["sub_groups"] > 1  # the step really ran in pieces
    assert offloaded["losses"] == plain["losses"]
    for key, value in plain["weights"].items():
        assert torch.equal(offloaded["weights"][key], value), key
    assert plain["losses"][-1] != plain["losses"][0]  # it trained


@pytest.mark.parametrize("name", CASE_NAMES)
def test_offload_keeps_the_gradient_partition_off_the_device(results, name):
    # measured with the gradients reduced, before the step: the offloaded engine's device
    # holds what the plain one does minus its fp32 gradient partitions, masters and state
    plain, offloaded = results[name]
    assert offloaded["partitions"] == plain["partitions"] > 0
    assert offloaded["own_buffers"]
    expected = plain["device_bytes"] - plain["optimizer_bytes"]
    assert offloaded["device_bytes"] == expected


def test_offload_builds_the_cpu_optimizer(results):
    # the engine's optimizer under offload: zero-optim's CPUAdam for "AdamW" (DeepSpeed's
    # CPU Adam under offload); torch's AdamW without zero-optim
    installed = bool(zero_core._registry.registered_types("zerospeed.optimizers"))
    assert results["cpu-stage2-fp32"][1]["inner"] == ("CPUAdam" if installed else "AdamW")


def test_registry_sees_cpu_stand_ins_for_device_params():
    # params on a device (meta here, a GPU in real runs) would get the device version;
    # the stand-ins the engine passes under offload make the registry pick the CPU one
    pytest.importorskip("zero_optim")
    groups = [{"params": [torch.empty(6, device="meta")], "weight_decay": 0.0}]
    options = {"lr": LR}
    on_device = zero_core._registry.build_optimizer("AdamW", groups, options)
    offloaded = zero_core._registry.build_optimizer("AdamW", cpu_param_groups(groups), options)
    assert type(on_device).__name__ == "FusedAdam"
    assert type(offloaded).__name__ == "CPUAdam"
    assert offloaded.param_groups[0]["weight_decay"] == 0.0


@needs_aio
def test_swap_files_removed_when_the_ranks_exit(results, nvme_dir):
    # the ranks ended without closing their optimizers: the exit handlers removed the files
    assert os.listdir(nvme_dir) == []


# -- checkpoints and faults ---------------------------------------------------------------------


def _nvme_config(nvme: str) -> dict:
    return _config(3, "fp32", {"device": "nvme", "nvme_path": nvme, "pipeline_read": True})


def _swap_dirs(nvme: str, rank: int) -> list[str]:
    return glob.glob(os.path.join(nvme, "zerospeed-offload-*", f"rank{rank}"))


def checkpoint_resume(rank: int, cfg: dict, nvme: str, ckpt: str) -> dict[str, Any]:
    """Train 3 steps, save, train 3 more, destroy (which must remove this rank's offload
    files and stop training); then a fresh engine loads the checkpoint and trains the same 3
    steps. Shared with test_param_offload.py."""
    first, _, _, _ = zero_core.initialize(model=make_model(), config=cfg)
    _train(rank, first, range(3))
    first.save_checkpoint(ckpt, tag="step3")
    files_while_training = sorted(os.listdir(_swap_dirs(nvme, rank)[0]))
    unbroken = _train(rank, first, range(3, 6))
    unbroken_weights = first.full_state_dict(torch.float32)
    first.destroy()  # closes the optimizer, which deletes its swap files
    left_after_destroy = _swap_dirs(nvme, rank)
    with pytest.raises(RuntimeError, match="were removed"):
        _train(rank, first, range(6, 7))

    second, _, _, _ = zero_core.initialize(model=make_model(seed=1), config=cfg)
    second.load_checkpoint(ckpt, tag="step3")
    resumed = _train(rank, second, range(3, 6))
    return {
        "files": files_while_training,
        "left_after_destroy": left_after_destroy,
        "unbroken": (unbroken, unbroken_weights),
        "resumed": (resumed, second.full_state_dict(torch.float32)),
    }


@needs_aio
def test_nvme_checkpoint_save_load_continue(tmp_path):
    nvme, ckpt = tmp_path / "nvme", tmp_path / "ckpt"
    nvme.mkdir()
    cfg = _nvme_config(str(nvme))
    for out in run_ranks(checkpoint_resume, cfg, str(nvme), str(ckpt)):
        # two slot files per sub-group, and nothing left once the optimizer is closed
        assert out["files"] and all(f.rsplit(".", 1)[1] in ("0", "1") for f in out["files"])
        assert out["left_after_destroy"] == []
        losses, weights = out["unbroken"]
        got_losses, got_weights = out["resumed"]
        assert got_losses == losses
        for key, value in weights.items():
            assert torch.equal(got_weights[key], value), key
    assert os.listdir(nvme) == []


class _DiskFullOnce:
    """An ``aio_handle`` stand-in whose next write stops halfway and fails with ENOSPC,
    as a full disk does; everything else goes to the real handle."""

    def __init__(self, real: Any, armed: list[bool]) -> None:
        self.real = real
        self.armed = armed
        self.failed: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def async_pwrite(self, buffer: torch.Tensor, path: str, file_offset: int = 0) -> int:
        if self.armed[0]:
            self.armed[0] = False
            self.real.sync_pwrite(buffer[: buffer.numel() // 2].clone(), path, file_offset)
            self.failed = path
            return 0
        return self.real.async_pwrite(buffer, path, file_offset)

    def wait(self) -> int:
        done = self.real.wait()
        if self.failed is not None:
            path, self.failed = self.failed, None
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return done


def _snapshot(optimizer: Any) -> Any:
    return _clone(optimizer.state_dict())


def _clone(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clone(v) for v in value]
    return value


def _same(a: Any, b: Any) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def _disk_full(rank: int, nvme: str) -> dict[str, Any]:
    engine, optimizer, _, _ = zero_core.initialize(model=make_model(), config=_nvme_config(nvme))
    _train(rank, engine, range(3))
    before = _snapshot(optimizer)
    weights_before = engine.full_state_dict(torch.float32)
    # one rank's disk fills up while it writes its second sub-group (slot 1 of the pool)
    slot = optimizer.swap.slots[1]
    slot.handle = _DiskFullOnce(slot.handle, [rank == 1])
    with pytest.raises(OSError) as info:
        _train(rank, engine, range(3, 4))
    refused = {
        "message": str(info.value),
        "errno": info.value.errno,
        "global_steps": engine.global_steps,
        "same_state": _same(before, _snapshot(optimizer)),
        "same_weights": _same(weights_before, engine.full_state_dict(torch.float32)),
    }
    # the disk has room again: the same step again, and one more
    losses = _train(rank, engine, range(3, 5))
    return {"refused": refused, "losses": losses, "weights": engine.full_state_dict(torch.float32)}


def _no_fault(rank: int, nvme: str) -> dict[str, Any]:
    engine, _, _, _ = zero_core.initialize(model=make_model(), config=_nvme_config(nvme))
    losses = _train(rank, engine, range(5))
    return {"losses": losses[3:], "weights": engine.full_state_dict(torch.float32)}


@needs_aio
def test_disk_full_refuses_the_step_and_keeps_the_state(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    faulty = run_ranks(_disk_full, str(tmp_path / "a"))
    clean = run_ranks(_no_fault, str(tmp_path / "b"))
    for rank, (got, want) in enumerate(zip(faulty, clean)):
        refused = got["refused"]
        assert refused["global_steps"] == 3
        assert refused["same_state"] and refused["same_weights"]
        assert "the step was refused on every rank" in refused["message"]
        if rank == 1:  # the rank whose disk filled names the file and the error
            assert refused["errno"] == errno.ENOSPC
            assert str(tmp_path / "a") in refused["message"]
            assert "subgroup1." in refused["message"]
        else:
            assert "another rank failed" in refused["message"]
        assert got["losses"] == want["losses"]
        for key, value in want["weights"].items():
            assert torch.equal(got["weights"][key], value), key


# -- errors at initialize -----------------------------------------------------------------------


def _init_error(rank: int, nvme_path: str, hide_aio: bool) -> str:
    if hide_aio:
        zero_core._aio._entry_points = lambda: {}
    with pytest.raises((ValueError, ImportError)) as info:
        zero_core.initialize(model=make_model(), config=_nvme_config(nvme_path))
    return f"{type(info.value).__name__}: {info.value}"


def _all_init_errors(rank: int, missing: str, a_file: str, ok: str) -> list[str]:
    return [
        _init_error(rank, missing, False),
        _init_error(rank, a_file, False),
        _init_error(rank, "/sys", False),
        _init_error(rank, ok, True),
    ]


@needs_aio
def test_nvme_path_and_zero_aio_errors(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    missing = str(tmp_path / "missing")
    got = run_ranks(_all_init_errors, missing, str(a_file), str(tmp_path))[0]
    where = "zero_optimization.offload_optimizer.nvme_path"
    assert got[0] == (
        f"ValueError: {where}: {missing!r} does not exist; create it or point nvme_path at a "
        f"directory on the NVMe drive"
    )
    assert got[1] == f"ValueError: {where}: {str(a_file)!r} is not a directory; give a directory"
    assert got[2].startswith(f"ValueError: {where}: cannot write under '/sys' (")
    assert got[3] == "ImportError: zero-aio is not installed: pip install zero-aio"
    assert os.listdir(tmp_path) == ["file"]  # no run directory was left behind


@needs_aio
def test_swap_files_removed_at_interpreter_exit(tmp_path):
    # a process that ends without deleting its engine: the atexit finalizer cleans up
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import zero_core
        from training import make_model
        from test_offload import _nvme_config, _swap_dirs
        engine, _, _, _ = zero_core.initialize(model=make_model(), config=_nvme_config(
            {str(tmp_path)!r}))
        assert os.listdir(_swap_dirs({str(tmp_path)!r}, 0)[0]), "no swap files"
        print("trained")
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "trained" in done.stdout
    assert os.listdir(tmp_path) == []

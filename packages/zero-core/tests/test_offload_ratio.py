"""Partial optimizer offload (``offload_optimizer.ratio`` < 1) trains exactly like the engine
without offload, keeps the right share on the device, and checkpoints across ratios; and
``zero_force_ds_cpu_optimizer`` refuses a client optimizer that is not a CPU implementation.

Every training comparison is against the same engine and config without
``offload_optimizer`` on 2 gloo ranks, bitwise, as in test_offload.py: splitting the step
between the offload optimizer and the device optimizer must not change a bit. On this
CPU-only machine the "device" is the CPU, so what is kept on the device is told by the
optimizer's split (``optimizer.kept``), and the device optimizer is the one the config's type
resolves to over the device parameters (the one the engine without offload builds).
"""

from __future__ import annotations

import math
import os
from typing import Any

import pytest
import torch
from test_offload import (
    HAVE_AIO,
    SUB_GROUP,
    _config,
    _configs,
    _held_before_step,
    _train,
    checkpoint_resume,
    needs_aio,
)

import zero_core
from harness import run_ranks
from training import LR, WD, make_model
from zero_core._offload import split_sub_groups
from zero_core.config import ConfigError, load_config

STEPS = 4
RATIOS = (0.0, 0.5)


def _ratio_block(ratio: float, nvme: str | None = None) -> dict:
    if nvme is None:
        return {"device": "cpu", "ratio": ratio}
    return {"device": "nvme", "nvme_path": nvme, "ratio": ratio}


def _cases(nvme: str, with_nvme: bool = True) -> dict[str, tuple[dict, dict]]:
    """name -> (config without offload, config with a partial offload)."""
    specs: dict[str, tuple[int, str, dict, dict]] = {}
    for stage in (1, 2, 3):
        for ratio in RATIOS:
            specs[f"cpu-stage{stage}-ratio{ratio}"] = (stage, "fp32", _ratio_block(ratio), {})
    specs["cpu-stage2-bf16-gas2-clip-ratio0.5"] = (
        2, "bf16", _ratio_block(0.5), {"gas": 2, "clip": 0.05}
    )  # fmt: skip
    if with_nvme:
        for ratio in RATIOS:
            specs[f"nvme-stage3-ratio{ratio}"] = (3, "fp32", _ratio_block(ratio, nvme), {})
    return _configs(specs)


CASE_NAMES = [
    pytest.param(name, marks=needs_aio if name.startswith("nvme") else ())
    for name in _cases("/unused")
]


def _run(rank: int, cfg: dict) -> dict[str, Any]:
    engine, optimizer, _, _ = zero_core.initialize(model=make_model(), config=cfg)
    losses = _train(rank, engine, range(STEPS))
    out = {
        "losses": losses,
        "weights": engine.full_state_dict(torch.float32),
        "optimizer": type(optimizer).__name__,
        **_held_before_step(rank, engine, STEPS),
    }
    if hasattr(optimizer, "kept"):
        every = split_sub_groups(optimizer.shards, SUB_GROUP)
        out |= {
            "inner": type(optimizer.inner).__name__,
            "device_inner": type(optimizer.device_inner).__name__,
            "sub_group_sizes": [sum(s.shard_numel for s in sub) for sub in every],
            "offloaded_sub_groups": len(optimizer.sub_groups),
            "kept_numel": [s.shard_numel for s in optimizer.kept],
            "offloaded_numel": sorted(s.shard_numel for s in optimizer.offloaded),
        }
    engine.destroy()
    return out


def _all_cases(rank: int, nvme: str) -> dict[str, tuple[dict, dict]]:
    plain_runs: dict[str, dict] = {}
    out = {}
    for name, (plain, partial) in _cases(nvme, HAVE_AIO).items():
        key = repr(plain)  # one run per distinct config without offload
        if key not in plain_runs:
            plain_runs[key] = _run(rank, plain)
        out[name] = (plain_runs[key], _run(rank, partial))
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    nvme = str(tmp_path_factory.mktemp("nvme"))
    return run_ranks(_all_cases, nvme, timeout=600)


def _ratio(name: str) -> float:
    return float(name.rsplit("ratio", 1)[1])


def assert_same_training(got: tuple[list, dict], want: tuple[list, dict]) -> None:
    """Equal losses at every step and bitwise equal final weights."""
    assert got[0] == want[0]
    for key, value in want[1].items():
        assert torch.equal(got[1][key], value), key


@pytest.mark.parametrize("name", CASE_NAMES)
def test_partial_offload_equals_no_offload(results, name):
    for per_rank in results:
        plain, partial = per_rank[name]
        kind = "CpuOffloadOptimizer" if name.startswith("cpu") else "NvmeOffloadOptimizer"
        assert partial["optimizer"] == kind
        assert_same_training(
            (partial["losses"], partial["weights"]), (plain["losses"], plain["weights"])
        )
        assert plain["losses"][-1] != plain["losses"][0]  # it trained


@pytest.mark.parametrize("name", CASE_NAMES)
def test_ratio_splits_the_sub_groups_in_order(results, name):
    # the documented rule, recomputed from the sub-group sizes: a sub-group is offloaded
    # when the sub-groups before it hold fewer than ratio x all the elements
    ratio = _ratio(name)
    for per_rank in results:
        partial = per_rank[name][1]
        sizes = partial["sub_group_sizes"]
        assert len(sizes) > 2  # several sub-groups to split
        before = [sum(sizes[:k]) for k in range(len(sizes))]
        expected = sum(1 for b in before if b < ratio * sum(sizes))
        assert partial["offloaded_sub_groups"] == expected
        offloaded, kept = sum(partial["offloaded_numel"]), sum(partial["kept_numel"])
        assert offloaded + kept == sum(sizes)
        assert offloaded == sum(sizes[:expected])
        if ratio == 0.0:
            assert offloaded == 0
        else:  # 0.5 offloads some sub-groups and keeps others on the device
            assert 0 < offloaded < sum(sizes) and offloaded >= ratio * sum(sizes)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_device_bytes_count_the_kept_share(results, name):
    # measured with the gradients reduced, before the step. Fully offloaded, the device
    # holds the plain engine's bytes less its gradient partitions, masters and state (what
    # test_offload.py checks); each kept shard adds back its own fp32 gradient partition,
    # master, Adam's exp_avg and exp_avg_sq (4 x shard_numel x 4 bytes) and its step count
    # (one fp32 scalar)
    for per_rank in results:
        plain, partial = per_rank[name]
        fully_offloaded = plain["device_bytes"] - plain["optimizer_bytes"]
        kept = sum(4 * 4 * n + 4 for n in partial["kept_numel"])
        assert partial["device_bytes"] == fully_offloaded + kept
        assert partial["partitions"] == plain["partitions"] > 0


def test_device_share_uses_the_device_implementation(results):
    # the offloaded share steps with the type's CPU implementation, the kept share with the
    # one the engine without offload builds over the device parameters (on this CPU-only
    # machine the device is the CPU, so zero-optim resolves both to CPUAdam)
    installed = bool(zero_core._registry.registered_types("zerospeed.optimizers"))
    partial = results[0]["cpu-stage2-ratio0.5"][1]
    assert partial["inner"] == partial["device_inner"] == ("CPUAdam" if installed else "AdamW")


# -- checkpoints ---------------------------------------------------------------------------


def _resume_across(rank: int, save_cfg: dict, load_cfgs: list[dict], ckpt: str) -> dict:
    """Train 3 steps with ``save_cfg``, save, train 3 more; then an engine per config of
    ``load_cfgs`` loads the checkpoint and trains the same 3 steps."""
    first, _, _, _ = zero_core.initialize(model=make_model(), config=save_cfg)
    _train(rank, first, range(3))
    first.save_checkpoint(ckpt, tag="step3")
    unbroken = _train(rank, first, range(3, 6))
    out: dict[str, Any] = {"unbroken": (unbroken, first.full_state_dict(torch.float32))}
    first.destroy()
    out["resumed"] = []
    for cfg in load_cfgs:
        engine, _, _, _ = zero_core.initialize(model=make_model(seed=1), config=cfg)
        engine.load_checkpoint(ckpt, tag="step3")
        resumed = _train(rank, engine, range(3, 6))
        out["resumed"].append((resumed, engine.full_state_dict(torch.float32)))
        engine.destroy()
    return out


def _resume_cases(nvme: str, with_nvme: bool = True) -> dict[str, tuple[dict, list[dict]]]:
    """name -> (config saved with, configs loaded with)."""
    cpu = {r: _config(3, "fp32", _ratio_block(r)) for r in (0.0, 0.5)}
    cases = {
        "stage1-0.5-to-0.5-0.0": (
            _config(1, "fp32", _ratio_block(0.5)),
            [_config(1, "fp32", _ratio_block(r)) for r in (0.5, 0.0)],
        ),
        "stage2-0.5-to-0.5-0.0-1.0-none": (
            _config(2, "fp32", _ratio_block(0.5)),
            [_config(2, "fp32", _ratio_block(r)) for r in (0.5, 0.0, 1.0)] + [_config(2)],
        ),
        "stage3-0.0-to-0.0-0.5": (cpu[0.0], [cpu[0.0], cpu[0.5]]),
    }
    if with_nvme:
        saved = _config(3, "fp32", _ratio_block(0.5, nvme))
        loads = [saved, _config(3, "fp32", _ratio_block(0.0, nvme)), cpu[0.5]]
        cases["nvme-stage3-0.5-to-nvme0.5-nvme0.0-cpu0.5"] = (saved, loads)
    return cases


def _all_resumes(rank: int, nvme: str, ckpt: str) -> dict[str, dict]:
    return {
        name: _resume_across(rank, saved, loads, os.path.join(ckpt, name))
        for name, (saved, loads) in _resume_cases(nvme, HAVE_AIO).items()
    }


@pytest.fixture(scope="module")
def resumes(tmp_path_factory: pytest.TempPathFactory) -> dict:
    nvme = str(tmp_path_factory.mktemp("nvme-ckpt"))
    ckpt = str(tmp_path_factory.mktemp("ckpt"))
    per_rank = run_ranks(_all_resumes, nvme, ckpt, timeout=600)
    assert os.listdir(nvme) == []  # every engine's swap files went with it
    return {name: [r[name] for r in per_rank] for name in per_rank[0]}


RESUME_NAMES = [
    pytest.param(name, marks=needs_aio if name.startswith("nvme") else ())
    for name in _resume_cases("/unused")
]


@pytest.mark.parametrize("name", RESUME_NAMES)
def test_checkpoint_save_load_continue_across_ratios(resumes, name):
    loads = len(_resume_cases("/unused")[name][1])
    for out in resumes[name]:
        assert len(out["resumed"]) == loads
        for resumed in out["resumed"]:
            assert_same_training(resumed, out["unbroken"])


@needs_aio
def test_nvme_partial_offload_swap_files_and_resume(tmp_path):
    # test_offload.py's resume on NVMe, with half the step kept on the device: the swap
    # files hold the offloaded sub-groups only, and go with the engine
    nvme, ckpt = tmp_path / "nvme", tmp_path / "ckpt"
    nvme.mkdir()
    cfg = _config(3, "fp32", {**_ratio_block(0.5, str(nvme)), "pipeline_read": True})
    for out in run_ranks(checkpoint_resume, cfg, str(nvme), str(ckpt)):
        records = {f.rsplit(".", 1)[0] for f in out["files"]}
        assert records == {"subgroup0", "subgroup1"}  # of 3 sub-groups, 2 offloaded
        assert out["left_after_destroy"] == []
        assert_same_training(out["resumed"], out["unbroken"])
    assert os.listdir(nvme) == []


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [-0.5, 1.5, math.nan, math.inf, "0.5", True])
def test_bad_ratio_names_the_key(ratio):
    raw = {
        "train_batch_size": 8,
        "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "ratio": ratio}},
    }
    with pytest.raises(ConfigError) as info:
        load_config(raw, world_size=2)
    assert str(info.value).startswith(
        "zero_optimization.offload_optimizer.ratio: expected a number from 0 to 1, got "
    )


def test_ratio_is_accepted():
    raw = {
        "train_batch_size": 8,
        "zero_optimization": {"stage": 1, "offload_optimizer": {"device": "cpu", "ratio": 0.25}},
    }
    assert load_config(raw, world_size=2).zero_optimization.offload_optimizer.ratio == 0.25


class DeclaredCpuAdamW(torch.optim.AdamW):
    """A client optimizer that declares itself a CPU implementation, as zero-optim's CPU
    optimizers do (see [Note: the CPU optimizer check])."""

    accepts_device_params = False


def _client_config(ratio: float = 1.0, force: bool | None = None) -> dict:
    cfg = _config(2, "fp32", _ratio_block(ratio))
    del cfg["optimizer"]
    if force is not None:
        cfg["zero_force_ds_cpu_optimizer"] = force
    return cfg


def _try(rank: int, optimizer: Any, cfg: dict) -> str:
    """'trained', or the error initialize raised."""
    model = make_model()
    if isinstance(optimizer, type):  # a class: an instance over the model's params
        optimizer = optimizer(model.parameters(), lr=LR, weight_decay=WD)
    try:
        engine, _, _, _ = zero_core.initialize(model=model, optimizer=optimizer, config=cfg)
    except ValueError as exc:
        return f"ValueError: {exc}"
    _train(rank, engine, range(1))
    return "trained"


def _client_optimizers(rank: int) -> dict[str, str]:
    def adamw(groups: Any) -> torch.optim.Optimizer:
        return torch.optim.AdamW(groups, lr=LR, weight_decay=WD)

    def declared(groups: Any) -> torch.optim.Optimizer:
        return DeclaredCpuAdamW(groups, lr=LR, weight_decay=WD)

    out = {
        "torch-instance": _try(rank, torch.optim.AdamW, _client_config()),
        "torch-callable": _try(rank, adamw, _client_config()),
        "torch-instance-force-false": _try(rank, torch.optim.AdamW, _client_config(force=False)),
        "declared-cpu-instance": _try(rank, DeclaredCpuAdamW, _client_config()),
        "declared-cpu-callable-ratio": _try(rank, declared, _client_config(0.5)),
        "instance-ratio": _try(rank, DeclaredCpuAdamW, _client_config(0.5)),
        "callable-ratio-force-false": _try(rank, adamw, _client_config(0.5, force=False)),
    }
    try:
        import zero_optim
    except ImportError:
        return out
    out["zero-optim-cpuadam"] = _try(rank, zero_optim.CPUAdam, _client_config())
    out["zero-optim-fusedadam"] = _try(rank, zero_optim.FusedAdam, _client_config())
    return out


@pytest.fixture(scope="module")
def client_optimizers() -> dict[str, str]:
    r0, r1 = run_ranks(_client_optimizers)
    assert r0 == r1
    return r0


FORCE_ERROR = (
    "ValueError: zero_force_ds_cpu_optimizer: optimizer offload steps the optimizer on the CPU, "
    "and the optimizer passed to initialize() ({name}) is not a CPU implementation; pass "
    "zero_optim.CPUAdam (pip install zero-optim), name the type in the config's 'optimizer' "
    'block instead (offload builds its CPU version), or set "zero_force_ds_cpu_optimizer": '
    "false to step this one on the CPU"
)


def test_client_optimizer_must_be_a_cpu_implementation_under_offload(client_optimizers):
    got = client_optimizers
    assert got["torch-instance"] == FORCE_ERROR.format(name="AdamW")
    assert got["torch-callable"] == FORCE_ERROR.format(name="AdamW")
    assert got["torch-instance-force-false"] == "trained"
    assert got["declared-cpu-instance"] == "trained"
    assert got["declared-cpu-callable-ratio"] == "trained"
    assert got["callable-ratio-force-false"] == "trained"


def test_zero_optims_cpu_adam_passes_the_check_and_fused_adam_does_not(client_optimizers):
    pytest.importorskip("zero_optim")
    assert client_optimizers["zero-optim-cpuadam"] == "trained"
    assert client_optimizers["zero-optim-fusedadam"] == FORCE_ERROR.format(name="FusedAdam")


def test_a_ratio_below_1_needs_an_optimizer_it_can_build_again(client_optimizers):
    assert client_optimizers["instance-ratio"] == (
        "ValueError: zero_optimization.offload_optimizer.ratio = 0.5 keeps part of the step "
        "on the device, which takes a second optimizer built like the first, and an "
        "optimizer instance passed to initialize() cannot be built again: pass a callable "
        "(param groups -> optimizer) or the config's 'optimizer' block, or set the ratio to 1"
    )

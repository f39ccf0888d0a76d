"""zero_core.checkpointing: recomputation equals running the function once, whatever the
settings keep (slices, CPU copies, a contiguous buffer); random streams; the config block;
timing and synchronization at boundaries; 2 gloo ranks for partitioning and ZeRO stage 3.

Every gradient is compared with the same model run without checkpointing, with the same
seeds: bitwise on CPU.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
import torch.distributed as dist
from torch import nn

import zero_core
import zero_core.checkpointing as ckpt
from harness import run_ranks
from training import adamw
from training import config as engine_config
from zero_core.checkpointing import _profile, _settings

D = 12


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    """Each test starts unconfigured, with no streams, timings or buffer."""
    monkeypatch.setattr(_settings, "_STATE", _settings._State())
    ckpt.get_cuda_rng_tracker().reset()
    ckpt.reset_profile()
    ckpt.reset()
    yield
    ckpt.get_cuda_rng_tracker().reset()
    ckpt.reset()


class Block(nn.Module):
    """Linear, tanh, dropout: from the default generator, or from the model-parallel stream."""

    def __init__(self, tracked: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(D, D)
        self.drop = nn.Dropout(0.4)
        self.tracked = tracked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.lin(x))
        if self.tracked:
            with ckpt.get_cuda_rng_tracker().fork():
                return self.drop(h)
        return self.drop(h)


class Net(nn.Module):
    def __init__(self, blocks: int = 3, tracked: bool = False, wrap=None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(tracked) for _ in range(blocks))
        self.head = nn.Linear(D, 1)
        self.wrap = wrap
        self.outputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.outputs = []
        for block in self.blocks:
            x = self.wrap(block, x) if self.wrap else block(x)
            self.outputs.append(x)
        return self.head(x)


def run(wrap=None, *, blocks: int = 3, tracked: bool = False, seed: int = 1, steps: int = 1):
    """Gradients of ``steps`` backward passes, then what the generators draw next."""
    torch.manual_seed(0)
    net = Net(blocks, tracked, wrap)
    ckpt.model_parallel_cuda_manual_seed(seed)
    x = torch.randn(5, D)  # no grad: the first checkpoint's input needs none
    for _ in range(steps):
        net(x).pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    with ckpt.get_cuda_rng_tracker().fork():
        stream_next = torch.rand(4)
    return grads, torch.rand(4), stream_next


def assert_equal(got: dict, ref: dict) -> None:
    assert got.keys() == ref.keys()
    for name in ref:
        assert torch.equal(got[name], ref[name]), name


WRAPS = {"checkpoint": ckpt.checkpoint, "non_reentrant": ckpt.non_reentrant_checkpoint}


@pytest.mark.parametrize("tracked", [False, True], ids=["default-rng", "tracker-stream"])
@pytest.mark.parametrize("wrap", list(WRAPS))
def test_dropout_gradients_and_rng_equal_the_plain_model(wrap, tracked):
    ref_grads, ref_next, ref_stream = run(None, tracked=tracked, steps=2)
    grads, after, stream = run(WRAPS[wrap], tracked=tracked, steps=2)
    assert_equal(grads, ref_grads)
    assert torch.equal(after, ref_next)
    assert torch.equal(stream, ref_stream)
    # the masks matter: another seed gives other gradients
    other, _, _ = run(None, tracked=tracked, seed=2, steps=2)
    assert not torch.equal(other["blocks.0.lin.weight"], ref_grads["blocks.0.lin.weight"])


def test_tuple_outputs_and_non_tensor_arguments_pass_through():
    torch.manual_seed(0)
    w = torch.randn(4, 4, requires_grad=True)
    x = torch.randn(3, 4, requires_grad=True)

    def f(a, scale, tag, mask):
        h = a @ w * scale
        return h, tag, None, mask.sum(), h.sum(1)

    mask = torch.tensor([1, 0, 1])
    direct = f(x, 2.5, "t", mask)
    out = ckpt.checkpoint(f, x, 2.5, "t", mask)
    assert out[1:3] == ("t", None)
    assert torch.equal(out[3], direct[3]) and not out[3].requires_grad
    (out[0].sum() + out[4].pow(2).sum()).backward()
    got = (w.grad.clone(), x.grad.clone())
    w.grad = x.grad = None
    (direct[0].sum() + direct[4].pow(2).sum()).backward()
    assert torch.equal(got[0], w.grad) and torch.equal(got[1], x.grad)

    single = ckpt.checkpoint(lambda a: a * 3, x)
    assert isinstance(single, torch.Tensor) and single.requires_grad


def test_no_grad_just_runs_and_autograd_grad_is_refused():
    x = torch.randn(2, D, requires_grad=True)
    block = Block()
    with torch.no_grad():
        out = ckpt.checkpoint(block, x)
    assert out.grad_fn is None
    y = ckpt.checkpoint(block, x).sum()
    with pytest.raises(RuntimeError, match="non_reentrant_checkpoint"):
        torch.autograd.grad(y, x)
    z = ckpt.non_reentrant_checkpoint(block.lin, x).sum()
    (gx,) = torch.autograd.grad(z, x)
    torch.testing.assert_close(gx, block.lin.weight.detach().sum(0).expand(2, D))


def test_non_reentrant_refuses_the_storage_options():
    ckpt.configure(None, partition_activations=True)
    with pytest.raises(NotImplementedError, match=r"need zero_core\.checkpointing\.checkpoint"):
        ckpt.non_reentrant_checkpoint(nn.Linear(2, 2), torch.randn(1, 2))


# -- the RNG tracker ------------------------------------------------------------------------------


def test_tracker_fork_draws_from_its_own_stream():
    tracker = ckpt.RNGStatesTracker()
    tracker.add("a", 5)
    torch.manual_seed(11)
    ref_default = torch.Generator().manual_seed(11)
    ref_a = torch.Generator().manual_seed(5)
    with tracker.fork("a"):
        first = torch.rand(3)
    assert torch.equal(first, torch.rand(3, generator=ref_a))
    assert torch.equal(torch.rand(2), torch.rand(2, generator=ref_default))
    saved = tracker.get_states()
    with tracker.fork("a"):
        second = torch.rand(3)
    assert torch.equal(second, torch.rand(3, generator=ref_a))
    tracker.set_states(saved)
    with tracker.fork("a"):
        assert torch.equal(torch.rand(3), second)
    assert torch.equal(torch.rand(2), torch.rand(2, generator=ref_default))


def test_tracker_errors():
    tracker = ckpt.RNGStatesTracker()
    tracker.add("a", 5)
    with pytest.raises(ValueError, match="'a' exists already"):
        tracker.add("a", 6)
    with pytest.raises(ValueError, match="seed 5 is used"):
        tracker.add("b", 5)
    with pytest.raises(KeyError, match="'c' was never added"), tracker.fork("c"):
        pass
    with pytest.raises(TypeError, match="get_states"):
        tracker.set_states({"a": torch.get_rng_state()})


def test_model_parallel_seed_seeds_default_and_stream():
    ckpt.model_parallel_cuda_manual_seed(42)
    assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(42)))
    with ckpt.get_cuda_rng_tracker().fork(ckpt.MODEL_PARALLEL_RNG):
        got = torch.rand(3)
    assert torch.equal(got, torch.rand(3, generator=torch.Generator().manual_seed(42 + 2718)))


# -- how inputs are kept --------------------------------------------------------------------------


def test_cpu_checkpointing_keeps_copies_in_cpu_memory():
    ckpt.configure(None, partition_activations=True, checkpoint_in_cpu=True)
    torch.manual_seed(0)
    block = Block()
    x = torch.randn(4, D, requires_grad=True)
    torch.manual_seed(3)
    y = ckpt.checkpoint(block, x)
    (kept,) = y.grad_fn.saved_tensors
    assert kept.device.type == "cpu"
    assert kept.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    assert torch.equal(kept.view(4, D), x.detach())
    y.pow(2).sum().backward()
    got = (x.grad.clone(), block.lin.weight.grad.clone())
    x.grad = None
    block.zero_grad()
    torch.manual_seed(3)
    block(x).pow(2).sum().backward()
    assert torch.equal(got[0], x.grad) and torch.equal(got[1], block.lin.weight.grad)


def contiguous(slots: int) -> None:
    ckpt.configure(
        None, partition_activations=True, contiguous_checkpointing=True, num_checkpoints=slots
    )


def test_contiguous_buffer_holds_every_checkpoint_and_grads_are_equal():
    ref, ref_next, _ = run(None, steps=2)
    contiguous(3)
    grads, after, _ = run(ckpt.checkpoint, steps=2)  # slots come back after each backward
    assert_equal(grads, ref)
    assert torch.equal(after, ref_next)

    net = Net(3, wrap=ckpt.checkpoint)
    net(torch.randn(5, D))
    kept = [out.grad_fn.saved_tensors[0] for out in net.outputs]
    storages = {t.untyped_storage().data_ptr() for t in kept}
    assert len(storages) == 1  # one buffer
    offsets = sorted(t.storage_offset() for t in kept)
    assert offsets == [0, 5 * D, 10 * D]  # one slot each


def test_contiguous_buffer_refuses_more_checkpoints_than_slots():
    contiguous(2)
    with pytest.raises(RuntimeError, match=r"2 slots \(number_checkpoints\)"):
        Net(3, wrap=ckpt.checkpoint)(torch.randn(5, D))
    ckpt.reset()
    net = Net(2, wrap=ckpt.checkpoint)
    net(torch.randn(5, D))  # a forward pass without backward keeps its slots ...
    with pytest.raises(RuntimeError, match="reset"):
        net(torch.randn(5, D))
    ckpt.reset()  # ... until reset()
    net(torch.randn(5, D)).sum().backward()


def test_contiguous_buffer_refuses_a_larger_checkpoint():
    contiguous(2)
    block = nn.Linear(D, D)
    ckpt.checkpoint(block, torch.randn(2, D))
    with pytest.raises(ValueError, match="same size and dtype"):
        ckpt.checkpoint(block, torch.randn(3, D))


# -- configuration --------------------------------------------------------------------------------

BLOCK = {
    "partition_activations": True,
    "cpu_checkpointing": True,
    "contiguous_memory_optimization": True,
    "number_checkpoints": 4,
    "synchronize_checkpoint_boundary": True,
    "profile": True,
}


def test_config_block_is_applied_from_every_form(tmp_path):
    assert not ckpt.is_configured()
    cfg = zero_core.load_config({"train_batch_size": 2, "activation_checkpointing": BLOCK}, 1)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_batch_size": 2, "activation_checkpointing": BLOCK}))
    for source in (cfg, {"activation_checkpointing": BLOCK}, str(path), path):
        ckpt.configure(None, deepspeed_config=source)
        assert ckpt.is_configured()
        assert vars(ckpt.settings()) == BLOCK
    ckpt.configure(None, deepspeed_config=path, profile=False, num_checkpoints=9)
    assert vars(ckpt.settings()) == {**BLOCK, "profile": False, "number_checkpoints": 9}
    ckpt.configure(None)
    assert not any(vars(ckpt.settings()).values())


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"checkpoint_in_cpu": True}, zero_core.ConfigError, "set partition_activations"),
        (
            {"partition_activations": True, "contiguous_checkpointing": True},
            zero_core.ConfigError,
            "needs number_checkpoints",
        ),
        (
            {"contiguous_checkpointing": True, "num_checkpoints": 2},
            zero_core.ConfigError,
            "contiguous_memory_optimization .* set partition_activations",
        ),
        (
            {"deepspeed_config": {"activation_checkpointing": {"profil": True}}},
            zero_core.ConfigError,
            "did you mean 'profile'",
        ),
        ({"deepspeed_config": 3}, TypeError, "deepspeed_config must be"),
        ({"mpu_": object()}, TypeError, "has no get_model_parallel_rank"),
    ],
    ids=["cpu-alone", "no-slots", "contiguous-alone", "typo", "bad-config", "bad-mpu"],
)
def test_configure_errors_name_the_fix(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ckpt.configure(**{"mpu_": None, **kwargs})
    assert not ckpt.is_configured()


def test_initialize_applies_the_block_unless_configure_was_called():
    def init(block):
        cfg = {"train_batch_size": 4, "activation_checkpointing": block}
        zero_core.initialize(model=nn.Linear(2, 1), optimizer=adamw, config=cfg)

    with pytest.raises(zero_core.ConfigError, match="cpu_checkpointing"):
        init({"cpu_checkpointing": True})
    assert not ckpt.is_configured()
    init({"profile": True})
    assert ckpt.is_configured() and ckpt.settings().profile
    init({})
    assert not ckpt.settings().profile  # each engine's block replaces the last one's
    ckpt.configure(None, synchronize=True)
    init({"profile": True})
    assert ckpt.settings().synchronize_checkpoint_boundary and not ckpt.settings().profile


# -- boundaries -----------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", list(WRAPS))
def test_profile_counts_every_forward_and_recompute(wrap, caplog):
    ckpt.configure(None, profile=True)
    with caplog.at_level(logging.INFO, logger="zero_core.checkpointing"):
        run(WRAPS[wrap], blocks=3, steps=2)
        with torch.no_grad():
            ckpt.checkpoint(nn.Linear(D, D), torch.randn(1, D))
    stats = ckpt.profile_stats()
    assert stats.keys() == {"Block", "Linear"}
    assert (stats["Block"].forward_calls, stats["Block"].recompute_calls) == (6, 6)
    assert (stats["Linear"].forward_calls, stats["Linear"].recompute_calls) == (1, 0)
    assert stats["Block"].forward_seconds > 0 and stats["Block"].recompute_seconds > 0
    assert len([r for r in caplog.records if r.name == "zero_core.checkpointing"]) == 13


def test_unprofiled_runs_record_nothing():
    run(ckpt.checkpoint)
    assert ckpt.profile_stats() == {}


@pytest.mark.parametrize("synchronize", [True, False])
def test_synchronize_waits_at_both_ends_of_forward_and_recompute(monkeypatch, synchronize):
    calls = []
    monkeypatch.setattr(_profile, "device_synchronize", lambda: calls.append(1))
    ckpt.configure(None, synchronize=synchronize)
    run(ckpt.checkpoint, blocks=3)
    assert len(calls) == (3 * 2 * 2 if synchronize else 0)


# -- 2 ranks --------------------------------------------------------------------------------------


class WorldMPU:
    """Both ranks form one model-parallel group."""

    def get_model_parallel_rank(self) -> int:
        return dist.get_rank()

    def get_model_parallel_world_size(self) -> int:
        return dist.get_world_size()

    def get_model_parallel_group(self):
        return dist.group.WORLD


def _partitioned(rank: int) -> dict:
    """Gradients and kept bytes of one checkpointed call, per storage setting."""
    out = {}
    settings = {
        "whole": {},
        "partitioned": {"partition_activations": True},
        "all": {**BLOCK, "number_checkpoints": 1, "synchronize_checkpoint_boundary": False},
    }
    for name, block in settings.items():
        _settings._STATE = _settings._State()
        ckpt.reset()
        ckpt.configure(WorldMPU(), deepspeed_config={"activation_checkpointing": block})
        torch.manual_seed(0)  # the same activations on both ranks, as model parallelism has
        lin = nn.Linear(D, D)
        x = torch.randn(4, D, requires_grad=True)
        odd = torch.randn(5, requires_grad=True)  # 5 elements: 3 per rank, one padding

        def f(a, b, layer):
            return torch.tanh(layer(a)) * b.sum()

        y = ckpt.checkpoint(f, x, odd, lin)
        kept = [t.nbytes for t in y.grad_fn.saved_tensors]
        y.pow(2).sum().backward()
        out[name] = {"kept": kept, "grads": [x.grad, odd.grad, lin.weight.grad, lin.bias.grad]}
    ckpt.model_parallel_cuda_manual_seed(7)
    with ckpt.get_cuda_rng_tracker().fork():
        out["stream"] = torch.rand(3)
    _settings._STATE = _settings._State()
    return out


class Deep(nn.Module):
    """Blocks with dropout, checkpointed or not, for the stage-3 engine."""

    def __init__(self, wrap=None) -> None:
        super().__init__()
        self.inp = nn.Linear(8, D)
        self.blocks = nn.ModuleList(Block() for _ in range(3))
        self.out = nn.Linear(D, 1)
        self.wrap = wrap

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = self.wrap(block, x) if self.wrap else block(x)
        return self.out(x)


def _stage3(rank: int, wrap_name: str | None) -> dict:
    from training import micro_batch

    torch.manual_seed(0)
    model = Deep(WRAPS[wrap_name] if wrap_name else None)
    engine, *_ = zero_core.initialize(model=model, optimizer=adamw, config=engine_config(3))
    torch.manual_seed(100 + rank)  # dropout masks differ between ranks, not between runs
    losses = []
    for step in range(3):
        x, y = micro_batch(step, 0, rank, 1)
        loss = nn.functional.mse_loss(engine(x), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return {"losses": losses, "weights": engine.full_state_dict()}


def _on_two_ranks(rank: int) -> dict:
    return {
        "partitioned": _partitioned(rank),
        "stage3": {w: _stage3(rank, w) for w in (None, "checkpoint", "non_reentrant")},
    }


@pytest.fixture(scope="module")
def two_ranks() -> list[dict]:
    return run_ranks(_on_two_ranks)


def test_partitioned_activations_keep_half_and_give_equal_grads(two_ranks):
    for rank, result in enumerate(two_ranks):
        res = result["partitioned"]
        whole = res["whole"]
        assert whole["kept"] == [4 * D * 4, 5 * 4]
        for name in ("partitioned", "all"):
            assert res[name]["kept"] == [2 * D * 4, math.ceil(5 / 2) * 4], (rank, name)
            for got, ref in zip(res[name]["grads"], whole["grads"]):
                assert torch.equal(got, ref), (rank, name)
        seeded = torch.Generator().manual_seed(7 + 2718 + rank)
        assert torch.equal(res["stream"], torch.rand(3, generator=seeded))


@pytest.mark.parametrize("wrap", list(WRAPS))
def test_stage3_engine_trains_checkpointed_blocks_like_plain_ones(two_ranks, wrap):
    for result in two_ranks:
        ref, got = result["stage3"][None], result["stage3"][wrap]
        assert got["losses"] == ref["losses"]
        assert_equal(got["weights"], ref["weights"])

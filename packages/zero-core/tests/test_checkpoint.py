"""Checkpoints: exact resume across process restarts, 2 -> 1 and 1 -> 2 ranks, a rank killed
mid-save, consolidation to a plain fp32 state dict, and every refused input."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from torch import nn

import zero_core
from harness import run_ranks
from training import adamw, config, make_model, micro_batch, reference

STAGES = (0, 1, 2, 3)


def dataset() -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(7)
    return torch.utils.data.TensorDataset(
        torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g)
    )


def data_engine(stage: int, checkpoint: dict | None = None):
    torch.manual_seed(123)  # the sampler's shuffle seed is fixed; RNG is part of the state
    cfg = config(stage, gas=2, clip=0.5)
    if checkpoint is not None:
        cfg["checkpoint"] = checkpoint
    return zero_core.initialize(
        model=make_model(),
        optimizer=adamw,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s)),
        training_data=dataset(),
        config=cfg,
    )


def run_steps(engine, loader, micro_steps: int) -> list[float]:
    """``micro_steps`` micro-steps over the loader (new epochs as needed); the loss also
    draws a dropout mask so the RNG state matters."""
    losses = []
    it = iter(loader)
    while len(losses) < micro_steps:
        try:
            x, y = next(it)
        except StopIteration:
            loader.sampler.set_epoch(loader.sampler.epoch + 1)
            it = iter(loader)
            continue
        out = nn.functional.dropout(engine(x), p=0.2)
        loss = nn.functional.mse_loss(out, y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


def straight(rank: int, stage: int) -> dict:
    engine, _, loader, _ = data_engine(stage)
    losses = run_steps(engine, loader, 20)
    return {"losses": losses, "weights": engine.full_state_dict(), "lr": engine.get_lr()}


def first_half(rank: int, stage: int, directory: str) -> list[float]:
    engine, _, loader, _ = data_engine(stage)
    losses = run_steps(engine, loader, 12)  # 12 micro-steps: past an epoch boundary (8/rank)
    engine.save_checkpoint(directory, client_state={"note": "half"})
    return losses


def second_half(rank: int, stage: int, directory: str) -> dict:
    torch.manual_seed(999)  # whatever the new process's state, the checkpoint restores it
    engine, _, loader, _ = data_engine(stage)
    path, client = engine.load_checkpoint(directory)
    assert client == {"note": "half"} and path.endswith("global_step6")
    losses = run_steps(engine, loader, 8)
    return {"losses": losses, "weights": engine.full_state_dict(), "lr": engine.get_lr(),
            "steps": engine.global_steps}  # fmt: skip


@pytest.mark.parametrize("stage", STAGES)
def test_resume_after_restart_is_bitwise_exact(tmp_path, stage):
    ref = run_ranks(straight, stage)
    first = run_ranks(first_half, stage, str(tmp_path))
    second = run_ranks(second_half, stage, str(tmp_path))
    for r in (0, 1):
        assert first[r] + second[r]["losses"] == ref[r]["losses"]
        assert second[r]["lr"] == ref[r]["lr"] and second[r]["steps"] == 10
        for key, value in ref[r]["weights"].items():
            assert torch.equal(second[r]["weights"][key], value), key
    assert (tmp_path / "latest").read_text() == "global_step6"


# -- node-local storage ----------------------------------------------------------------------

NODE_LOCAL = {"use_node_local_storage": True}


def _on_own_node(rank: int, root: str) -> str:
    """Play one rank per node: each rank is its node's first, with its own disk (the same
    path string on real nodes, a different directory here)."""
    os.environ["LOCAL_RANK"] = "0"
    return os.path.join(root, f"node{rank}")


def node_local_first(rank: int, stage: int, root: str) -> dict:
    directory = _on_own_node(rank, root)
    engine, _, loader, _ = data_engine(stage, NODE_LOCAL)
    losses = run_steps(engine, loader, 12)
    path = engine.save_checkpoint(directory)
    return {
        "losses": losses,
        "files": sorted(os.listdir(path)),
        "dir": sorted(os.listdir(directory)),
    }


def node_local_second(rank: int, stage: int, root: str) -> dict:
    directory = _on_own_node(rank, root)
    engine, _, loader, _ = data_engine(stage, NODE_LOCAL)
    engine.load_checkpoint(directory)
    return {"losses": run_steps(engine, loader, 8), "weights": engine.full_state_dict()}


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_node_local_storage_keeps_a_loadable_checkpoint_on_every_node(tmp_path, stage):
    ref = run_ranks(straight, stage)
    first = run_ranks(node_local_first, stage, str(tmp_path))
    second = run_ranks(node_local_second, stage, str(tmp_path))
    for r in (0, 1):
        # each node: the shared files, its own rank's files, nothing of the other rank
        assert first[r]["dir"] == ["global_step6", "latest"]
        assert "meta.pt" in first[r]["files"]
        assert {f.split(".")[0] for f in first[r]["files"]} == {"meta", f"rank{r}"}
        assert first[r]["losses"] + second[r]["losses"] == ref[r]["losses"]
        for key, value in ref[r]["weights"].items():
            assert torch.equal(second[r]["weights"][key], value), key
    node0 = str(tmp_path / "node0")
    if stage == 0:  # every rank's file holds the whole model: one node's copy is enough
        state = zero_core.get_fp32_state_dict_from_zero_checkpoint(node0)
        assert state.keys() == ref[0]["weights"].keys()
    else:  # partitioned: the other rank's partition is on the other node
        with pytest.raises(FileNotFoundError, match=r"rank1\.pt is not on this node: .*use_node"):
            zero_core.get_fp32_state_dict_from_zero_checkpoint(node0)


# -- changing the world size -----------------------------------------------------------------


def train_elastic(rank: int, stage: int, steps: range, directory: str, load: bool) -> dict:
    engine, *_ = zero_core.initialize(model=make_model(), optimizer=adamw, config=config(stage))
    world = engine.world
    if load:
        engine.load_checkpoint(directory)
    for step in steps:
        x, y = micro_batch(step, 0, rank, 1, world=2) if world == 2 else _global(step)
        engine.backward(nn.functional.mse_loss(engine(x), y))
        engine.step()
    if not load:
        engine.save_checkpoint(directory)
    return engine.full_state_dict()


def _global(step):
    from training import global_batch

    return global_batch(step, 1)


def _one_process(stage, steps, directory, load, monkeypatch):
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    cfg = config(stage)
    cfg["train_micro_batch_size_per_gpu"] = 8
    engine, *_ = zero_core.initialize(model=make_model(), optimizer=adamw, config=cfg)
    if load:
        engine.load_checkpoint(directory)
    for step in steps:
        x, y = _global(step)
        engine.backward(nn.functional.mse_loss(engine(x), y))
        engine.step()
    if not load:
        engine.save_checkpoint(directory)
    return engine.full_state_dict()


@pytest.mark.parametrize("stage", STAGES)
def test_two_ranks_to_one_and_one_to_two(tmp_path, stage, monkeypatch):
    _, ref = reference(6)
    # 2 -> 1
    run_ranks(train_elastic, stage, range(3), str(tmp_path / "a"), False)
    got = _one_process(stage, range(3, 6), str(tmp_path / "a"), True, monkeypatch)
    for key, value in ref.items():
        torch.testing.assert_close(got[key], value, rtol=2e-6, atol=1e-7)
    # 1 -> 2
    _one_process(stage, range(3), str(tmp_path / "b"), False, monkeypatch)
    got = run_ranks(train_elastic, stage, range(3, 6), str(tmp_path / "b"), True)[0]
    for key, value in ref.items():
        torch.testing.assert_close(got[key], value, rtol=2e-6, atol=1e-7)


# -- a rank killed in the middle of a save ---------------------------------------------------


def save_then_die(rank: int, directory: str) -> None:
    import zero_core._checkpoint as ckpt

    engine, *_ = zero_core.initialize(model=make_model(), optimizer=adamw, config=config(2))
    x, y = micro_batch(0, 0, rank, 1)
    engine.backward(nn.functional.mse_loss(engine(x), y))
    engine.step()
    engine.save_checkpoint(directory, tag="good")
    torch.save(engine.full_state_dict(), os.path.join(directory, f"expected{rank}.pt"))
    engine.backward(nn.functional.mse_loss(engine(x), y))
    engine.step()
    real_write = ckpt._write_atomic

    def dying_write(obj, path):
        if rank == 1:
            with open(path + ".tmp-half", "wb") as f:
                f.write(b"half a file")
            os.kill(os.getpid(), 9)  # kill -9 in the middle of writing
        real_write(obj, path)

    ckpt._write_atomic = dying_write
    engine.save_checkpoint(directory, tag="doomed")


def load_after_crash(rank: int, directory: str) -> dict:
    engine, *_ = zero_core.initialize(model=make_model(), optimizer=adamw, config=config(2))
    path, _ = engine.load_checkpoint(directory)
    return {"path": path, "weights": engine.full_state_dict()}


def test_kill_during_save_leaves_the_previous_checkpoint(tmp_path):
    with pytest.raises(AssertionError, match="rank 1: no result"):
        run_ranks(save_then_die, str(tmp_path), pg_timeout=5, timeout=120)
    assert (tmp_path / "latest").read_text() == "good"
    assert not (tmp_path / "doomed").exists()
    got = run_ranks(load_after_crash, str(tmp_path))
    for r in (0, 1):
        assert got[r]["path"] == str(tmp_path / "good")
        expected = torch.load(tmp_path / f"expected{r}.pt")
        for key, value in expected.items():
            assert torch.equal(got[r]["weights"][key], value)


# -- consolidation ----------------------------------------------------------------------------


class TiedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.mid = nn.Linear(6, 6)
        self.norm = nn.BatchNorm1d(6)  # a buffer
        self.frozen = nn.Linear(6, 6).requires_grad_(False)
        self.head = nn.Linear(6, 10, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        return self.head(self.frozen(self.norm(torch.tanh(self.mid(self.emb(idx))))))


def save_tied(rank: int, stage: int, directory: str) -> dict:
    torch.manual_seed(0)
    model = TiedNet()
    engine, *_ = zero_core.initialize(model=model, optimizer=adamw, config=config(stage))
    for step in range(3):
        g = torch.Generator().manual_seed(step * 2 + rank)
        idx = torch.randint(0, 10, (4,), generator=g)
        engine.backward(nn.functional.cross_entropy(engine(idx), idx))
        engine.step()
    engine.save_checkpoint(directory)
    return engine.full_state_dict()


@pytest.mark.parametrize("stage", STAGES)
def test_consolidated_fp32_state_dict_loads_into_the_plain_model(tmp_path, stage):
    full = run_ranks(save_tied, stage, str(tmp_path))[0]
    state = zero_core.get_fp32_state_dict_from_zero_checkpoint(tmp_path)
    plain = TiedNet()
    plain.load_state_dict(state, strict=True)  # no process group needed
    for key, value in full.items():
        assert torch.equal(plain.state_dict()[key], value), key
    # the streaming converter writes the same values
    from zero_core._consolidate import convert

    convert(str(tmp_path), str(tmp_path / "model.safetensors"), None, safetensors=True)
    streamed = zero_core.load_safetensors(tmp_path / "model.safetensors")
    assert set(streamed) == set(state)
    for key, value in state.items():
        assert torch.equal(streamed[key], value), key
    convert(str(tmp_path), str(tmp_path / "model.pt"), None, safetensors=False)
    assert set(torch.load(tmp_path / "model.pt", weights_only=True)) == set(state)


# -- refused input ----------------------------------------------------------------------------


def one_engine(stage: int = 1):
    engine, *_ = zero_core.initialize(
        model=make_model(),
        optimizer=adamw,
        config={"train_batch_size": 8, "zero_optimization": {"stage": stage}},
    )
    return engine


@pytest.mark.parametrize("tag", ["../evil", "a/b", "..", "", ".hidden"])
def test_tags_that_are_not_one_directory_name(tmp_path, tag):
    engine = one_engine()
    with pytest.raises(ValueError, match="checkpoint tag"):
        engine.save_checkpoint(tmp_path, tag=tag)
    with pytest.raises(ValueError, match="checkpoint tag"):
        engine.load_checkpoint(tmp_path, tag=tag)
    assert list(tmp_path.iterdir()) == []


def test_nothing_to_load(tmp_path):
    with pytest.warns(UserWarning, match="no checkpoint to load"):
        assert one_engine().load_checkpoint(tmp_path) == (None, None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        one_engine().load_checkpoint(tmp_path, tag="missing")


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/zero-core-pwned",))


def test_a_checkpoint_cannot_run_code(tmp_path):
    engine = one_engine()
    path = engine.save_checkpoint(tmp_path, tag="t")
    with open(os.path.join(path, "rank0.pt"), "wb") as f:
        pickle.dump({"shards": Exploit()}, f)
    with pytest.raises(ValueError, match="not a loadable zero-core checkpoint"):
        one_engine().load_checkpoint(tmp_path)
    assert not os.path.exists("/tmp/zero-core-pwned")


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    one_engine().save_checkpoint(tmp_path, tag="t")
    other, *_ = zero_core.initialize(
        model=nn.Linear(8, 1), optimizer=adamw, config={"train_batch_size": 8}
    )
    with pytest.raises(ValueError, match="does not match the model"):
        other.load_checkpoint(tmp_path)


def test_save_16bit_model(tmp_path):
    engine = one_engine(3)
    with pytest.raises(ValueError, match="stage3_gather_16bit_weights_on_model_save"):
        engine.save_16bit_model(tmp_path)
    engine, *_ = zero_core.initialize(
        model=make_model(),
        optimizer=adamw,
        config={
            "train_batch_size": 8,
            "bf16": {"enabled": True},
            "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
        },
    )
    engine.save_16bit_model(tmp_path, "model.bin")
    state = torch.load(tmp_path / "model.bin", weights_only=True)
    assert all(v.dtype == torch.bfloat16 for v in state.values())
    plain = make_model().to(torch.bfloat16)
    plain.load_state_dict(state, strict=True)


def test_convert_command(tmp_path, capsys):
    from zero_core.__main__ import main

    engine = one_engine(2)
    engine.save_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "model.safetensors"
    assert main(["convert", str(tmp_path / "ckpt"), str(out), "--safetensors"]) == 0
    assert "peak memory" in capsys.readouterr().out
    plain = make_model()
    plain.load_state_dict(zero_core.load_safetensors(out), strict=True)
    for key, value in engine.full_state_dict().items():
        assert torch.equal(plain.state_dict()[key], value)
    with pytest.raises(SystemExit):  # not a directory: a usage error
        main(["convert", str(tmp_path / "empty"), str(out)])
    (tmp_path / "empty").mkdir()
    assert main(["convert", str(tmp_path / "empty"), str(tmp_path / "x.pt")]) == 1
    assert "no 'latest' file" in capsys.readouterr().err

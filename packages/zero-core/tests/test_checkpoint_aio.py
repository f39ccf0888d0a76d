"""Checkpoints through zero-aio: every checkpoint test again with each writer forced, both
formats loading and converting alike, partial reads, corruption, and zero-aio absent."""

from __future__ import annotations

import os

import pytest
import test_checkpoint
import torch
from test_checkpoint import (  # noqa: F401 - collected again here, once per writer
    load_after_crash,
    one_engine,
    save_then_die,
    test_a_checkpoint_cannot_run_code,
    test_a_checkpoint_of_another_model_is_refused,
    test_consolidated_fp32_state_dict_loads_into_the_plain_model,
    test_convert_command,
    test_kill_during_save_leaves_the_previous_checkpoint,
    test_nothing_to_load,
    test_resume_after_restart_is_bitwise_exact,
    test_save_16bit_model,
    test_tags_that_are_not_one_directory_name,
    test_two_ranks_to_one_and_one_to_two,
)
from torch import nn

import zero_core
import zero_core._aio as aio_lookup
from harness import run_ranks
from training import micro_batch
from zero_core.config import ConfigError

WRITERS = ("torch", "zero_aio")
#: For tests about zero-aio itself: the writer fixture takes this one value.
aio_only = pytest.mark.parametrize("writer", ["zero_aio"], indirect=True)
_initialize = zero_core.initialize


def force_writer(writer: str) -> None:
    """From now on every engine this process builds has ``checkpoint.writer = writer``."""

    def initialize(*args, config, **kwargs):
        config = dict(config)
        config["checkpoint"] = {**config.get("checkpoint", {}), "writer": writer}
        return _initialize(*args, config=config, **kwargs)

    zero_core.initialize = initialize


class Forced:
    """``fn`` run on a rank with the writer forced (picklable for the spawned ranks)."""

    def __init__(self, writer: str, fn) -> None:
        self.writer, self.fn = writer, fn

    def __call__(self, rank: int, *args):
        force_writer(self.writer)
        return self.fn(rank, *args)


#: The writer ``checkpoint.writer = "auto"`` picks here: test_checkpoint.py already runs
#: every one of its tests with it, so the copies collected above run with the other one.
DEFAULT_WRITER = "zero_aio" if aio_lookup.installed() else "torch"


@pytest.fixture(autouse=True, params=WRITERS)
def writer(request, monkeypatch) -> str:
    if request.param == "zero_aio":
        pytest.importorskip("zero_aio")
    if request.function.__module__ == "test_checkpoint" and request.param == DEFAULT_WRITER:
        pytest.skip(f"test_checkpoint.py runs this with the default writer ({DEFAULT_WRITER})")
    monkeypatch.setattr(zero_core, "initialize", zero_core.initialize)  # restored after
    force_writer(request.param)
    monkeypatch.setattr(
        test_checkpoint,
        "run_ranks",
        lambda fn, *args, **kw: run_ranks(Forced(request.param, fn), *args, **kw),
    )
    return request.param


def trained(steps: int = 2, stage: int = 2):
    engine = one_engine(stage)
    for step in range(steps):
        x, y = micro_batch(step, 0, 0, 1, world=1)
        engine.backward(nn.functional.mse_loss(engine(x), y))
        engine.step()
    return engine


def optimizer_state(engine) -> list[torch.Tensor]:
    inner = engine.optimizer.inner
    return [v for p in inner.state for v in inner.state[p].values() if torch.is_tensor(v)]


# -- what is on disk --------------------------------------------------------------------------


def test_files_each_writer_leaves(tmp_path, writer):
    path = trained().save_checkpoint(tmp_path, tag="t")
    names = sorted(os.listdir(path))
    if writer == "torch":
        assert names == ["meta.pt", "rank0.pt"]
        return
    assert names == ["meta.pt", "meta.zaio", "rank0.pt", "rank0.zaio"]
    meta = torch.load(os.path.join(path, "meta.pt"), weights_only=True)
    assert meta["writer"] == "zero_aio" and meta["tensor_file"] == "meta.zaio"
    rank = torch.load(os.path.join(path, "rank0.pt"), weights_only=True)
    import zero_aio

    index = {e.name for e in zero_aio.read_index(os.path.join(path, "rank0.zaio"))[0]}
    for name, record in rank["shards"].items():  # the bulk left the pickle-free .pt file
        assert record["master"] is None and f"shards/{name}/master" in index
        if record["numel"] > 1:  # one-element state is told from scalars by size: it stays
            assert record["state"]["exp_avg"] is None and f"shards/{name}/state/exp_avg" in index
        assert torch.is_tensor(record["state"]["step"])  # scalars stay


# -- either format loads and converts, whichever writer is configured ----------------------


@pytest.mark.parametrize("saved_with", WRITERS)
def test_either_format_loads_bitwise(tmp_path, writer, saved_with):
    if saved_with == "zero_aio":
        pytest.importorskip("zero_aio")
    force_writer(saved_with)
    source = trained()
    source.save_checkpoint(tmp_path, tag="t")
    force_writer(writer)
    target = one_engine(2)
    target.load_checkpoint(tmp_path)
    for key, value in source.full_state_dict().items():
        assert torch.equal(target.full_state_dict()[key], value), key
    for a, b in zip(optimizer_state(source), optimizer_state(target), strict=True):
        assert torch.equal(a, b)
    assert target.global_steps == source.global_steps == 2


@aio_only
def test_both_formats_convert_to_the_same_values(tmp_path, writer):
    states = {}
    for w in WRITERS:  # the same (deterministic) training, saved by each writer
        force_writer(w)
        engine = trained()
        engine.save_checkpoint(tmp_path / w, tag="t")
        states[w] = engine.full_state_dict()
    assert os.path.exists(tmp_path / "zero_aio" / "t" / "rank0.zaio")
    for w in WRITERS:
        state = zero_core.get_fp32_state_dict_from_zero_checkpoint(tmp_path / w)
        assert set(state) == set(states["torch"])
        for key, value in states["torch"].items():
            assert torch.equal(state[key], value), (w, key)
    assert not os.path.exists(tmp_path / "torch" / "t" / "rank0.zaio")


# -- partial reads ------------------------------------------------------------------------------


def save_stage2(rank: int, directory: str) -> dict:
    engine = trained(1, 2)
    engine.save_checkpoint(directory, tag="t")
    return engine.full_state_dict()


@aio_only
def test_a_range_reads_only_the_shards_it_overlaps(tmp_path, writer, monkeypatch):
    from zero_core._checkpoint import SavedShards

    full = run_ranks(Forced(writer, save_stage2), str(tmp_path))[0]
    real = aio_lookup.aio
    asked: list[tuple[str, list[str]]] = []

    def recording(name):
        fn = real(name)
        if name == "load":
            raise AssertionError("a whole-file read")
        if name != "load_tensors":
            return fn

        def load_tensors(path, names, **kw):
            asked.append((os.path.basename(path), names))
            return fn(path, names, **kw)

        return load_tensors

    monkeypatch.setattr(aio_lookup, "aio", recording)
    saved = SavedShards(str(tmp_path / "t"), 2)
    name, weight = "0.weight", full["0.weight"].reshape(-1)  # 256 elements: 128 per rank
    assert torch.equal(saved.element_range(name, "master", 0, 100), weight[:100])
    assert asked == [("rank0.zaio", ["shards/0.weight/master"])]
    asked.clear()
    assert torch.equal(saved.element_range(name, "master", 120, 140), weight[120:140])
    assert [f for f, _ in asked] == ["rank0.zaio", "rank1.zaio"]


# -- bad input ----------------------------------------------------------------------------------


def flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


@aio_only
@pytest.mark.parametrize("target", ["rank0.zaio", "meta.zaio"])
def test_a_corrupt_tensor_file_names_itself(tmp_path, writer, target):
    import zero_aio

    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))  # a buffer: meta.zaio holds it
    engine, *_ = zero_core.initialize(model=model, config={"train_batch_size": 8},
                                      optimizer=lambda p: torch.optim.AdamW(p))  # fmt: skip
    path = engine.save_checkpoint(tmp_path, tag="t")
    file = os.path.join(path, target)
    entry = zero_aio.read_index(file)[0][-1]
    flip_byte(file, entry.offset + entry.nbytes // 2)
    with pytest.raises(zero_aio.ChecksumError, match=entry.name) as info:
        engine.load_checkpoint(tmp_path)
    assert info.value.filename == file
    with pytest.raises(zero_aio.ChecksumError) as info:
        zero_core.get_fp32_state_dict_from_zero_checkpoint(tmp_path)
    assert info.value.filename == file


@aio_only
def test_without_zero_aio(tmp_path, writer, monkeypatch):
    trained().save_checkpoint(tmp_path / "aio", tag="t")
    monkeypatch.setattr(aio_lookup, "_entry_points", dict)  # as if zero-aio were not installed
    with pytest.raises(ConfigError, match=r"checkpoint\.writer.*pip install zero-aio"):
        one_engine()  # the writer is forced to zero_aio
    force_writer("auto")
    engine = trained()
    path = engine.save_checkpoint(tmp_path / "auto", tag="t")
    assert sorted(os.listdir(path)) == ["meta.pt", "rank0.pt"]  # auto: torch.save
    with pytest.raises(ImportError, match="pip install zero-aio"):
        one_engine(2).load_checkpoint(tmp_path / "aio")


@aio_only
def test_the_aio_block_tunes_the_writer(tmp_path, writer):
    block = {"block_size": 65536, "queue_depth": 4, "intra_op_parallelism": 2,
             "single_submit": True, "overlap_events": False, "backend": "threads"}  # fmt: skip
    handle = aio_lookup.handle_from_config(block)
    assert (handle.get_block_size(), handle.get_queue_depth(), handle.backend) == (
        65536,
        4,
        "threads",
    )
    assert handle.get_intra_op_parallelism() == 2 and handle.get_single_submit()
    assert aio_lookup.handle_from_config({}) is None  # zero-aio's default handle
    engine = zero_core.initialize(model=nn.Linear(4, 4), optimizer=lambda p: torch.optim.AdamW(p),
                                  config={"train_batch_size": 8, "aio": block})[0]  # fmt: skip
    engine.save_checkpoint(tmp_path, tag="t")
    again = zero_core.initialize(model=nn.Linear(4, 4), optimizer=lambda p: torch.optim.AdamW(p),
                                 config={"train_batch_size": 8})[0]  # fmt: skip
    again.load_checkpoint(tmp_path)
    for key, value in engine.full_state_dict().items():
        assert torch.equal(again.full_state_dict()[key], value)


# -- a rank killed while zero-aio writes --------------------------------------------------------


class DieInTensorWrite:
    """``save_then_die`` with rank 1 killed inside its second zero-aio write instead."""

    def __call__(self, rank: int, directory: str) -> None:
        import zero_core._checkpoint as ckpt

        real, calls = ckpt.write_tensors, []

        def dying(tensors, path, aio):
            calls.append(path)
            if rank == 1 and len(calls) == 2:
                with open(path + ".tmp-half", "wb") as f:
                    f.write(b"half a file")
                os.kill(os.getpid(), 9)
            real(tensors, path, aio)

        ckpt.write_tensors = dying
        save_then_die(rank, directory)


@aio_only
def test_kill_inside_a_zero_aio_write_leaves_the_previous_checkpoint(tmp_path, writer):
    with pytest.raises(AssertionError, match="rank 1: no result"):
        run_ranks(Forced(writer, DieInTensorWrite()), str(tmp_path), pg_timeout=5, timeout=120)
    assert (tmp_path / "latest").read_text() == "good"
    assert not (tmp_path / "doomed").exists()
    got = run_ranks(Forced(writer, load_after_crash), str(tmp_path))
    for r in (0, 1):
        assert got[r]["path"] == str(tmp_path / "good")
        expected = torch.load(tmp_path / f"expected{r}.pt")
        for key, value in expected.items():
            assert torch.equal(got[r]["weights"][key], value)

"""load_into: a file's tensors read into the caller's tensors, checked like load, refused
before any byte moves when a destination cannot take them; and the read plan behind it."""

from __future__ import annotations

import errno
import itertools
import os

import pytest
import torch
from test_format import assert_same, flip_byte, some_tensors

import zero_aio
from zero_aio._format import SMALL_TENSOR_BYTES
from zero_aio._memory import PAGE, host_bytes
from zero_aio._read import _plan, _Target


def at_phase(like: torch.Tensor, phase: int) -> torch.Tensor:
    """A zeroed tensor shaped like ``like`` whose address is ``phase`` modulo a page."""
    nbytes = like.numel() * like.element_size()
    return host_bytes(nbytes, phase=phase).view(like.dtype).view(like.shape).zero_()


def blank(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.zeros_like(v.contiguous()) for k, v in tensors.items()}


@pytest.fixture
def saved(tmp_path):
    tensors = some_tensors()
    # 9 MiB + 6 bytes: more than one chunk of the small handles below, split across requests
    g = torch.Generator().manual_seed(1)
    tensors["large"] = torch.randint(0, 256, (9 * 2**20 + 6,), dtype=torch.uint8, generator=g)
    path = tmp_path / "t.zaio"
    zero_aio.save(tensors, path)
    return path, tensors


def small_handle(backend: str) -> zero_aio.aio_handle:
    # chunk = 64 KiB * 8 * 1 -> the 4 MiB minimum: "large" takes three requests
    return zero_aio.aio_handle(block_size=65536, queue_depth=8, backend=backend)


@pytest.mark.parametrize(
    ("lined_up", "direct"),
    [(True, True), (True, False), (False, True)],
    ids=["direct", "staged", "not-lined-up"],
)
def test_every_tensor_lands_in_the_callers_memory(saved, backend, lined_up, direct):
    path, tensors = saved
    offsets = {e.name: e.offset for e in zero_aio.read_index(path)[0]}
    out = {
        k: at_phase(v.contiguous(), offsets[k] + (0 if lined_up else 64))
        for k, v in tensors.items()
    }
    pointers = {k: v.data_ptr() for k, v in out.items()}
    got = zero_aio.load_into(path, out, handle=small_handle(backend), direct=direct)
    assert_same(tensors, got)
    assert all(got[k] is out[k] and out[k].data_ptr() == pointers[k] for k in out)


def test_only_the_named_tensors_are_read(saved):
    path, tensors = saved
    entry = next(e for e in zero_aio.read_index(path)[0] if e.name == "big")
    flip_byte(path, entry.offset + 5)  # corrupt, but never read below
    out = zero_aio.load_into(path, {"large": torch.zeros(9 * 2**20 + 6, dtype=torch.uint8)})
    assert list(out) == ["large"] and torch.equal(out["large"], tensors["large"])


def test_equals_load_for_every_subset_order(saved):
    path, _ = saved
    whole = zero_aio.load(path)
    names = ["half", "large", "empty", "view", "bytes"]
    out = zero_aio.load_into(path, blank({n: whole[n] for n in names}))
    assert list(out) == names
    assert_same({n: whole[n] for n in names}, out)


@pytest.mark.parametrize("where", ["small", "direct", "staged"])
def test_a_corrupt_tensor_is_named_and_verify_false_reads_it(saved, where):
    path, tensors = saved
    name = {"small": "ids", "direct": "large", "staged": "large"}[where]
    entry = next(e for e in zero_aio.read_index(path)[0] if e.name == name)
    flip_byte(path, entry.offset + entry.nbytes - 3)  # in the last request of "large"
    like = tensors[name]
    dest = at_phase(like, entry.offset)
    direct = where == "direct"
    with pytest.raises(zero_aio.ChecksumError, match=f"'{name}'") as info:
        half = torch.empty(3, 3, dtype=torch.half)
        zero_aio.load_into(path, {name: dest, "half": half}, direct=direct)
    assert info.value.tensor == name and info.value.offset == entry.offset
    assert info.value.filename == os.fspath(path)
    zero_aio.load_into(path, {name: dest}, verify=False, direct=direct)
    assert (dest != like).sum() == 1  # the flipped byte, and only it


def test_entries_given_skip_the_index_and_stale_ones_are_caught(saved, tmp_path):
    path, tensors = saved
    entries = zero_aio.read_index(path)[0]
    out = zero_aio.load_into(path, blank({"big": tensors["big"]}), entries=entries)
    assert torch.equal(out["big"], tensors["big"])
    zero_aio.save({"big": tensors["big"] + 1, "large": tensors["large"]}, path)  # rewritten
    with pytest.raises(zero_aio.ChecksumError, match="'big'"):
        zero_aio.load_into(path, blank({"big": tensors["big"]}), entries=entries)


def test_a_truncated_file_raises_enodata_and_the_handle_stays_usable(saved):
    path, tensors = saved
    os.truncate(path, os.path.getsize(path) - 1)  # the end of "large", the last tensor
    h = small_handle("threads")
    with pytest.raises(OSError) as info:
        zero_aio.load_into(
            path, blank({"big": tensors["big"], "large": tensors["large"]}), handle=h
        )
    assert info.value.errno == errno.ENODATA and info.value.filename == os.fspath(path)
    assert h.wait() == 0  # nothing left queued on it
    out = zero_aio.load_into(path, blank({"big": tensors["big"]}), handle=h)
    assert torch.equal(out["big"], tensors["big"])


# -- refused before any byte moves ---------------------------------------------------------


@pytest.mark.parametrize(
    ("dest", "error", "match"),
    [
        ([0.0] * 17, TypeError, r"tensors\['ids'\] is a list"),
        (torch.zeros(17, dtype=torch.int32), ValueError, r"'ids'\] is torch.int32 \[17\]"),
        (torch.zeros(16, dtype=torch.int64), ValueError, "holds torch.int64 \\[17\\]"),
        (torch.zeros(2, 17, dtype=torch.int64)[:, 0], ValueError, "shape"),
        (torch.zeros(34, dtype=torch.int64)[::2], ValueError, "not one contiguous block"),
        (torch.zeros(17, dtype=torch.int64, device="meta"), ValueError, "on meta"),
        (torch.zeros(17, dtype=torch.int64).to_sparse(), ValueError, "sparse_coo"),
    ],
)
def test_a_destination_that_cannot_take_the_bytes_is_refused(saved, dest, error, match):
    path, tensors = saved
    big = torch.zeros_like(tensors["big"])
    with pytest.raises(error, match=match):
        zero_aio.load_into(path, {"big": big, "ids": dest})
    assert not big.any()  # refused before anything was read


def test_a_lazily_conjugated_destination_is_refused(saved):
    path, _ = saved
    dest = torch.zeros(4, dtype=torch.complex64).conj()
    with pytest.raises(ValueError, match=r"'complex'\] is not one contiguous block"):
        zero_aio.load_into(path, {"complex": dest})


def test_destinations_sharing_memory_are_refused(saved):
    path, _ = saved
    flat = torch.zeros(40, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"share memory"):
        zero_aio.load_into(path, {"ids": flat[:17], "mask": flat[10:13].view(torch.bool)[:3]})


def test_unknown_names_and_bad_mappings(saved):
    path, _ = saved
    with pytest.raises(KeyError, match=r"no tensor 'nope'.*holds: big"):
        zero_aio.load_into(path, {"nope": torch.zeros(1)})
    with pytest.raises(TypeError, match="dict of name -> tensor"):
        zero_aio.load_into(path, [torch.zeros(1)])


# -- the plan ----------------------------------------------------------------------------


def test_the_plan_covers_every_byte_once_and_goes_direct_only_when_lined_up():
    chunk = 4 << 20
    sizes = [10, 3000, SMALL_TENSOR_BYTES, 5 << 20, 200_000, 64, 9 << 20, 0, 700_000]
    entries, at = [], 8192
    for i, n in enumerate(sizes):
        at += (i * 1000) % PAGE + 64  # assorted positions within a page
        entries.append(zero_aio.TensorEntry(f"t{i}", torch.uint8, (n,), at, n, 0))
        at += n
    phases = [0, 64, 0, 64, 0, 0, 0, 0, 128]  # 0: lined up with the file
    targets = [
        _Target(e, host_bytes(e.nbytes, phase=e.offset + p)) for e, p in zip(entries, phases)
    ]
    jobs = _plan(targets, chunk, direct=True)
    covered: dict[int, list[tuple[int, int]]] = {i: [] for i in range(len(targets))}
    for job in jobs:
        assert 0 < job.nbytes <= chunk
        if job.into is not None:  # direct: one tensor, straight into its memory
            (part,) = job.parts
            e, dest = targets[part.slot]
            assert e.nbytes >= SMALL_TENSOR_BYTES and dest.data_ptr() % PAGE == e.offset % PAGE
            assert job.into.data_ptr() % PAGE == job.offset % PAGE and part.dest is None
            start = job.offset - e.offset
            assert job.into.data_ptr() == dest.data_ptr() + start
            covered[part.slot].append((start, job.nbytes))
            continue
        for part in job.parts:  # staged: copied out of the request
            e, dest = targets[part.slot]
            start = job.offset + part.start - e.offset
            assert part.dest.data_ptr() == dest.data_ptr() + start
            covered[part.slot].append((start, part.nbytes))
    for i, (e, _) in enumerate(targets):
        spans = sorted(covered[i])
        assert sum(n for _, n in spans) == e.nbytes, e.name
        assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(spans)), e.name
    direct = {targets[j.parts[0].slot].entry.name for j in jobs if j.into is not None}
    assert direct == {"t2", "t4", "t6"}  # t3 and t8 are large but 64 / 128 bytes off
    offsets = [j.offset for j in jobs]
    assert offsets == sorted(offsets)  # one pass through the file
    assert all(j.into is None for j in _plan(targets, chunk, direct=False))  # all staged

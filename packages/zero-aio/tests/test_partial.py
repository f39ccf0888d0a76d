"""load_tensors: some tensors of a file, equal to what load returns, each checksum-verified."""

from __future__ import annotations

import os

import pytest
import torch
from test_format import flip_byte, some_tensors

import zero_aio
from zero_aio import load_tensors


def test_each_subset_equals_load(tmp_path, backend):
    path = tmp_path / "t.zaio"
    zero_aio.save(some_tensors(), path)
    whole = zero_aio.load(path)
    names = ["half", "big", "empty", "view", "bytes"]  # an order unlike the file's
    got = load_tensors(path, names, handle=zero_aio.aio_handle(backend=backend))
    assert list(got) == names
    for name in names:
        assert got[name].dtype == whole[name].dtype and got[name].shape == whole[name].shape
        assert torch.equal(got[name], whole[name]), name


def test_large_tensors_land_page_aligned_with_their_file_offset(tmp_path):
    path = tmp_path / "t.zaio"
    zero_aio.save(some_tensors(), path)
    entry = next(e for e in zero_aio.read_index(path)[0] if e.name == "big")
    got = load_tensors(path, ["big"])["big"]
    assert got.data_ptr() % 4096 == entry.offset % 4096  # so the bulk moves with O_DIRECT


def test_only_the_corrupt_tensor_fails(tmp_path):
    path = tmp_path / "t.zaio"
    zero_aio.save(some_tensors(), path)
    entry = next(e for e in zero_aio.read_index(path)[0] if e.name == "big")
    flip_byte(path, entry.offset + 4097)
    assert torch.equal(load_tensors(path, ["ids"])["ids"], torch.arange(17))
    with pytest.raises(zero_aio.ChecksumError, match="'big'") as info:
        load_tensors(path, ["ids", "big"])
    assert info.value.filename == os.fspath(path) and info.value.offset == entry.offset
    assert not torch.equal(load_tensors(path, ["big"], verify=False)["big"], some_tensors()["big"])


def test_a_name_the_file_does_not_hold(tmp_path):
    path = tmp_path / "t.zaio"
    zero_aio.save({"a": torch.ones(3)}, path)
    with pytest.raises(KeyError, match=r"no tensor 'b'.*holds: a"):
        load_tensors(path, ["a", "b"])


def test_entries_given_are_used_instead_of_reading_the_index(tmp_path, monkeypatch):
    from zero_aio import _read

    path = tmp_path / "t.zaio"
    zero_aio.save(some_tensors(), path)
    entries = zero_aio.read_index(path)[0]

    def no_index(_path):
        raise AssertionError("the index was read again")

    monkeypatch.setattr(_read, "read_index", no_index)
    got = load_tensors(path, ["ids", "big"], entries=entries)
    assert torch.equal(got["ids"], torch.arange(17))
    assert torch.equal(got["big"], some_tensors()["big"])
    with pytest.raises(AssertionError, match="read again"):
        load_tensors(path, ["ids"])

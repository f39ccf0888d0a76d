"""save / load: the checksummed tensor file, its atomicity and its corruption checks."""

from __future__ import annotations

import errno
import json
import os
import random
import struct

import pytest
import torch

import zero_aio
from zero_aio._format import PAGE, SMALL_TENSOR_BYTES


def crc32c_reference(data: bytes) -> int:
    """Bit-at-a-time CRC-32C, straight from the polynomial: slow, but obviously right."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def some_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "big": torch.randn(300_000, generator=g),  # > SMALL_TENSOR_BYTES: its own request
        "matrix": torch.randn(64, 300, generator=g).to(torch.bfloat16),
        "view": torch.randn(200, 100, generator=g).t(),  # non-contiguous: saved by value
        "ids": torch.arange(17, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.empty(0, 5),
        "half": torch.randn(3, 3, generator=g).half(),
        "bytes": torch.randint(0, 255, (SMALL_TENSOR_BYTES + 1,), dtype=torch.uint8, generator=g),
        "complex": torch.randn(4, dtype=torch.complex64, generator=g),
    }


def assert_same(saved: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor]) -> None:
    assert list(loaded) == list(saved)
    for name, t in saved.items():
        assert loaded[name].dtype == t.dtype, name
        assert loaded[name].shape == t.shape, name
        assert torch.equal(loaded[name], t), name


# -- crc32c ----------------------------------------------------------------------------------


def test_crc32c_known_vectors():
    assert zero_aio.crc32c(b"123456789") == 0xE3069283  # the standard check value
    assert zero_aio.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720, B.4: 32 zero bytes
    assert zero_aio.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert zero_aio.crc32c(bytes(range(32))) == 0x46DD794E


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 63, 64, 1000, 4099])
def test_crc32c_matches_the_bitwise_reference(size):
    data = random.Random(size).randbytes(size)
    assert zero_aio.crc32c(data) == crc32c_reference(data)


def test_crc32c_is_the_same_on_any_number_of_threads():
    # Large enough to be split across threads and joined with crc32c_combine.
    t = torch.randint(0, 256, (20 * 2**20 + 13,), dtype=torch.uint8)
    serial = zero_aio.crc32c(t, threads=1)
    for threads in (2, 3, 5, 8):
        assert zero_aio.crc32c(t, threads=threads) == serial
    assert zero_aio.crc32c(t[:5000]) == crc32c_reference(bytes(t[:5000].tolist()))


# -- round trips -----------------------------------------------------------------------------


def test_round_trip_every_kind_of_tensor(tmp_path):
    tensors = some_tensors()
    path = tmp_path / "t.zaio"
    zero_aio.save(tensors, path, metadata={"step": "12"})
    assert_same(tensors, zero_aio.load(path))
    entries, metadata = zero_aio.read_index(path)
    assert metadata == {"step": "12"}
    assert [e.name for e in entries] == list(tensors)
    for e in entries:
        t = tensors[e.name]
        assert (e.dtype, e.shape, e.nbytes) == (
            t.dtype,
            tuple(t.shape),
            t.numel() * t.element_size(),
        )
        assert e.crc32c == zero_aio.crc32c(t.contiguous())


@pytest.mark.parametrize("pin_memory", [False, True])
def test_large_loaded_tensors_own_memory_lined_up_with_the_file(tmp_path, pin_memory):
    tensors = some_tensors()
    zero_aio.save(tensors, tmp_path / "t.zaio")
    loaded = zero_aio.load(tmp_path / "t.zaio", pin_memory=pin_memory)
    assert_same(tensors, loaded)
    entries = zero_aio.read_index(tmp_path / "t.zaio")[0]
    large = [e for e in entries if e.nbytes >= SMALL_TENSOR_BYTES]
    assert len(large) >= 2
    for e in large:  # at the file offset's place within a page: read with O_DIRECT, no copy
        assert loaded[e.name].data_ptr() % PAGE == e.offset % PAGE
    storages = {loaded[e.name].untyped_storage().data_ptr() for e in large}
    assert len(storages) == len(large)  # each its own memory: freeing one frees it


def test_layout_on_disk_is_as_documented(tmp_path):
    big = torch.arange(100_000, dtype=torch.float32)
    small = torch.arange(10, dtype=torch.int16)
    path = tmp_path / "t.zaio"
    zero_aio.save({"big": big, "small": small}, path)
    raw = path.read_bytes()
    magic, version, index_crc, index_len = struct.unpack_from("<8sIIQ", raw)
    assert (magic, version) == (b"ZEROAIO\0", 1)
    index = raw[24 : 24 + index_len]
    assert zero_aio.crc32c(index) == index_crc
    entries = {e["name"]: e for e in json.loads(index)["tensors"]}
    data_start = -(-(24 + index_len) // PAGE) * PAGE
    for name, t in (("big", big), ("small", small)):
        at = data_start + entries[name]["offset"]
        assert raw[at : at + t.numel() * t.element_size()] == bytes(t.view(torch.uint8).tolist())
    assert entries["small"]["offset"] == 0  # small tensors first, right after the index
    # a large tensor sits at the same place within a page as in memory: O_DIRECT from it
    assert (data_start + entries["big"]["offset"]) % PAGE == big.data_ptr() % PAGE


def test_save_accepts_a_handle_and_load_too(tmp_path, backend):
    h = zero_aio.aio_handle(block_size=8192, queue_depth=2, intra_op_parallelism=3, backend=backend)
    tensors = some_tensors()
    zero_aio.save(tensors, tmp_path / "t.zaio", handle=h)
    assert_same(tensors, zero_aio.load(tmp_path / "t.zaio", handle=h))


def test_empty_dict_round_trips(tmp_path):
    zero_aio.save({}, tmp_path / "e.zaio", metadata={"a": "b"})
    assert zero_aio.load(tmp_path / "e.zaio") == {}
    assert zero_aio.read_index(tmp_path / "e.zaio") == ([], {"a": "b"})


def test_save_replaces_an_existing_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "t.zaio"
    zero_aio.save({"a": torch.ones(3)}, path)
    zero_aio.save({"b": torch.zeros(2)}, path)
    assert_same({"b": torch.zeros(2)}, zero_aio.load(path))
    assert os.listdir(tmp_path) == ["t.zaio"]


# -- corruption ------------------------------------------------------------------------------


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def test_corrupt_tensor_is_named_with_its_offset(tmp_path):
    tensors = some_tensors()
    path = tmp_path / "t.zaio"
    zero_aio.save(tensors, path)
    entry = next(e for e in zero_aio.read_index(path)[0] if e.name == "matrix")
    flip_byte(path, entry.offset + 17)
    with pytest.raises(zero_aio.ChecksumError, match="'matrix'") as info:
        zero_aio.load(path)
    assert info.value.errno == errno.EIO and info.value.filename == str(path)
    assert info.value.tensor == "matrix" and info.value.offset == entry.offset
    assert f"offset {entry.offset}" in str(info.value)
    # verify=False reads it anyway (and the flipped byte shows)
    loaded = zero_aio.load(path, verify=False)
    assert not torch.equal(loaded["matrix"], tensors["matrix"])
    assert torch.equal(loaded["big"], tensors["big"])


def test_corrupt_index_is_caught(tmp_path):
    path = tmp_path / "t.zaio"
    zero_aio.save(some_tensors(), path)
    flip_byte(path, 30)
    with pytest.raises(zero_aio.ChecksumError, match="the index") as info:
        zero_aio.load(path)
    assert info.value.tensor is None


def test_truncated_file_raises_enodata(tmp_path):
    path = tmp_path / "t.zaio"
    zero_aio.save(some_tensors(), path)
    os.truncate(path, os.path.getsize(path) - 100)
    with pytest.raises(OSError) as info:
        zero_aio.load(path)
    assert info.value.errno == errno.ENODATA and info.value.filename == str(path)


def test_not_our_file(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"a": torch.ones(2)}, path)
    with pytest.raises(ValueError, match="not a zero-aio tensor file"):
        zero_aio.load(path)
    (tmp_path / "tiny").write_bytes(b"ZERO")
    with pytest.raises(ValueError, match="not a zero-aio tensor file"):
        zero_aio.load(tmp_path / "tiny")


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "t.zaio"
    zero_aio.save({"a": torch.ones(2)}, path)
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", 2))
    with pytest.raises(ValueError, match="format version 2"):
        zero_aio.load(path)


def test_index_length_beyond_the_file(tmp_path):
    path = tmp_path / "t.zaio"
    zero_aio.save({"a": torch.ones(2)}, path)
    with open(path, "r+b") as f:
        f.seek(16)
        f.write(struct.pack("<Q", 1 << 40))
    with pytest.raises(zero_aio.ChecksumError, match="truncated or corrupt"):
        zero_aio.read_index(path)


# -- bad input and faults: nothing half-written ----------------------------------------------


@pytest.mark.parametrize(
    ("tensors", "error", "match"),
    [
        ([torch.ones(2)], TypeError, "dict of name -> tensor"),
        ({1: torch.ones(2)}, TypeError, "names must be str"),
        ({"a": [1, 2]}, TypeError, r"tensors\['a'\] is a list"),
        ({"a": torch.ones(2).to_sparse()}, ValueError, "dense"),
        ({"a": torch.empty(2, device="meta")}, ValueError, "meta device"),
    ],
)
def test_bad_tensors_are_refused_before_any_file_exists(tmp_path, tensors, error, match):
    with pytest.raises(error, match=match):
        zero_aio.save(tensors, tmp_path / "t.zaio")
    assert os.listdir(tmp_path) == []


def test_bad_metadata(tmp_path):
    with pytest.raises(TypeError, match="metadata must map str to str"):
        zero_aio.save({"a": torch.ones(1)}, tmp_path / "t.zaio", metadata={"step": 3})
    assert os.listdir(tmp_path) == []


def test_missing_directory_and_directory_target(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        zero_aio.save({"a": torch.ones(1)}, tmp_path / "no" / "t.zaio")
    assert info.value.filename == str(tmp_path / "no" / "t.zaio")
    with pytest.raises(IsADirectoryError):
        zero_aio.save({"a": torch.ones(1)}, tmp_path)


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "t.zaio"
    zero_aio.save({"old": torch.ones(4)}, path)
    before = path.read_bytes()

    class FailingHandle(zero_aio.aio_handle):
        """Fails its second write at wait(), as a disk error in the middle of a save would."""

        def __init__(self):
            super().__init__(block_size=4096, queue_depth=4, backend="threads")
            self.writes = 0

        def async_pwrite(self, buffer, filename, file_offset=0):
            self.writes += 1
            if self.writes == 2:
                return super().async_pwrite(buffer, "/dev/full", file_offset)  # ENOSPC
            return super().async_pwrite(buffer, filename, file_offset)

    with pytest.raises(OSError) as info:
        zero_aio.save({"new": torch.randn(100_000)}, path, handle=FailingHandle())
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["t.zaio"]


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs: a real ENOSPC. Needs root (CI runs as root); skipped otherwise."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or os.system(f"mount -t tmpfs -o size=1m tmpfs {mount} 2>/dev/null"):
        pytest.skip("cannot mount a small tmpfs here (needs root); ENOSPC is covered by /dev/full")
    yield mount
    os.system(f"umount {mount}")


def test_disk_full_during_save(tiny_fs):
    path = tiny_fs / "t.zaio"
    zero_aio.save({"fits": torch.ones(1000)}, path)
    before = path.read_bytes()
    with pytest.raises(OSError) as info:
        zero_aio.save({"too_big": torch.ones(1_000_000)}, path)
    assert info.value.errno == errno.ENOSPC and str(tiny_fs) in info.value.filename
    assert path.read_bytes() == before
    assert os.listdir(tiny_fs) == ["t.zaio"]
    assert_same({"fits": torch.ones(1000)}, zero_aio.load(path))


def test_disk_full_on_a_handle_write(tiny_fs, backend):
    h = zero_aio.aio_handle(block_size=65536, queue_depth=4, backend=backend)
    with pytest.raises(OSError) as info:
        h.async_pwrite(torch.ones(1_000_000), tiny_fs / "x.bin", file_offset=4096)
        h.wait()
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(tiny_fs / "x.bin") and info.value.offset == 4096

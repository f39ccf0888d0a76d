"""Reads and writes at odd sizes and offsets, on every backend, against os.pread/os.pwrite."""

from __future__ import annotations

import os

import pytest
import torch

import zero_aio

SIZES = [1, 511, 4096, 4097, 3 * 4096 - 1, 65536 + 123, 1 << 20]
OFFSETS = [0, 1, 4095, 4096, 12345]


def random_bytes(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g)


def pread_file(path, n, offset) -> torch.Tensor:
    with open(path, "rb") as f:
        data = os.pread(f.fileno(), n, offset)
    assert len(data) == n
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def data_bytes(t: torch.Tensor) -> bytes:
    return bytes(bytearray(t.tolist()))


def handle(backend, **kw):
    kw = {"block_size": 8192, "queue_depth": 4, "intra_op_parallelism": 2, **kw}
    return zero_aio.aio_handle(backend=backend, **kw)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("offset", OFFSETS)
def test_write_then_read_matches_os(backend, tmp_path, size, offset):
    path = tmp_path / "t.bin"
    data = random_bytes(size, seed=size + offset)
    h = handle(backend)
    assert h.sync_pwrite(data, path, file_offset=offset) == 1
    assert os.path.getsize(path) == offset + size
    assert torch.equal(pread_file(path, size, offset), data)
    back = torch.zeros_like(data)
    assert h.sync_pread(back, path, file_offset=offset) == 1
    assert torch.equal(back, data)


@pytest.mark.parametrize("offset", [0, 4096, 3])
def test_page_aligned_buffers_take_the_direct_path_and_round_trip(backend, tmp_path, offset):
    h = handle(backend, block_size=4096 * 4)
    n = 4096 * 37 + 100
    src = h.new_cpu_locked_tensor(n, torch.empty(0, dtype=torch.uint8))
    src.copy_(random_bytes(n, seed=7))
    path = tmp_path / "aligned.bin"
    h.sync_pwrite(src, path, file_offset=offset)
    assert torch.equal(pread_file(path, n, offset), src)
    dst = h.new_cpu_locked_tensor(n, src)
    h.sync_pread(dst, path, file_offset=offset)
    assert torch.equal(dst, src)


def test_read_of_part_of_an_existing_file(backend, tmp_path):
    path = tmp_path / "big.bin"
    whole = random_bytes(300_001, seed=1)
    path.write_bytes(data_bytes(whole))
    h = handle(backend)
    part = torch.zeros(100_000, dtype=torch.uint8)
    h.sync_pread(part, path, file_offset=123_457)
    assert torch.equal(part, whole[123_457:223_457])


def test_float_tensors_and_validate(backend, tmp_path):
    h = handle(backend)
    x = torch.randn(12_345)
    path = tmp_path / "f.bin"
    assert h.pwrite(x, path, validate=True) == 1
    y = torch.empty_like(x)
    assert h.pread(y, str(path), validate=True) == 1
    assert torch.equal(x, y)
    assert h.write(x, path) == 1 and h.read(y, path) == 1


def test_async_ops_complete_at_wait(backend, tmp_path):
    h = handle(backend, intra_op_parallelism=3)
    tensors = [random_bytes(10_000 + 4099 * i, seed=i) for i in range(6)]
    for i, t in enumerate(tensors):
        assert h.async_pwrite(t, tmp_path / f"{i}.bin", file_offset=i * 7) == 0
    assert h.wait() == 6
    back = [torch.zeros_like(t) for t in tensors]
    for i, b in enumerate(back):
        assert h.pread(b, tmp_path / f"{i}.bin", async_op=True, file_offset=i * 7) == 0
    assert h.wait() == 6
    assert all(torch.equal(a, b) for a, b in zip(tensors, back))
    assert h.wait() == 0


def test_async_validate_is_checked_at_wait(backend, tmp_path):
    h = handle(backend)
    x = random_bytes(5000, seed=3)
    h.pwrite(x, tmp_path / "v.bin", validate=True, async_op=True)
    assert h.wait() == 1


def test_buffer_protocol_objects(backend, tmp_path):
    h = handle(backend)
    path = tmp_path / "b.bin"
    payload = bytes(range(256)) * 40 + b"tail"
    h.sync_pwrite(payload, path, file_offset=5)  # read-only buffers can be written
    target = bytearray(len(payload))
    h.sync_pread(target, path, file_offset=5)
    assert bytes(target) == payload
    mv = memoryview(bytearray(len(payload)))[3:]
    h.sync_pread(mv, path, file_offset=8)
    assert bytes(mv) == payload[3:]


def test_numpy_arrays(backend, tmp_path):
    np = pytest.importorskip("numpy")
    h = handle(backend)
    a = np.arange(9999, dtype=np.float64)
    h.sync_pwrite(a, tmp_path / "n.bin", file_offset=13)
    b = np.zeros_like(a)
    h.sync_pread(b, tmp_path / "n.bin", file_offset=13)
    assert (a == b).all()


def test_single_submit_and_queue_depth_one(backend, tmp_path):
    h = handle(backend, single_submit=True, queue_depth=1, block_size=1000)
    x = random_bytes(54_321, seed=9)
    h.sync_pwrite(x, tmp_path / "s.bin", file_offset=4095)
    y = torch.zeros_like(x)
    h.sync_pread(y, tmp_path / "s.bin", file_offset=4095)
    assert torch.equal(x, y)


@pytest.mark.parametrize("overlap_events", [False, True])
@pytest.mark.parametrize("single_submit", [False, True])
def test_submission_modes_move_the_same_bytes(backend, tmp_path, overlap_events, single_submit):
    # overlap_events=False completes each batch of queue_depth requests before the next;
    # True refills a slot as soon as it frees. Either way every byte must land.
    h = handle(
        backend,
        block_size=4096,
        queue_depth=3,
        overlap_events=overlap_events,
        single_submit=single_submit,
    )
    x = random_bytes(10 * 4096 + 77, seed=4)
    page = h.new_cpu_locked_tensor(x.numel(), x)  # page-aligned: the O_DIRECT path
    page.copy_(x)
    h.sync_pwrite(page, tmp_path / "m.bin")
    h.async_pwrite(x, tmp_path / "m.bin", file_offset=x.numel())  # unaligned buffer
    assert h.wait() == 1
    y = torch.zeros(2 * x.numel(), dtype=torch.uint8)
    h.sync_pread(y, tmp_path / "m.bin")
    assert torch.equal(y, torch.cat([x, x]))


def test_write_does_not_truncate(backend, tmp_path):
    path = tmp_path / "keep.bin"
    path.write_bytes(b"a" * 10_000)
    handle(backend).sync_pwrite(b"b" * 100, path, file_offset=50)
    assert path.read_bytes() == b"a" * 50 + b"b" * 100 + b"a" * 9850


def test_locked_tensor_outlives_free(tmp_path):
    h = zero_aio.aio_handle(backend="threads")
    t = h.new_cpu_locked_tensor(1000, torch.empty(0, dtype=torch.float16))
    assert t.dtype == torch.float16 and t.numel() == 1000 and t.data_ptr() % 4096 == 0
    assert torch.count_nonzero(t) == 0
    view = t[10:]
    assert h.free_cpu_locked_tensor(t)
    del t
    view.fill_(2)  # memory still owned by the view
    assert float(view.sum()) == 2 * 990
    with pytest.raises(ValueError, match="not allocated"):
        h.free_cpu_locked_tensor(torch.zeros(3))
    assert h.new_cpu_locked_tensor(0, view).numel() == 0

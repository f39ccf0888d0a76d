"""Bad input: every failure is an exception naming what went wrong, never a silent success."""

from __future__ import annotations

import errno
import os

import pytest
import torch

import zero_aio


def handle(backend):
    return zero_aio.aio_handle(block_size=4096, queue_depth=4, backend=backend)


def test_missing_directory(backend, tmp_path):
    path = tmp_path / "no" / "such" / "dir.bin"
    h = handle(backend)
    with pytest.raises(FileNotFoundError) as info:
        h.sync_pwrite(torch.ones(3), path, file_offset=8)
    assert info.value.filename == str(path) and info.value.offset == 8
    assert "offset 8" in str(info.value) and str(path) in str(info.value)
    with pytest.raises(FileNotFoundError):
        h.async_pread(torch.ones(3), path)  # at the call, even when asynchronous
    assert h.wait() == 0


def test_unwritable_path(backend, tmp_path):
    h = handle(backend)
    with pytest.raises(IsADirectoryError, match="open for write"):
        h.sync_pwrite(torch.ones(3), tmp_path)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionError):
            h.sync_pwrite(torch.ones(3), locked / "x.bin")


def test_file_shorter_than_the_read(backend, tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(b"x" * 100)
    with pytest.raises(OSError, match="the file is 100 bytes") as info:
        handle(backend).sync_pread(torch.zeros(101, dtype=torch.uint8), path)
    assert info.value.errno == errno.ENODATA and info.value.filename == str(path)


def test_read_past_eof(backend, tmp_path):
    path = tmp_path / "eof.bin"
    path.write_bytes(b"x" * 100)
    h = handle(backend)
    with pytest.raises(OSError, match="at offset 200") as info:
        h.async_pread(torch.zeros(1, dtype=torch.uint8), path, file_offset=200)
    assert info.value.errno == errno.ENODATA
    assert h.wait() == 0


def test_missing_file_read(backend, tmp_path):
    with pytest.raises(FileNotFoundError):
        handle(backend).sync_pread(torch.zeros(4), tmp_path / "missing.bin")


def test_failure_during_io_surfaces_at_wait(backend, tmp_path):
    h = handle(backend)
    ok = tmp_path / "ok.bin"
    h.async_pwrite(torch.ones(5000), ok)
    h.async_pwrite(torch.ones(5000), "/dev/full")  # every write fails with ENOSPC
    with pytest.raises(OSError) as info:
        h.wait()
    assert info.value.errno == errno.ENOSPC and info.value.filename == "/dev/full"
    assert all(f[0] == errno.ENOSPC for f in info.value.failures)
    assert os.path.getsize(ok) == 20_000  # the other operation still finished
    assert h.wait() == 0  # failures are reported once


def test_sync_failure_during_io(backend):
    with pytest.raises(OSError, match="No space left") as info:
        handle(backend).sync_pwrite(torch.ones(3000), "/dev/full", file_offset=0)
    assert info.value.errno == errno.ENOSPC


def test_non_contiguous_tensor(tmp_path):
    h = zero_aio.aio_handle()
    with pytest.raises(ValueError, match="not contiguous"):
        h.sync_pwrite(torch.ones(4, 4).t(), tmp_path / "x.bin")


def test_unsupported_device(tmp_path):
    h = zero_aio.aio_handle()
    with pytest.raises(ValueError, match="is on meta"):
        h.sync_pread(torch.ones(4, device="meta"), tmp_path / "x.bin")


def test_sparse_tensor(tmp_path):
    with pytest.raises(ValueError, match="dense"):
        zero_aio.aio_handle().sync_pwrite(torch.eye(3).to_sparse(), tmp_path / "x.bin")


@pytest.mark.parametrize("buffer", [torch.ones(0), bytearray(), b""])
def test_zero_length_io(tmp_path, buffer):
    h = zero_aio.aio_handle()
    with pytest.raises(ValueError, match="zero-length write"):
        h.sync_pwrite(buffer, tmp_path / "x.bin")
    assert not (tmp_path / "x.bin").exists()
    if not isinstance(buffer, bytes):
        with pytest.raises(ValueError, match="zero-length read"):
            h.sync_pread(buffer, tmp_path / "x.bin")


def test_read_into_read_only_buffer(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"abc")
    with pytest.raises(ValueError, match="read-only"):
        zero_aio.aio_handle().sync_pread(b"xyz", tmp_path / "x.bin")


def test_not_a_buffer(tmp_path):
    with pytest.raises(TypeError, match="buffer protocol"):
        zero_aio.aio_handle().sync_pwrite([1, 2, 3], tmp_path / "x.bin")


@pytest.mark.parametrize("offset", [-1, 1.5, True])
def test_bad_offset(tmp_path, offset):
    with pytest.raises(ValueError, match="file_offset"):
        zero_aio.aio_handle().sync_pwrite(b"abc", tmp_path / "x.bin", file_offset=offset)


def test_buffers_of_queued_ops_stay_alive(tmp_path):
    h = zero_aio.aio_handle(backend="threads")
    h.async_pwrite(torch.full((100_000,), 7.0), tmp_path / "gone.bin")  # no other reference
    assert h.wait() == 1
    assert torch.equal(
        torch.frombuffer(bytearray((tmp_path / "gone.bin").read_bytes()), dtype=torch.float32),
        torch.full((100_000,), 7.0),
    )


def test_locked_tensor_freed_during_an_async_write(tmp_path, backend):
    # The documented rule: a buffer must not be reused before wait(); freeing it is safe,
    # because the handle holds the tensor (and so its memory) until the op is done.
    h = zero_aio.aio_handle(block_size=4096, queue_depth=2, backend=backend)
    t = h.new_cpu_locked_tensor(1 << 20, torch.empty(0, dtype=torch.int32))
    t.copy_(torch.arange(1 << 20, dtype=torch.int32))
    h.async_pwrite(t, tmp_path / "x.bin")
    h.free_cpu_locked_tensor(t)
    del t
    for _ in range(20):  # churn the allocator while the write may still be running
        torch.full((1 << 20,), -1, dtype=torch.int32)
    assert h.wait() == 1
    back = torch.empty(1 << 20, dtype=torch.int32)
    h.sync_pread(back, tmp_path / "x.bin")
    assert torch.equal(back, torch.arange(1 << 20, dtype=torch.int32))

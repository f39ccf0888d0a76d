"""Host buffers (page phase, huge pages, locking) and the per-call costs that are paid once:
the backend probe and the default handle."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

import zero_aio
from zero_aio import _handle, _native
from zero_aio._memory import PAGE, host_bytes

HUGE = 2 << 20


def thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "never"


def mapping_fields(address: int) -> dict[str, int]:
    """The kB fields of /proc/self/smaps for the mapping that holds ``address``."""
    fields: dict[str, int] = {}
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and line.rstrip().endswith("kB"):
                fields[head.rstrip(":")] = int(line.split()[1])
    return fields


@pytest.mark.parametrize("pin", [False, True], ids=["plain", "pinned"])
@pytest.mark.parametrize("nbytes", [0, 100, 5000, 3 << 20])
@pytest.mark.parametrize("phase", [0, 64, 4095, PAGE + 8])
def test_host_bytes_sit_at_the_asked_place_within_a_page(nbytes, phase, pin):
    t = host_bytes(nbytes, phase=phase, pin=pin)
    assert t.dtype == torch.uint8 and t.numel() == nbytes
    if nbytes:
        assert t.data_ptr() % PAGE == phase % PAGE
        t.fill_(7)  # writable to the last byte
        assert int(t[-1]) == 7


@pytest.mark.skipif(thp_mode() == "never", reason="transparent huge pages are off here")
def test_locked_tensors_are_huge_page_backed_and_locked():
    h = zero_aio.aio_handle(backend="threads")
    t = h.new_cpu_locked_tensor(8 << 20, torch.empty(0, dtype=torch.uint8))
    assert t.data_ptr() % HUGE == 0
    owner = h._locked[t.data_ptr()]
    assert owner.huge_pages_advised and owner.locked
    fields = mapping_fields(t.data_ptr())
    assert fields["AnonHugePages"] >= 2048  # at least one 2 MiB page (usually all four)
    assert fields["Locked"] >= 8 << 10


def test_small_locked_tensors_use_ordinary_pages():
    h = zero_aio.aio_handle(backend="threads")
    t = h.new_cpu_locked_tensor(1000, torch.empty(0, dtype=torch.float32))
    owner = h._locked[t.data_ptr()]
    assert t.data_ptr() % PAGE == 0 and not owner.huge_pages_advised


def test_handles_reuse_one_backend_probe(monkeypatch):
    zero_aio.backends()  # probed (at the latest) here

    def probe_again():
        raise AssertionError("the kernel was probed again")

    monkeypatch.setattr(_native._C, "backends", probe_again)
    assert zero_aio.aio_handle().backend == zero_aio.default_backend()
    assert zero_aio.backends()["threads"].usable


def test_save_and_load_reuse_this_threads_handle(tmp_path, monkeypatch):
    made = []
    real = _handle._C.Handle

    def counting(**kwargs):
        made.append(kwargs)
        return real(**kwargs)

    zero_aio.save({"a": torch.ones(3)}, tmp_path / "warm.zaio")  # this thread's handle exists
    monkeypatch.setattr(_handle._C, "Handle", counting)
    for i in range(3):
        zero_aio.save({"a": torch.full((100_000,), float(i))}, tmp_path / "t.zaio")
        assert torch.equal(zero_aio.load(tmp_path / "t.zaio")["a"], torch.full((100_000,), i))
        zero_aio.load_into(tmp_path / "t.zaio", {"a": torch.empty(100_000)})
    assert made == []
    mine = _handle.default_handle()
    other: list[zero_aio.aio_handle] = []
    thread = threading.Thread(target=lambda: other.append(_handle.default_handle()))
    thread.start()
    thread.join()
    assert other[0] is not mine and _handle.default_handle() is mine


def test_a_forked_child_gets_a_working_default_handle(tmp_path):
    zero_aio.save({"a": torch.arange(10.0)}, tmp_path / "parent.zaio")  # parent's handle made
    pid = os.fork()
    if pid == 0:  # child: the inherited handle's threads are gone; a new one must be made
        try:
            zero_aio.save({"b": torch.arange(5.0)}, tmp_path / "child.zaio")
            ok = torch.equal(zero_aio.load(tmp_path / "child.zaio")["b"], torch.arange(5.0))
            os._exit(0 if ok else 1)
        except BaseException:
            os._exit(2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung on the parent's default handle")

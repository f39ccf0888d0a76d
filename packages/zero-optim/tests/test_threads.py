"""Thread counts: defaults shared between ranks on a node, identical results for any count."""

from __future__ import annotations

import multiprocessing

import pytest
import torch

import zero_optim
from zero_optim._threads import default_num_threads


def test_default_is_torch_threads_for_a_single_rank(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 5)
    assert default_num_threads() == 5


@pytest.mark.parametrize(
    ("cores", "local_world", "expected"), [(16, 4, 4), (16, 3, 5), (2, 8, 1), (8, 1, 3)]
)
def test_ranks_on_a_node_share_its_cores(monkeypatch, cores, local_world, expected):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # used when the rank is alone
    assert default_num_threads() == expected


def test_explicit_thread_count_is_used_and_validated():
    p = torch.nn.Parameter(torch.zeros(3))
    assert zero_optim.CPUAdam([p], num_threads=7).threads_for_step() == 7
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_threads must be a positive integer"):
            zero_optim.CPUAdam([p], num_threads=bad)


def step_with(threads):
    gen = torch.Generator().manual_seed(3)
    # enough elements that several threads really split the work, across tensor boundaries
    params = [torch.nn.Parameter(torch.randn(n, generator=gen)) for n in (70001, 3, 131072, 65537)]
    opt = zero_optim.CPUAdam(params, lr=1e-2, num_threads=threads)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return [p.detach() for p in params]


def test_results_do_not_depend_on_thread_count():
    reference = step_with(1)
    for threads in (2, 3, 8):
        assert all(torch.equal(a, b) for a, b in zip(step_with(threads), reference))


def fingerprint(tensors):
    """Order-independent integer checksums of the exact bits (float sums depend on threads)."""
    return [t.view(torch.int32).to(torch.int64).sum().item() for t in tensors]


def _child(queue):
    # torch's own OpenMP pool cannot run in a forked child (libgomp is not fork-safe); keep
    # torch single-threaded there so only zero-optim's pool is exercised with 2 threads.
    torch.set_num_threads(1)
    queue.put(fingerprint(step_with(2)))


def test_forked_child_after_a_parallel_step_still_steps():
    """libgomp cannot run a parallel region in such a child; the step falls back to one thread."""
    step_with(2)  # run a parallel region in this process first
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == fingerprint(step_with(2))


@pytest.mark.skipif(
    not __import__("sys").platform.startswith("linux"), reason="reads /proc/self/maps"
)
def test_one_openmp_runtime_shared_with_torch():
    """The kernels must use torch's libgomp, not a second runtime fighting it for the cores."""
    step_with(2)
    with open("/proc/self/maps") as maps:
        gomp = {line.split()[-1] for line in maps if "libgomp" in line}
    assert len(gomp) <= 1, gomp

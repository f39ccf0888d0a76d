"""The process group zero-core runs on, and the collectives it calls, with errors that say where.

[Note: no launcher of our own]
zero-core never starts processes or runs a rendezvous: ``torchrun`` (or any launcher that
sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) does. ``init_distributed``
joins the group those variables describe, with gloo on CPU and NCCL when CUDA is there, and
a timeout, so a rank that never arrives becomes an error instead of a hang. Without those
variables and without a group, zero-core runs as world size 1 and no collective is called.

[Note: collective errors name the rank and the op]
A timeout or a broken peer surfaces from torch as a bare RuntimeError from deep inside
c10d. Every collective zero-core calls goes through ``_call`` below, which re-raises it as
``CollectiveError`` naming this rank, the world size, the op and the tensor size, so a user
reading one rank's log knows which step of which protocol failed.

[Note: gloo workers finish before the interpreter does]
A gloo op's worker thread completes the op's future (so ``wait()`` returns) and only then
drops its references to the op's tensors. When Python has already dropped its own, the
tensor's Python object is freed by that worker, which must take the GIL to do it. A script
that ends right after its last collective (rank 1 of a run whose rank 0 still writes the
result) can reach interpreter finalization first; a thread asking for the GIL then is
unwound inside a noexcept destructor and the process aborts ("terminate called without an
active exception", SIGABRT), so torchrun reports a finished run as failed (seen in about 1
of 25 two-rank runs on a loaded 2-core machine). ``destroy_process_group`` does not help:
the group object outlives it (torch.distributed.nn's functions hold it as a default
argument), and its threads with it. So while a gloo group is in use, an ``atexit`` hook
sleeps ``EXIT_DRAIN_SECONDS`` with the GIL released before finalization starts, which lets
any worker waiting for the GIL take it and finish (0 aborts in 60 such runs).
"""

from __future__ import annotations

import atexit
import datetime
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "CollectiveError",
    "all_gather_into",
    "all_reduce",
    "broadcast",
    "init_distributed",
    "rank",
    "reduce_scatter_into",
    "world_size",
]

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)


class CollectiveError(RuntimeError):
    """A collective failed or timed out; the message names the rank, the op and the size."""


def init_distributed(
    dist_backend: str | None = None,
    timeout: datetime.timedelta = DEFAULT_TIMEOUT,
    init_method: str | None = None,
    rank: int = -1,
    world_size: int = -1,
) -> bool:
    """Join the default process group if the environment describes one (DeepSpeed's
    ``deepspeed.init_distributed``). Returns whether a group is active afterwards.

    ``dist_backend`` defaults to ``"nccl"`` when CUDA is available, else ``"gloo"``.
    Already initialized: nothing happens. No ``WORLD_SIZE``/``RANK`` in the environment and
    no ``init_method``: nothing happens and zero-core runs as one process.
    """
    if dist.is_initialized():
        _drain_gloo_at_exit()
        return True
    have_env = "WORLD_SIZE" in os.environ and "RANK" in os.environ
    if not have_env and init_method is None:
        return False
    backend = dist_backend or ("nccl" if torch.cuda.is_available() else "gloo")
    kwargs: dict[str, Any] = {"backend": backend, "timeout": timeout}
    if init_method is not None:
        kwargs["init_method"] = init_method
    if rank >= 0:
        kwargs["rank"] = rank
    if world_size >= 0:
        kwargs["world_size"] = world_size
    if backend == "nccl" and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(**kwargs)
    _drain_gloo_at_exit()
    return True


#: how long the exit hook releases the GIL for gloo's workers (see the Note above)
EXIT_DRAIN_SECONDS = 0.1
_drain_registered = False


def _drain_gloo_at_exit() -> None:
    """Register, once per process, the exit hook of [Note: gloo workers finish before the
    interpreter does] when the default group runs on gloo."""
    global _drain_registered
    if _drain_registered or "gloo" not in str(dist.get_backend()):
        return
    atexit.register(time.sleep, EXIT_DRAIN_SECONDS)
    _drain_registered = True


class _Solo:
    """The group of this rank alone (an expert held by one rank): collectives are no-ops."""

    def __repr__(self) -> str:
        return "SOLO"


SOLO = _Solo()


def world_size(group: Any = None) -> int:
    """Ranks in ``group`` (default: the whole world; 1 without a process group)."""
    if group is SOLO:
        return 1
    return dist.get_world_size(group) if dist.is_initialized() else 1


def rank(group: Any = None) -> int:
    """This rank's index in ``group`` (default: the whole world)."""
    if group is SOLO:
        return 0
    return dist.get_rank(group) if dist.is_initialized() else 0


def _call(op: str, tensor: torch.Tensor, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except RuntimeError as exc:
        raise CollectiveError(
            f"rank {rank()} of {world_size()}: {op} of {tensor.numel()} x {tensor.dtype} "
            f"failed: {exc}"
        ) from exc


class _Done:
    """What an async op returns when there was nothing to wait for."""

    def wait(self) -> bool:
        return True


# torch 2.13 renamed the single-tensor collectives; older torch (>= 2.4) has the old names.
# Looked up on ``dist`` at each call, so wrappers installed later (zero-profiler's comms
# logger) see the calls.
_ALL_GATHER = (
    "all_gather_single" if hasattr(dist, "all_gather_single") else "all_gather_into_tensor"
)
_REDUCE_SCATTER = (
    "reduce_scatter_single" if hasattr(dist, "reduce_scatter_single") else "reduce_scatter_tensor"
)


def all_reduce(tensor: torch.Tensor, async_op: bool = False, group: Any = None) -> Any:
    """Sum ``tensor`` over the ranks of ``group`` (default: all), in place."""
    if world_size(group) == 1:
        return _Done() if async_op else None
    return _call(
        "all_reduce", tensor, lambda: dist.all_reduce(tensor, group=group, async_op=async_op)
    )


def all_reduce_max(tensor: torch.Tensor, group: Any = None) -> None:
    """Elementwise maximum of ``tensor`` over the ranks of ``group``, in place."""
    if world_size(group) > 1:
        _call(
            "all_reduce(MAX)",
            tensor,
            lambda: dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=group),
        )


def reduce_scatter_into(
    out: torch.Tensor, full: torch.Tensor, async_op: bool = False, group: Any = None
) -> Any:
    """Sum ``full`` (``group size * out.numel()`` elements, rank-major) over the ranks of
    ``group``; this rank's block lands in ``out``."""
    if world_size(group) == 1:
        out.copy_(full)
        return _Done() if async_op else None
    return _call(
        "reduce_scatter",
        full,
        lambda: getattr(dist, _REDUCE_SCATTER)(out, full, group=group, async_op=async_op),
    )


def all_gather_into(
    full: torch.Tensor, local: torch.Tensor, async_op: bool = False, group: Any = None
) -> Any:
    """Concatenate the ``local`` of every rank of ``group`` (rank-major) into ``full``."""
    if world_size(group) == 1:
        full.copy_(local)
        return _Done() if async_op else None
    return _call(
        "all_gather",
        local,
        lambda: getattr(dist, _ALL_GATHER)(full, local, group=group, async_op=async_op),
    )


def broadcast(tensor: torch.Tensor, src: int = 0, group: Any = None) -> None:
    """Copy global rank ``src``'s ``tensor`` to the other ranks of ``group``."""
    if world_size(group) > 1:
        _call(f"broadcast(src={src})", tensor, lambda: dist.broadcast(tensor, src, group=group))

"""The process group a 1-bit optimizer talks over, and the bytes it hands to collectives.

[Note: comm_backend_name and cuda_aware]
DeepSpeed's 1-bit optimizers take ``comm_backend_name`` (which backend carries the
compressed traffic) and ``cuda_aware`` (whether that backend can read device memory). Here
the backend names a ``torch.distributed`` backend: if the default group already uses it,
the optimizer uses the default group; otherwise it creates a group over the same ranks with
that backend the first time it communicates (every rank reaches that point in the same
order, as ``new_group`` requires). ``nccl`` always receives device tensors. For ``gloo`` and
``mpi``, CUDA tensors are staged through host memory unless ``cuda_aware=True``; CPU
tensors never move. Without an initialized process group, or with one rank, nothing is
communicated and no group is created.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

__all__ = ["BACKENDS", "CommCounter", "CommGroup"]

BACKENDS = ("nccl", "gloo", "mpi")


@dataclasses.dataclass(slots=True)
class CommCounter:
    """Bytes this rank handed to collectives, split by how they were sent.

    ``bytes_in`` counts the size of the tensors passed to each collective (what a comms
    logger reports); ``bytes_sent`` estimates what leaves this rank: ``2 (w-1)/w`` of the
    buffer for a ring all-reduce, ``(w-1)/w`` for an all-to-all, ``(w-1)`` copies of the
    input for a direct all-gather.
    """

    calls: int = 0
    """Collective calls."""
    bytes_in: int = 0
    """Sum of the input tensors' sizes, in bytes."""
    bytes_sent: float = 0.0
    """Estimated bytes leaving this rank."""

    def reset(self) -> None:
        """Zero every count."""
        self.calls, self.bytes_in, self.bytes_sent = 0, 0, 0.0


class CommGroup:
    """Collectives over the group a 1-bit optimizer uses (see [Note: comm_backend_name ...]).

    Args:
        backend: ``"nccl"``, ``"gloo"`` or ``"mpi"``.
        cuda_aware: the backend reads CUDA memory directly (no host staging).
    """

    def __init__(self, backend: str, cuda_aware: bool) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"comm_backend_name must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.cuda_aware = bool(cuda_aware)
        self.counter = CommCounter()
        self._group: dist.ProcessGroup | None = None

    @property
    def world_size(self) -> int:
        """Ranks taking part (1 without an initialized process group)."""
        if not dist.is_available() or not dist.is_initialized():
            return 1
        return dist.get_world_size()

    @property
    def rank(self) -> int:
        """This process's rank (0 without an initialized process group)."""
        return dist.get_rank() if self.world_size > 1 else 0

    def group(self) -> dist.ProcessGroup:
        """The process group for ``backend``, created over all ranks on first use."""
        if self._group is None:
            if dist.get_backend() == self.backend:
                self._group = dist.group.WORLD
            else:
                try:
                    self._group = dist.new_group(backend=self.backend)
                except (RuntimeError, ValueError) as exc:
                    raise RuntimeError(
                        f"the 1-bit optimizer was asked to communicate over "
                        f"comm_backend_name={self.backend!r}, which the default process group "
                        f"({dist.get_backend()!r}) is not and which could not be started "
                        f"({exc}); pass comm_backend_name={dist.get_backend()!r}"
                    ) from exc
        return self._group

    def _staged(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type == "cpu" or self.backend == "nccl" or self.cuda_aware:
            return tensor
        return tensor.cpu()

    def _count(self, tensor: torch.Tensor, sent_fraction: float) -> None:
        self.counter.calls += 1
        nbytes = tensor.numel() * tensor.element_size()
        self.counter.bytes_in += nbytes
        self.counter.bytes_sent += nbytes * sent_fraction

    def all_reduce_mean(self, flat: torch.Tensor) -> torch.Tensor:
        """The mean of ``flat`` over ranks (summed, then divided by the world size)."""
        world = self.world_size
        buf = self._staged(flat)
        self._count(buf, 2 * (world - 1) / world)
        dist.all_reduce(buf, group=self.group())
        return buf.to(flat.device).div_(world)

    def all_to_all(self, inp: torch.Tensor) -> torch.Tensor:
        """Row ``i`` of ``inp`` (``[world, ...]``) goes to rank ``i``; row ``i`` of the
        result came from rank ``i``."""
        world = self.world_size
        src = self._staged(inp.contiguous())
        out = torch.empty_like(src)
        self._count(src, (world - 1) / world)
        dist.all_to_all_single(out, src, group=self.group())
        return out.to(inp.device)

    def all_gather(self, inp: torch.Tensor) -> torch.Tensor:
        """``[world, *inp.shape]``: every rank's ``inp``, in rank order."""
        world = self.world_size
        src = self._staged(inp.contiguous())
        outs = [torch.empty_like(src) for _ in range(world)]
        self._count(src, world - 1)
        dist.all_gather(outs, src, group=self.group())
        return torch.stack(outs).to(inp.device)

"""Averaging gradients across ranks in buckets, as backward produces them.

[Note: buckets in a fixed order]
Collectives must be issued in the same order on every rank, but the order in which gradients
become ready can differ (data-dependent control flow, a parameter unused on one rank). So
buckets are fixed up front, in reverse parameter order (roughly the order backward produces
gradients), and bucket ``k`` is launched only after buckets ``0..k-1``: when its last
gradient arrives, or at the end of backward, where a parameter without a gradient
contributes zeros. Every rank thus runs the same collectives on the same shapes.

At stage 0 a bucket is all-reduced and the average written back (into ``param.grad``, or
the fp32 master gradient when there are master weights); at stages 1-3 it is
reduce-scattered and this rank's shards are added to the flat fp32 gradient partition,
after which the full gradients are dropped. Under optimizer offload the partition lives in
CPU memory the optimizer owns (``grad_home``): each reduced block is copied there and
dropped on the device (see [Note: optimizer offload] in ``zero_core._offload``).
``overlap_comm`` launches the collectives asynchronously from the gradient hooks, so they
run while backward continues.

``overlap_comm`` keeps at most two buckets in flight: launching a third first completes the
oldest, which bounds the staging memory to about three buckets whatever the model size
(buckets are also at most 1/8 of the model: see [Note: bucket size] in
``zero_core._shard``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import _dist
from ._shard import Bucket, ParamShard, make_buckets

__all__ = ["GradReducer"]

#: reductions in flight under overlap_comm
MAX_IN_FLIGHT = 2


class GradReducer:
    def __init__(
        self,
        shards: list[ParamShard],
        bucket_numel: int,
        comm_dtype: torch.dtype,
        overlap: bool,
        prescale: bool,
        predivide: float,
        communicate: bool = True,
        grad_home: Callable[[ParamShard], torch.Tensor] | None = None,
    ) -> None:
        self.buckets: list[Bucket] = make_buckets(list(reversed(shards)), bucket_numel)
        self.where: dict[int, Bucket] = {}
        for b in self.buckets:
            for s in b.shards:
                self.where[id(s.param)] = b
        self.comm_dtype = comm_dtype
        self.overlap = overlap
        self.prescale = prescale
        self.predivide = predivide
        #: False for optimizers that communicate themselves (1-bit Adam, ...): gradients stay
        #: this rank's own, only moved into place
        self.communicate = communicate
        #: allocates a shard's (zeroed) fp32 partition where the optimizer keeps it; None:
        #: on the device
        self.grad_home = grad_home
        self.active = False
        self._waiting: list[int] = []
        self._next = 0
        self._inflight: list[tuple[Any, Bucket, torch.Tensor]] = []

    def start(self) -> None:
        """Reduce the gradients of the backward pass that is about to run."""
        self.active = True
        self._next = 0
        self._waiting = [len(b.shards) for b in self.buckets]
        for b in self.buckets:
            for s in b.shards:
                s.ready = False

    def grad_ready(self, shard: ParamShard) -> None:
        """Hook: ``shard.param.grad`` now holds this backward's (accumulated) gradient."""
        shard.had_grad = True
        if not self.active or shard.ready:
            return
        shard.ready = True
        bucket = self.where[id(shard.param)]
        self._waiting[bucket.index] -= 1
        while self._next < len(self.buckets) and self._waiting[self._next] == 0:
            self._launch(self.buckets[self._next])
            self._next += 1

    def finish(self) -> None:
        """Launch what is left (zeros for missing gradients), wait for everything, write out."""
        if not self.active:
            return
        while self._next < len(self.buckets):
            self._launch(self.buckets[self._next])
            self._next += 1
        inflight, self._inflight = self._inflight, []
        for work, bucket, buf in inflight:
            work.wait()
            self._complete(bucket, buf)
        self.active = False

    # -- one bucket ----------------------------------------------------------------------------
    def _launch(self, bucket: Bucket) -> None:
        flats: list[torch.Tensor | None] = []
        for s in bucket.shards:
            g = s.param.grad
            flats.append(
                torch.zeros(s.numel, dtype=self.comm_dtype) if g is None else g.reshape(-1)
            )
            if bucket.nshards > 1:  # only this rank's shard survives: packing frees the rest
                s.param.grad = None
        staging = bucket.pack(flats, self.comm_dtype)
        if not self.communicate:
            self._complete(bucket, staging)
            return
        if self.prescale and self.predivide != 1.0:
            staging.div_(self.predivide)
        if bucket.nshards == 1:
            work = _dist.all_reduce(staging, async_op=self.overlap, group=bucket.group)
            result = staging
        else:
            result = torch.empty(bucket.total, dtype=self.comm_dtype)
            work = _dist.reduce_scatter_into(
                result, staging, async_op=self.overlap, group=bucket.group
            )
        if self.overlap:
            self._inflight.append((work, bucket, result))
            while len(self._inflight) > MAX_IN_FLIGHT:
                work, bucket, result = self._inflight.pop(0)
                work.wait()
                self._complete(bucket, result)
        else:
            self._complete(bucket, result)

    def _complete(self, bucket: Bucket, result: torch.Tensor) -> None:
        # averaged over the bucket's group: the world, or an expert's data-parallel group
        # (zero-moe scales expert gradients by 1/ep_size in backward; see [Note: expert params])
        scale = (self.predivide if self.prescale else 1.0) / _dist.world_size(bucket.group)
        if not self.communicate:
            scale = 1.0
        if scale != 1.0:
            result.mul_(scale)
        if bucket.nshards == 1:
            for i, s in enumerate(bucket.shards):
                full = result[bucket.offsets[i] : bucket.offsets[i] + s.numel]
                if s.master is not None:  # master weights: accumulate into the fp32 gradient
                    self._partition(s)[: s.numel].add_(full)
                    s.param.grad = None
                elif s.param.grad is None:
                    s.param.grad = full.view(s.shape).to(s.param.dtype).clone()
                else:
                    s.param.grad.copy_(full.view(s.shape))
        elif (
            self.grad_home is None
            and result.dtype == torch.float32
            and all(s.grad is None for s in bucket.shards)
        ):
            # first gradient since the step: the reduced block becomes the partition itself
            for i, s in enumerate(bucket.shards):
                off = bucket.offsets[i]
                s.grad = result[off : off + s.shard_numel]
        else:
            for i, s in enumerate(bucket.shards):
                off = bucket.offsets[i]
                block = result[off : off + s.shard_numel]
                if s.grad is None and self.grad_home is not None:
                    # a copy, not zeros + block: bitwise the view the device path keeps
                    self._partition(s).copy_(block)
                else:
                    self._partition(s).add_(block)

    def _partition(self, shard: ParamShard) -> torch.Tensor:
        """The fp32 gradient partition of ``shard``, allocated (zeroed) on first use after
        a step: on the device, or where ``grad_home`` keeps it."""
        if shard.grad is None:
            numel = shard.shard_numel
            shard.grad = (
                torch.zeros(numel, dtype=torch.float32)
                if self.grad_home is None
                else self.grad_home(shard)
            )
        return shard.grad

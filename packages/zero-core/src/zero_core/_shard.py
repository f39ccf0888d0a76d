"""How one parameter is split across ranks, and buckets of parameters that move together.

[Note: the partition layout]
Every parameter is split on its own, FSDP2-style: flattened, padded with zeros to a multiple
of the number of shards ``n``, and cut into ``n`` equal shards of ``S = ceil(numel / n)``
elements; rank ``r`` owns elements ``[r*S, (r+1)*S)``. Because each parameter keeps its own
padding, a shard never straddles two parameters, so an optimizer step on the flat buffer of
this rank's shards is exactly the per-parameter step on those elements (for elementwise
optimizers such as Adam, Lion, Adagrad, SGD), and the padding stays zero (zero gradient, zero
weight). Stage 0 uses ``n = 1`` (nothing split); stages 1-3 use the world size.

[Note: expert params]
A parameter marked ``allreduce = False`` with a ``zs_dp_group`` (zero-moe's experts; the
attribute contract is documented in zero-moe) belongs to one expert replicated only across
that expert-data-parallel group: it is sharded across that group and its gradient is
averaged over that group. An expert's local gradient already sums the losses of every rank
of its expert-parallel group (their tokens came to it by all-to-all), and zero-moe's layer
scales it by 1/ep_size in backward, so this average is the gradient of the mean of all
ranks' losses, as a dense parameter's average over the world is.

Collectives move a *bucket* of parameters at once through a staging buffer laid out
rank-major: block ``r`` holds shard ``r`` of every parameter in the bucket, so one
reduce-scatter leaves this rank's shards of all of them side by side (the layout of the
flat gradient and master buffers), and one all-gather brings every shard back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Bucket", "ParamShard", "make_buckets"]


@dataclass(eq=False)
class ParamShard:
    """One parameter's partition on this rank, and the buffers attached to it."""

    param: torch.nn.Parameter
    name: str
    nshards: int
    rank: int
    #: the full parameter's shape (its data may be empty at stage 3); default param.shape
    shape: torch.Size | None = None
    #: the process group its gradient is averaged over and it is sharded across: None for
    #: the whole world; an expert parameter's ``zs_dp_group`` (see [Note: expert params])
    group: Any = None
    numel: int = field(init=False)
    shard_numel: int = field(init=False)
    #: fp32 views into the optimizer's flat buffers (set by ZeroOptimizer), length shard_numel
    master: torch.Tensor | None = None
    grad: torch.Tensor | None = None
    #: stage 3: this rank's shard of the weights in the compute dtype (the param's data is
    #: empty between uses); None when the full param lives on every rank
    local: torch.Tensor | None = None
    #: where ``local`` lives between uses under ``offload_param`` (a ``_param_offload``
    #: store that fetches it to the device and writes updates back); None: on the device
    store: Any = None
    #: a gradient arrived for the param in the current backward (on this rank)
    ready: bool = False
    #: a gradient arrived on any micro-step since the last optimizer step (on this rank)
    had_grad: bool = False

    def __post_init__(self) -> None:
        self.shape = torch.Size(self.param.shape if self.shape is None else self.shape)
        self.numel = self.shape.numel()
        self.shard_numel = -(-self.numel // self.nshards) if self.numel else 0

    def split(self, full_flat: torch.Tensor) -> torch.Tensor:
        """``full_flat`` (``numel`` elements) padded and viewed as ``(nshards, shard_numel)``."""
        pad = self.nshards * self.shard_numel - self.numel
        if pad:
            full_flat = torch.nn.functional.pad(full_flat, (0, pad))
        return full_flat.view(self.nshards, self.shard_numel)

    def my_part(self, full_flat: torch.Tensor) -> torch.Tensor:
        """This rank's shard of ``full_flat``, zero-padded to ``shard_numel`` (a copy)."""
        return self.split(full_flat)[self.rank].clone()


class Bucket:
    """Parameters whose gradients (or weights) are communicated in one collective (all in
    the same process group)."""

    def __init__(self, shards: list[ParamShard], index: int) -> None:
        self.shards = shards
        self.index = index
        self.group = shards[0].group if shards else None
        self.offsets: list[int] = []
        total = 0
        for s in shards:
            self.offsets.append(total)
            total += s.shard_numel
        self.total = total  # elements per rank block
        self.nshards = shards[0].nshards if shards else 1

    def pack(self, flats: list[torch.Tensor | None], dtype: torch.dtype) -> torch.Tensor:
        """Rank-major staging buffer of full flat tensors (one per shard, in order). The
        list is consumed: each entry is dropped once copied, so a tensor nothing else
        holds is freed while the next one is copied."""
        staging = torch.empty(self.nshards, self.total, dtype=dtype, device=flats[0].device)
        for i, (s, off) in enumerate(zip(self.shards, self.offsets)):
            staging[:, off : off + s.shard_numel].copy_(s.split(flats[i]))
            flats[i] = None
        return staging.view(-1)

    def unpack_full(self, staging: torch.Tensor, i: int) -> torch.Tensor:
        """Shard ``i``'s full flat tensor out of a rank-major staging buffer (a view/copy)."""
        s, off = self.shards[i], self.offsets[i]
        blocks = staging.view(self.nshards, self.total)[:, off : off + s.shard_numel]
        return blocks.reshape(-1)[: s.numel]


#: see [Note: bucket size]
MODEL_FRACTION = 8
MIN_BUCKET = 1 << 20


def make_buckets(shards: list[ParamShard], bucket_numel: int) -> list[Bucket]:
    """Group shards, in the given order, into buckets of at most ``bucket_numel`` elements of
    full parameters (a parameter larger than that gets a bucket of its own); a bucket holds
    shards of one process group and one shard count only.

    [Note: bucket size]
    ``reduce_bucket_size`` and ``allgather_bucket_size`` bound a bucket. DeepSpeed's defaults
    (5e8 elements) exceed most models and would make one bucket of the whole model: every
    full gradient would stay alive until backward is over next to a model-sized staging
    buffer, ``overlap_comm`` would have nothing to overlap (the one collective starts at the
    end), and the weight all-gather after the step would hold another model-sized buffer. So
    a bucket is also at most 1/8 of the model (never cut below 2**20 elements, where a
    collective's fixed cost starts to show)."""
    total = sum(s.numel for s in shards)
    bucket_numel = min(bucket_numel, max(MIN_BUCKET, -(-total // MODEL_FRACTION)))
    buckets: list[Bucket] = []
    current: list[ParamShard] = []
    size = 0
    for s in shards:
        other_kind = current and (
            current[0].group is not s.group or current[0].nshards != s.nshards
        )
        if current and (other_kind or size + s.numel > bucket_numel):
            buckets.append(Bucket(current, len(buckets)))
            current, size = [], 0
        current.append(s)
        size += s.numel
    if current:
        buckets.append(Bucket(current, len(buckets)))
    return buckets

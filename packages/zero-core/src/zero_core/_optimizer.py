"""The partitioned optimizer: fp32 master shards, the user's optimizer over them, the step.

[Note: the optimizer runs on shards]
For every parameter, this rank's shard (see [Note: the partition layout]) has an fp32
*master* copy and an fp32 *gradient*; the inner optimizer (the user's, or the one the
config names) sees the masters as its parameters, one per model parameter, FSDP2-style.
Its state is therefore 1/world of the model's (stage >= 1), and it keeps torch's
per-parameter semantics: a parameter that got no gradient on any rank has its master's
``.grad`` set to None for the step, so the optimizer skips it exactly as it would skip the
model parameter (no weight decay, no momentum, no step count). A user-built optimizer keeps
its identity, hyperparameters and any scheduler bound to it: its
``param_groups[i]["params"]`` is replaced in place, as DeepSpeed does. With fp32 weights at
stage 0 there are no masters: the inner optimizer updates the model's parameters directly,
like DDP. With fp32 weights at stage 3 (no offload) the master *is* this rank's shard
(``shard.local``, shared storage), as FSDP2 steps its sharded parameters: a second fp32
copy would only cost 4 bytes per element and a copy per step.

A step: the gradients are complete (the reducer has run); check for inf/NaN across ranks
(fp16: skip the step and lower the loss scale), unscale and clip by the global norm (one
all-reduce of the squared norm), step the inner optimizer, leave untouched any parameter
that got no gradient on any rank (as torch's optimizers skip ``grad is None``), and write
the new weights back: all-gathered into every rank's full parameters (stages 1-2 and small
stage-3 params) or into this rank's stage-3 shard.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from . import _dist
from ._loss_scaler import LossScaler
from ._shard import Bucket, ParamShard, make_buckets

__all__ = ["ZeroOptimizer"]


class ZeroOptimizer:
    """What ``engine.optimizer`` is: a wrapper that owns the partitioned state."""

    def __init__(
        self,
        inner: torch.optim.Optimizer,
        groups: list[list[ParamShard]],
        *,
        direct: bool,
        clip: float,
        scaler: LossScaler | None,
        gather_bucket_numel: int,
        ignore_unused: bool = True,
        param_store: Any = None,
    ) -> None:
        self.inner = inner
        #: ``offload_param``'s store, where the stage-3 partitions live (see _param_offload)
        self.param_store = param_store
        #: allocates a shard's fp32 gradient partition where this optimizer owns it (off the
        #: device under optimizer offload); None: the reducer keeps them on the device
        self.grad_home: Callable[[ParamShard], torch.Tensor] | None = None
        self.groups = groups
        self.direct = direct
        self.clip = clip
        self.scaler = scaler
        self.ignore_unused = ignore_unused
        self.shards = [s for g in groups for s in g]
        self.masters: list[torch.nn.Parameter] = []
        if not direct:
            self._build_masters()
        full = [s for s in self.shards if s.local is None]
        self.gather_buckets: list[Bucket] = make_buckets(full, gather_bucket_numel)
        self.last_overflow = False
        self.last_grad_norm: float | None = None

    # -- construction ---------------------------------------------------------------------------
    def _build_masters(self) -> None:
        if any(self.inner.state.values()):
            raise ValueError(
                "the optimizer passed to initialize() has already stepped (it has state); "
                "pass a fresh optimizer: zero-core re-partitions its parameters"
            )
        for group, shards in zip(self.inner.param_groups, self.groups):
            masters = []
            for s in shards:
                if self._shard_is_master(s):
                    master = torch.nn.Parameter(s.local)  # the same storage
                else:
                    source = (
                        s.local if s.local is not None else s.my_part(s.param.detach().reshape(-1))
                    )
                    master = torch.nn.Parameter(self._new_master(source))
                s.master = master
                s.grad = None  # allocated by the reducer when a gradient arrives
                masters.append(master)
            group["params"] = masters
            self.masters.extend(masters)
        self.inner.state.clear()

    def _shard_is_master(self, s: ParamShard) -> bool:
        """Whether ``s``'s stage-3 fp32 shard on the device can serve as its master."""
        return s.local is not None and s.store is None and s.local.dtype == torch.float32

    def _new_master(self, source: torch.Tensor) -> torch.Tensor:
        """An fp32 copy of a shard's weights, where this optimizer keeps its masters."""
        return source.to(torch.float32, copy=True)

    # -- what users and schedulers see ---------------------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.inner.param_groups

    @property
    def state(self) -> Any:
        return self.inner.state

    @property
    def loss_scale(self) -> float:
        return self.scaler.cur_scale if self.scaler is not None else 1.0

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Free this rank's gradient partition (and any full gradients): between steps
        there is no gradient memory at all; the reducer allocates it again."""
        for s in self.shards:
            s.grad = None
            if s.master is not None:
                s.master.grad = None
            s.param.grad = None
            s.had_grad = False

    # -- the step -------------------------------------------------------------------------------
    def _local_grads(self) -> list[torch.Tensor]:
        if self.direct:
            return [s.param.grad for s in self.shards if s.param.grad is not None]
        return [s.grad for s in self.shards if s.grad is not None]

    def step(self) -> bool:
        """One optimizer step on complete, averaged gradients. Returns False when skipped
        (fp16 overflow)."""
        # One pass over the gradients gives the global norm and the overflow check: an inf
        # or NaN anywhere makes the all-reduced sum of squares non-finite on every rank.
        sq = self._global_sq_norm()
        overflow = not math.isfinite(sq)
        self.last_overflow = overflow
        if overflow and self.scaler is not None:
            self.scaler.update(True)
            self.zero_grad()
            return False
        inv_scale = 1.0 / self.loss_scale
        norm = math.sqrt(sq) * inv_scale if not overflow else sq
        self.last_grad_norm = norm
        coef = inv_scale
        if self.clip > 0 and norm > self.clip:
            coef *= self.clip / (norm + 1e-6)
        grads = self._local_grads()
        if coef != 1.0 and grads:
            torch._foreach_mul_(grads, coef)
        unused = self._no_grad_anywhere()
        if unused and not self.ignore_unused:
            raise RuntimeError(
                f"parameters {[s.name for s in unused][:5]} got no gradient on any rank this "
                f"step and zero_optimization.ignore_unused_parameters is false; set it to "
                f"true to skip them (as torch's optimizers skip grad=None)"
            )
        new_weights = self._update(set(unused))
        if self.scaler is not None:
            self.scaler.update(False)
        self._gather_weights(new_weights)
        self.zero_grad()
        return True

    def _update(self, unused: set[ParamShard]) -> dict[ParamShard, torch.Tensor] | None:
        """Step the inner optimizer on every shard with a gradient (``unused`` are skipped,
        as torch skips ``grad is None``). Returns the new weights of shards whose masters
        the caller cannot read back cheaply (None: read the masters)."""
        for s in self.shards:
            if self.direct:
                if s in unused:
                    s.param.grad = None
            else:
                s.master.grad = None if s in unused else s.grad
        self.inner.step()
        return None

    def _global_sq_norm(self) -> float:
        """Sum of squares of the whole model's gradient, over all ranks (inf/NaN on
        overflow). Each rank adds its shards' squares, each weighted by 1/(ranks holding
        that same shard): a whole parameter replicated over its group of n ranks counts 1/n
        on each, a shard held by one rank counts fully. ``torch._foreach_norm`` reads each
        gradient once, with no float64 copy."""
        by_copies: dict[int, list[torch.Tensor]] = {}
        for s in self.shards:
            g = s.param.grad if self.direct else s.grad
            if g is not None:
                copies = _dist.world_size(s.group) // s.nshards
                by_copies.setdefault(copies, []).append(g)
        sq = torch.zeros(1, dtype=torch.float64)
        for copies, grads in by_copies.items():
            norms = torch._foreach_norm(grads, 2.0)
            sq += torch.stack(norms).double().pow(2).sum() / copies
        _dist.all_reduce(sq)
        return float(sq)

    def _no_grad_anywhere(self) -> list[ParamShard]:
        """Params whose gradient was missing on every rank that holds them."""
        by_group: dict[int, list[ParamShard]] = {}
        for s in self.shards:
            by_group.setdefault(id(s.group), []).append(s)
        missing = []
        for shards in by_group.values():
            flags = torch.tensor([1 if s.had_grad else 0 for s in shards], dtype=torch.int32)
            _dist.all_reduce_max(flags, group=shards[0].group)
            missing += [s for s, f in zip(shards, flags.tolist()) if not f]
        return missing

    def _write_back(self) -> None:
        """New weights from the masters into the parameters the model computes with (after
        a checkpoint load changed the masters)."""
        self._gather_weights(None)

    @torch.no_grad()
    def _gather_weights(self, new: dict[ParamShard, torch.Tensor] | None) -> None:
        """Copy each shard's new weights (``new[s]``, else its master) into the parameters
        the model computes with, on their device: this rank's stage-3 shard, or all-gathered
        into every rank's full parameter."""
        if self.direct:
            return

        def weights(s: ParamShard) -> torch.Tensor:
            return new[s] if new is not None and s in new else s.master

        local = [(s, weights(s)) for s in self.shards if s.local is not None]
        if self.param_store is not None:
            self.param_store.write_back(local)
        else:
            for s, w in local:
                if w.data_ptr() != s.local.data_ptr():  # else the master is the shard
                    s.local.copy_(w)
        for bucket in self.gather_buckets:
            device = bucket.shards[0].param.device
            if bucket.nshards == 1:
                for s in bucket.shards:
                    s.param.data.copy_(weights(s)[: s.numel].view(s.shape))
                continue
            dtype = bucket.shards[0].param.dtype
            mine = torch.cat([weights(s) for s in bucket.shards]).to(device=device, dtype=dtype)
            full = torch.empty(bucket.nshards * bucket.total, dtype=dtype, device=device)
            _dist.all_gather_into(full, mine, group=bucket.group)
            for i, s in enumerate(bucket.shards):
                s.param.data.copy_(bucket.unpack_full(full, i).view(s.shape))

    def close(self) -> None:
        """Delete the files of NVMe parameter offload now (they also go at interpreter
        exit); the engine cannot train afterwards."""
        if self.param_store is not None:
            self.param_store.close()

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """This rank's partition: the inner optimizer's state, masters and loss scaler."""
        return {
            "inner": self.inner.state_dict(),
            "masters": [m.detach().clone() for m in self.masters],
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        for m, saved in zip(self.masters, state["masters"]):
            m.data.copy_(saved)
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self._write_back()

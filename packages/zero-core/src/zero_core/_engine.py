"""The training engine ``initialize()`` returns: DeepSpeed's loop API over ZeRO stages 0-3.

[Note: one micro-step]
``engine(*inputs)`` runs the model; ``engine.backward(loss)`` runs backward on
``loss * loss_scale / gradient_accumulation_steps`` and reduces gradients (stages 2-3 on
every micro-step, into this rank's gradient partition; stages 0-1 only on the last micro-step
of an accumulation window, so the window costs one reduction); ``engine.step()`` counts the
micro-step and, at the accumulation boundary, steps the optimizer and the schedule. Calls
out of order (``step()`` without ``backward()``, ``backward()`` twice) raise instead of
silently training on a wrong gradient.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import torch
from torch import nn

from . import _dist
from ._loss_scaler import LossScaler
from ._offload import cpu_param_groups, make_optimizer
from ._optimizer import ZeroOptimizer
from ._reducer import GradReducer
from ._shard import ParamShard
from ._stage3 import (
    Stage3Runtime,
    expert_group,
    full_copy,
    gather,
    group_source,
    is_partitioned,
    partition_param,
)
from ._telemetry import BACKWARD, BACKWARD_ALLREDUCE, FORWARD, STEP, Telemetry

__all__ = ["ZeroEngine"]


def _cast_floats(obj: Any, dtype: torch.dtype) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast_floats(o, dtype) for o in obj)
    if isinstance(obj, dict):
        return {k: _cast_floats(v, dtype) for k, v in obj.items()}
    return obj


class ZeroEngine(nn.Module):
    """Wraps a model for ZeRO data-parallel training. Built by ``zero_core.initialize``."""

    def __init__(
        self,
        model: nn.Module,
        config: Any,
        optimizer_factory: Any,
        lr_scheduler: Any,
        param_groups: list[dict[str, Any]] | None,
    ) -> None:
        super().__init__()
        self.module = model
        self.config = config
        zc = config.zero_optimization
        self.stage = zc.stage
        self.world = _dist.world_size()
        self.rank = _dist.rank()
        self.dtype = (
            torch.float16
            if config.fp16.enabled
            else torch.bfloat16
            if config.bf16.enabled
            else torch.float32
        )
        self.global_steps = 0
        self.global_samples = 0
        self.skipped_steps = 0
        self.micro_steps = 0
        self._backward_pending = False
        self.training_dataloader = None
        self._epoch_start_micro = 0
        self._prepare_module()
        groups = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
        self.shard_groups = self._make_shards(groups)
        self.optimizer: ZeroOptimizer | None = None
        self.lr_scheduler = None
        if optimizer_factory is not None:
            self._build_optimizer(optimizer_factory, groups)
            self._attach_scheduler(lr_scheduler)
        #: progress line, timers, flops profiler, comms logger, monitors (see _telemetry)
        self.telemetry = Telemetry(config, model, self.rank)

    # -- setup ----------------------------------------------------------------------------------
    def _prepare_module(self) -> None:
        model = self.module
        if self.dtype != torch.float32:
            for p in model.parameters():
                if p.is_floating_point() and not is_partitioned(p):
                    p.data = p.data.to(self.dtype)
                elif is_partitioned(p) and p.zs_shard.local.dtype != self.dtype:
                    p.zs_shard.local = p.zs_shard.local.to(self.dtype)
                    p.data = torch.empty(0, dtype=self.dtype)
            for b in model.buffers():
                if b.is_floating_point():
                    b.data = b.data.to(self.dtype)
        zc = self.config.zero_optimization
        with torch.no_grad():
            for p in model.parameters():  # built under Init before it was marked an expert
                if is_partitioned(p) and p.zs_shard.group is not expert_group(p):
                    gather([p])
                    del p.zs_shard
            for name, p in model.named_parameters():
                if is_partitioned(p):
                    continue
                if self.stage == 3 and p.numel() > zc.stage3_param_persistence_threshold:
                    partition_param(p, name, broadcast=True)
                else:
                    group = expert_group(p)
                    _dist.broadcast(p.data, group_source(group, p), group=group)
            for b in model.buffers():
                _dist.broadcast(b.data, 0)
            if self.stage == 3:  # small params built partitioned by Init stay whole
                small = zc.stage3_param_persistence_threshold
                for p in model.parameters():
                    if is_partitioned(p) and p.zs_shard.numel <= small:
                        gather([p])
                        p.zs_shard.local = None
                        del p.zs_shard
        self.stage3 = (
            Stage3Runtime(model, prefetch_numel=int(zc.stage3_prefetch_bucket_size))
            if self.stage == 3
            else None
        )

    def _make_shards(self, groups: list[dict[str, Any]]) -> list[list[ParamShard]]:
        names = {id(p): n for n, p in self.module.named_parameters()}
        seen: set[int] = set()
        out = []
        for g in groups:
            shards = []
            for p in g["params"]:
                if id(p) in seen:
                    raise ValueError(
                        f"parameter {names.get(id(p), '?')!r} appears in two param groups"
                    )
                seen.add(id(p))
                if is_partitioned(p):
                    shards.append(p.zs_shard)
                    continue
                group = expert_group(p)
                if self.stage >= 1:
                    nshards, owner = _dist.world_size(group), _dist.rank(group)
                else:
                    nshards, owner = 1, 0
                shards.append(ParamShard(p, names.get(id(p), ""), nshards, owner, group=group))
            out.append(shards)
        missing = [
            n for n, p in self.module.named_parameters() if p.requires_grad and id(p) not in seen
        ]
        if missing and groups:
            raise ValueError(
                f"parameters {missing[:5]} require grad but are in no optimizer param group; "
                f"add them, or set requires_grad=False"
            )
        return out

    def _build_optimizer(self, factory: Any, groups: list[dict[str, Any]]) -> None:
        if not any(self.shard_groups):
            raise ValueError(
                "the model has no parameters that require grad: there is nothing to train"
            )
        zc = self.config.zero_optimization
        direct = self.stage == 0 and self.dtype == torch.float32
        inner = factory(cpu_param_groups(groups) if zc.offload_optimizer else groups)
        # [Note: optimizers that communicate] 1-bit Adam and friends exchange compressed
        # momentum themselves: the engine must hand them each rank's own gradients.
        self_comm = bool(getattr(inner, "communicates_gradients", False))
        if self_comm:
            stages = tuple(getattr(inner, "supported_zero_stages", (0,)))
            name = type(inner).__name__
            if self.stage not in stages:
                raise ValueError(
                    f"{name} communicates its own gradients and works with ZeRO stage "
                    f"{', '.join(map(str, stages))} only; the config asks for stage {self.stage}"
                )
            if self.config.gradient_clipping:
                raise ValueError(
                    f"gradient_clipping with {name}: the engine never sees the averaged "
                    f"gradient of an optimizer that communicates itself; remove it"
                )
        scaler = None
        fp16 = self.config.fp16
        if fp16.enabled:
            scaler = LossScaler(
                fp16.loss_scale,
                fp16.initial_scale_power,
                fp16.loss_scale_window,
                fp16.hysteresis,
                fp16.consecutive_hysteresis,
                fp16.min_loss_scale,
            )
        self.optimizer = make_optimizer(
            self.config,
            inner,
            self.shard_groups,
            direct=direct,
            clip=float(self.config.gradient_clipping or 0.0),
            scaler=scaler,
            gather_bucket_numel=int(zc.allgather_bucket_size),
            ignore_unused=zc.ignore_unused_parameters,
            device_inner=lambda: factory(groups),  # offload_optimizer.ratio < 1
        )
        shards = [s for g in self.shard_groups for s in g]
        comm_dtype = self.config.communication_data_type or (
            self.dtype if direct else torch.float32
        )
        self.reducer = GradReducer(
            shards,
            int(zc.reduce_bucket_size),
            comm_dtype,
            overlap=bool(zc.overlap_comm),
            prescale=bool(self.config.prescale_gradients),
            predivide=float(self.config.gradient_predivide_factor),
            communicate=not self_comm,
            grad_home=self.optimizer.grad_home,
        )
        self._hooks = [
            s.param.register_post_accumulate_grad_hook(self._grad_hook(s)) for s in shards
        ]

    def _grad_hook(self, shard: ParamShard) -> Any:
        def hook(param: torch.Tensor) -> None:
            with self.telemetry.timed(BACKWARD_ALLREDUCE):
                self.reducer.grad_ready(shard)
            if self.stage3 is not None and self.reducer.active:
                self.stage3.after_grad(param)

        return hook

    def _attach_scheduler(self, lr_scheduler: Any) -> None:
        if lr_scheduler is None:
            return
        if callable(lr_scheduler) and not hasattr(lr_scheduler, "step"):
            lr_scheduler = lr_scheduler(self.optimizer.inner)
        self.lr_scheduler = lr_scheduler

    # -- the loop -------------------------------------------------------------------------------
    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        self.telemetry.before_forward(self.global_steps)
        with self.telemetry.timed(FORWARD):
            if self.dtype != torch.float32:
                inputs = _cast_floats(inputs, self.dtype)
                kwargs = _cast_floats(kwargs, self.dtype)
            out = self.module(*inputs, **kwargs)
            if self.stage3 is not None:
                self.stage3.end_forward()
        return out

    def is_gradient_accumulation_boundary(self) -> bool:
        return (self.micro_steps + 1) % self.gradient_accumulation_steps() == 0

    def backward(self, loss: torch.Tensor, retain_graph: bool = False) -> torch.Tensor:
        """Backward on ``loss`` (scaled for fp16 and divided by the accumulation steps), then
        the gradient reduction this micro-step needs (see [Note: one micro-step])."""
        if self.optimizer is None:
            raise RuntimeError("backward() needs an optimizer: pass one to initialize()")
        if self._backward_pending:
            raise RuntimeError(
                "backward() called twice without step() in between; call engine.step() "
                "after every engine.backward() (it only steps the optimizer at the "
                "gradient accumulation boundary)"
            )
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError("backward() takes the scalar loss tensor")
        with self.telemetry.timed(BACKWARD):
            self._check_loss(loss)
            scale = self.optimizer.loss_scale / self.gradient_accumulation_steps()
            scaled = loss.float() * scale
            reduce_now = self.stage >= 2 or self.is_gradient_accumulation_boundary()
            if reduce_now:
                self.reducer.start()
            if self.stage3 is not None:
                self.stage3.in_backward = True
            try:
                scaled.backward(retain_graph=retain_graph)
                with self.telemetry.timed(BACKWARD_ALLREDUCE):
                    self.reducer.finish()
            finally:
                if self.stage3 is not None:
                    self.stage3.in_backward = False
                    self.stage3.end_backward()
                self.reducer.active = False
        self.telemetry.record_loss(loss)
        self._backward_pending = True
        return loss

    def _check_loss(self, loss: torch.Tensor) -> None:
        bad = torch.tensor([0.0 if math.isfinite(float(loss.detach())) else 1.0])
        _dist.all_reduce_max(bad)
        if bad.item() == 0.0:
            return
        where = f"micro-step {self.micro_steps} (global step {self.global_steps})"
        if self.config.fp16.enabled:
            warnings.warn(
                f"non-finite loss at {where}: this step will be skipped and the loss scale lowered",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        raise FloatingPointError(
            f"non-finite loss ({float(loss.detach())} on rank {self.rank}) at {where}; with "
            f"{'bf16' if self.config.bf16.enabled else 'fp32'} there is no loss scaling to "
            f"recover, so training stops here instead of writing NaN into the weights"
        )

    def step(self) -> None:
        """Count a micro-step; at the accumulation boundary step the optimizer and schedule."""
        if not self._backward_pending:
            raise RuntimeError("step() called without backward() since the last step()")
        self._backward_pending = False
        boundary = self.is_gradient_accumulation_boundary()
        if boundary:
            with self.telemetry.timed(STEP):
                stepped = self.optimizer.step()
                if stepped:
                    if self.lr_scheduler is not None:
                        self.lr_scheduler.step()
                else:
                    self.skipped_steps += 1
            self.global_steps += 1
            self.global_samples += self.train_batch_size()
        self.micro_steps += 1
        if boundary:
            self.telemetry.after_step(self)

    def destroy(self) -> None:
        """Flush and close the monitors, put back the ``torch.distributed`` functions the
        comms logger wrapped, stop a flops profile in progress, and delete NVMe offload
        swap files. Call it when training ends (it also runs at interpreter exit). The
        engine still trains afterwards with the observers gone, except under NVMe offload,
        whose optimizer state went with its files."""
        self.telemetry.close()
        close = getattr(self.optimizer, "close", None)
        if close is not None:
            close()

    def zero_grad(self) -> None:
        """Drop accumulated gradients (full and partitioned)."""
        if self.optimizer is not None:
            self.optimizer.zero_grad()
        else:
            self.module.zero_grad(set_to_none=True)

    # -- data position and checkpoints ---------------------------------------------------------
    def attach_dataloader(self, loader: Any) -> None:
        self.training_dataloader = loader
        loader.sampler.on_set_epoch = self._mark_epoch

    def _mark_epoch(self) -> None:
        self._epoch_start_micro = self.micro_steps

    def data_position(self) -> dict[str, int]:
        """Where this rank is in the training data (see [Note: resuming mid-epoch])."""
        loader = self.training_dataloader
        if loader is None:
            return {}
        consumed = (self.micro_steps - self._epoch_start_micro) * loader.batch_size
        return {"epoch": loader.sampler.epoch, "consumed": consumed, "world": self.world}

    def set_data_position(self, position: dict[str, int], rescale: bool = False) -> None:
        loader = self.training_dataloader
        if loader is None or not position:
            return
        consumed = position["consumed"]
        if rescale:  # the same number of samples in all, spread over the new world
            consumed = consumed * position["world"] // self.world
        sampler = loader.sampler
        sampler.set_epoch(position["epoch"])
        sampler.skip = consumed % max(sampler.num_samples, 1)
        self._epoch_start_micro = self.micro_steps - consumed // loader.batch_size

    def save_checkpoint(
        self,
        save_dir: str,
        tag: str | None = None,
        client_state: dict[str, Any] | None = None,
        save_latest: bool = True,
    ) -> str:
        """Save everything needed to resume exactly (see ``zero_core._checkpoint``); every
        rank must call it. Returns the checkpoint directory."""
        from ._checkpoint import save_checkpoint

        return save_checkpoint(self, save_dir, tag, client_state, save_latest)

    def load_checkpoint(
        self,
        load_dir: str,
        tag: str | None = None,
        load_optimizer_states: bool = True,
        load_lr_scheduler_states: bool = True,
        load_module_only: bool = False,
    ) -> tuple[str | None, dict[str, Any] | None]:
        """Load a checkpoint saved at any world size; returns ``(path, client_state)``."""
        from ._checkpoint import load_checkpoint

        return load_checkpoint(
            self,
            load_dir,
            tag,
            load_optimizer_states,
            load_lr_scheduler_states,
            load_module_only,
        )

    def save_16bit_model(self, save_dir: str, save_filename: str = "pytorch_model.bin") -> bool:
        """Save the model's weights in the training dtype as one plain ``state_dict`` file
        (rank 0 writes; stage 3 gathers one parameter at a time, and only when
        ``stage3_gather_16bit_weights_on_model_save`` is true, as in DeepSpeed)."""
        gather_ok = self.config.zero_optimization.stage3_gather_16bit_weights_on_model_save
        if self.stage == 3 and not gather_ok:
            raise ValueError(
                "save_16bit_model at stage 3 gathers the full weights: set "
                "zero_optimization.stage3_gather_16bit_weights_on_model_save to true"
            )
        from ._checkpoint import _write_atomic

        state = self.full_state_dict()
        if self.rank == 0:
            os.makedirs(save_dir, exist_ok=True)
            _write_atomic(state, os.path.join(save_dir, save_filename))
        return True

    # -- DeepSpeed's accessors ------------------------------------------------------------------
    def get_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups] if self.optimizer else []

    def train_batch_size(self) -> int:
        return self.config.train_batch_size

    def train_micro_batch_size_per_gpu(self) -> int:
        return self.config.train_micro_batch_size_per_gpu

    def gradient_accumulation_steps(self) -> int:
        return self.config.gradient_accumulation_steps

    def zero_optimization_stage(self) -> int:
        return self.stage

    @property
    def loss_scale(self) -> float:
        return self.optimizer.loss_scale if self.optimizer is not None else 1.0

    def full_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The whole model's weights on every rank (stage 3 params gathered, one at a time),
        as CPU tensors in ``dtype`` (default: the training dtype)."""
        out = {
            name: full_copy(p, dtype)
            for name, p in self.module.named_parameters(remove_duplicate=False)
        }
        for name, b in self.module.named_buffers():
            out[name] = b.detach().to("cpu").clone()
        return out

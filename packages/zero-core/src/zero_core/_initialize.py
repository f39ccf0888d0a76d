"""``initialize()``: DeepSpeed's entry point: (engine, optimizer, dataloader, lr_scheduler)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from . import _dist, _registry
from ._data import ResumableSampler
from ._engine import ZeroEngine
from ._support import refuse_unsupported
from .checkpointing._settings import apply_engine_config
from .config import load_config

__all__ = ["initialize"]


def _param_groups(model: nn.Module, model_parameters: Any) -> list[dict[str, Any]]:
    if model_parameters is None:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    items = list(model_parameters)
    if items and isinstance(items[0], dict):
        return [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in items]
    return [{"params": [p for p in items if p.requires_grad]}]


def _config_from_args(args: Any) -> Any:
    for attr in ("deepspeed_config", "deepscale_config", "zerospeed_config"):
        value = getattr(args, attr, None)
        if value:
            return value
    return None


def initialize(
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] | None = None,
    model_parameters: Iterable[Any] | None = None,
    lr_scheduler: Any = None,
    training_data: torch.utils.data.Dataset | None = None,
    collate_fn: Callable[..., Any] | None = None,
    config: dict[str, Any] | str | os.PathLike | None = None,
    *,
    args: Any = None,
    config_params: dict[str, Any] | None = None,
    dist_init_required: bool | None = None,
) -> tuple[ZeroEngine, Any, torch.utils.data.DataLoader | None, Any]:
    """Wrap ``model`` for ZeRO training as a DeepSpeed config describes.

    Args:
        model: the model (built normally, or under ``zero_core.Init()`` for stage 3).
        optimizer: a ``torch.optim.Optimizer`` over the model's params (not stepped yet), a
            callable taking param groups, or None to build the config's ``"optimizer"``.
        model_parameters: params or param-group dicts for the config's optimizer (default:
            every param that requires grad).
        lr_scheduler: a scheduler bound to ``optimizer``, a callable taking the optimizer, or
            None to build the config's ``"scheduler"``.
        training_data: a dataset; a ``DataLoader`` over it is returned, with a
            ``DistributedSampler`` and the micro batch size.
        collate_fn: for that ``DataLoader``.
        config: a DeepSpeed config dict or JSON path (``args.deepspeed_config`` and
            ``config_params`` are accepted too, as in DeepSpeed).

    Returns:
        ``(engine, engine.optimizer, dataloader or None, engine.lr_scheduler)``.
    """
    if model is None:
        raise ValueError("initialize() needs the model to train: initialize(model=...)")
    if config is None:
        config = config_params if config_params is not None else _config_from_args(args)
    if dist_init_required is not False:
        _dist.init_distributed()
    cfg = load_config(config, world_size=_dist.world_size())
    refuse_unsupported(cfg)
    apply_engine_config(cfg)
    if cfg.dump_state and _dist.rank() == 0:
        print(json.dumps(cfg.to_dict(), indent=2), flush=True)
    groups = _param_groups(model, model_parameters)

    factory: Callable[[list[dict[str, Any]]], torch.optim.Optimizer] | None = None
    if isinstance(optimizer, torch.optim.Optimizer):
        if cfg.optimizer is not None:
            raise ValueError(
                "an optimizer was passed to initialize() and the config has an 'optimizer' "
                "block; give one or the other"
            )
        groups = optimizer.param_groups
        factory = lambda _groups: optimizer  # noqa: E731 - its param_groups are re-pointed
    elif callable(optimizer):
        factory = optimizer
    elif cfg.optimizer is not None:
        opt_block = cfg.optimizer
        _registry.optimizer_factory(opt_block.type)  # an unknown type fails here, not later
        factory = lambda g: _registry.build_optimizer(opt_block.type, g, opt_block.params)  # noqa: E731
    if lr_scheduler is None and cfg.scheduler is not None:
        sched_block = cfg.scheduler
        _registry.scheduler_factory(sched_block.type)
        lr_scheduler = lambda opt: _registry.build_scheduler(  # noqa: E731
            sched_block.type, opt, sched_block.params
        )

    if factory is None and cfg.zero_optimization.offload_param is not None:
        raise ValueError(
            "zero_optimization.offload_param: parameter offload is built with the optimizer "
            "(its step writes the partitions back), and none was given; pass an optimizer "
            "or remove the block"
        )
    engine = ZeroEngine(model, cfg, factory, lr_scheduler, groups if factory else None)
    loader = None
    if training_data is not None:
        sampler = ResumableSampler(
            training_data, num_replicas=_dist.world_size(), rank=_dist.rank(), shuffle=True
        )
        loader = torch.utils.data.DataLoader(
            training_data,
            batch_size=cfg.train_micro_batch_size_per_gpu,
            sampler=sampler,
            collate_fn=collate_fn,
            drop_last=cfg.dataloader_drop_last,
            # its own generator: creating an iterator must not draw from the global RNG,
            # or a resumed run would see other random numbers than an unbroken one
            generator=torch.Generator().manual_seed(sampler.seed + _dist.rank()),
        )
    if loader is not None:
        engine.attach_dataloader(loader)
    return engine, engine.optimizer, loader, engine.lr_scheduler

"""The whole config: :class:`ZeroCoreConfig` and :func:`load_config`."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ._batch import resolve_batch
from ._load import read_config
from ._precision import BF16Config, FP16Config, amp_enabled, check_modes, refuse_precision
from ._schema import meta, option, parse_fields, to_plain
from ._sections import SECTIONS, parse_sections, refuse_sections
from ._zero import ZeroConfig, refuse_zero

__all__ = ["OptimizerBlock", "SchedulerBlock", "ZeroCoreConfig", "load_config"]

_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


@dataclass(frozen=True, kw_only=True)
class OptimizerBlock:
    """The ``"optimizer"`` block; the type is resolved, and its params checked, by the
    optimizer registry."""

    type: str = option()
    """The optimizer's name (``"AdamW"``, ``"Lamb"``, a ``torch.optim`` class name, ...)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Its constructor's keyword arguments."""


@dataclass(frozen=True, kw_only=True)
class SchedulerBlock:
    """The ``"scheduler"`` block; the type is resolved, and its params checked, by the
    scheduler registry."""

    type: str = option()
    """The schedule's name (``"WarmupLR"``, ...)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Its constructor's keyword arguments."""


@dataclass(frozen=True, kw_only=True)
class ZeroCoreConfig:
    """A DeepSpeed config, checked and resolved: built by :func:`load_config` only.

    Every default is DeepSpeed's. Equality ignores :attr:`raw`, so
    ``load_config(cfg.to_dict(), cfg.world_size) == cfg``.
    """

    train_batch_size: int = option(None, json_type=int | None, ge=1)
    """Samples per optimizer step, over all ranks and accumulation steps."""
    train_micro_batch_size_per_gpu: int = option(None, json_type=int | None, ge=1)
    """Samples per forward/backward on one rank."""
    gradient_accumulation_steps: int = option(None, json_type=int | None, ge=1)
    """Micro-batches whose gradients are accumulated before a step."""
    optimizer: OptimizerBlock | None = None
    """The optimizer to build, or None when the client passes its own."""
    scheduler: SchedulerBlock | None = None
    """The LR schedule to build, or None."""
    fp16: FP16Config = field(default_factory=FP16Config)
    """fp16 mixed precision with loss scaling."""
    bf16: BF16Config = field(default_factory=BF16Config, metadata=meta(aliases=("bfloat16",)))
    """bf16 mixed precision."""
    gradient_clipping: float = option(0.0, ge=0.0)
    """Clip the global gradient norm to this; 0.0 disables clipping (DeepSpeed's default,
    although the reference's table shows 1.0, the value of its example)."""
    prescale_gradients: bool = False
    """Divide gradients by the world size before reducing them (false: after)."""
    gradient_predivide_factor: float = option(1.0, gt=0.0)
    """Divide gradients by this before reducing, and by ``world / factor`` after."""
    communication_data_type: torch.dtype | None = field(
        default=None,
        metadata=meta(
            json_type=str | None,
            choices=(*_DTYPES, None),
            convert=lambda name: None if name is None else _DTYPES[name],
            export=lambda dtype: None if dtype is None else _DTYPE_NAMES[dtype],
        ),
    )
    """Data type gradients are reduced in (``"fp32"``, ``"fp16"``, ``"bf16"`` in JSON);
    None: the training precision's."""
    sparse_gradients: bool = False
    """Sparse reduction of ``nn.Embedding`` gradients; refused when true."""
    zero_optimization: ZeroConfig = field(default_factory=ZeroConfig)
    """ZeRO partitioning."""
    steps_per_print: int = option(10, ge=1)
    """Log progress every this many steps."""
    wall_clock_breakdown: bool = False
    """Time forward, backward and step."""
    dump_state: bool = False
    """Print the engine's state after initialization."""
    dataloader_drop_last: bool = False
    """Drop the last incomplete batch of the data loader built from ``training_data``."""
    zero_allow_untested_optimizer: bool = False
    """DeepSpeed: allow a client optimizer with ZeRO. zero-core partitions any
    ``torch.optim.Optimizer``, so this changes nothing; accepted for compatibility."""
    zero_force_ds_cpu_optimizer: bool = True
    """Under optimizer offload, refuse an optimizer passed to ``initialize()`` that is not a
    CPU implementation (zero-optim's CPUAdam and friends); false uses it anyway."""
    world_size: int = option(1, internal=True)
    """Data-parallel ranks the batch sizes were resolved for (not a JSON key)."""
    sections: dict[str, dict[str, Any]] = field(default_factory=dict, metadata=meta(internal=True))
    """The checked sections other packages act on (``"flops_profiler"``, ``"aio"``, ...),
    holding the keys given, under canonical names."""
    raw: dict[str, Any] = field(
        default_factory=dict, metadata=meta(internal=True), compare=False, repr=False
    )
    """The config as given."""

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as JSON-serializable data, keys under canonical names."""
        out = to_plain(self)
        for name in ("optimizer", "scheduler"):
            if out[name] is None:
                del out[name]
        out.update(copy.deepcopy(self.sections))
        return out


_SKIP = frozenset({*SECTIONS, "amp"})


def load_config(
    config: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    world_size: int | None = None,
) -> ZeroCoreConfig:
    """Check a DeepSpeed config and resolve it for ``world_size`` ranks.

    Every problem with the config is a :class:`ConfigError`, found before any
    NotImplementedError, so a config that is refused is known to be otherwise valid.

    Args:
        config: a dict, the path of a JSON file, or None (an empty config, which fails for
            want of a batch size).
        world_size: data-parallel ranks; None: the initialized process group's size, else
            the ``WORLD_SIZE`` environment variable, else 1.

    Returns:
        The resolved config.

    Raises:
        ConfigError: an unknown key (with the closest valid one), a value of the wrong type
            or range, batch sizes that do not fit together, modes that exclude each other,
            an unreadable or invalid JSON file.
        NotImplementedError: a DeepSpeed feature zero-core does not implement is switched on
            (see the table in :mod:`zero_core.config`).
        ValueError: ``world_size`` is not a positive integer.
    """
    raw = read_config(config)
    world = _world_size(world_size)
    values = parse_fields(ZeroCoreConfig, raw, "", skip=_SKIP)
    amp = amp_enabled(raw.get("amp"))
    sections = parse_sections(raw)
    train, micro, gas = resolve_batch(
        values.pop("train_batch_size", None),
        values.pop("train_micro_batch_size_per_gpu", None),
        values.pop("gradient_accumulation_steps", None),
        world,
    )
    cfg = ZeroCoreConfig(
        **values,
        train_batch_size=train,
        train_micro_batch_size_per_gpu=micro,
        gradient_accumulation_steps=gas,
        world_size=world,
        sections=sections,
        raw=copy.deepcopy(dict(raw)),
    )
    check_modes(cfg.fp16, cfg.bf16, amp, cfg.zero_optimization.stage)
    if cfg.sparse_gradients:
        raise NotImplementedError(
            "sparse_gradients: sparse gradient reduction is not implemented by zero-core; "
            "remove it or set it to false"
        )
    refuse_precision(cfg.fp16, amp)
    refuse_zero(cfg.zero_optimization)
    refuse_sections(sections)
    return cfg


def _world_size(world_size: int | None) -> int:
    if world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size()
        env = os.environ.get("WORLD_SIZE", "1")
        try:
            world_size = int(env)
        except ValueError:
            raise ValueError(f"WORLD_SIZE={env!r} is not an integer") from None
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    return world_size

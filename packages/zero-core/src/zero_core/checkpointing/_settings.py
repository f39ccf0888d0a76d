"""``configure()``: the process-wide activation-checkpointing settings and model-parallel unit.

[Note: who configures checkpointing]
DeepSpeed users call ``deepspeed.checkpointing.configure(mpu, deepspeed_config=...)``
themselves; ``zero_core.initialize`` also applies a config's ``"activation_checkpointing"``
block, so a config alone is enough. A ``configure()`` call always wins: ``initialize``
leaves the settings alone once the user has called it, and a later call replaces what
``initialize`` set. Settings not given to ``configure()`` come from ``deepspeed_config``,
else keep DeepSpeed's defaults (everything off).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import _dist
from ..config import ConfigError, ZeroCoreConfig
from ..config._load import read_config
from ..config._schema import parse_block
from ..config._sections import ActivationCheckpointingSection
from . import _rng, _storage

__all__ = [
    "ActivationCheckpointingSection",
    "apply_engine_config",
    "configure",
    "is_configured",
    "model_parallel_cuda_manual_seed",
    "mp_group",
    "mp_rank",
    "mp_world_size",
    "settings",
]

_SECTION = "activation_checkpointing"
_MPU_METHODS = (
    "get_model_parallel_rank",
    "get_model_parallel_world_size",
    "get_model_parallel_group",
)


@dataclass
class _State:
    settings: ActivationCheckpointingSection = field(default_factory=ActivationCheckpointingSection)
    mpu: Any = None
    configured: bool = False
    by_user: bool = False
    """``configure()`` was called (``initialize`` then leaves the settings alone)."""


_STATE = _State()


def settings() -> ActivationCheckpointingSection:
    """The settings ``checkpoint`` follows now: the ``"activation_checkpointing"`` block's
    fields, after ``configure()`` or ``initialize``."""
    return _STATE.settings


def is_configured() -> bool:
    """Whether ``configure()`` (or ``initialize`` with an ``"activation_checkpointing"``
    block) has set the checkpointing options; ``checkpoint`` works either way."""
    return _STATE.configured


def mp_world_size() -> int:
    """Model-parallel ranks activations are partitioned over (1 without a unit)."""
    mpu = _STATE.mpu
    return 1 if mpu is None else int(mpu.get_model_parallel_world_size())


def mp_rank() -> int:
    """This rank's index among them."""
    mpu = _STATE.mpu
    return 0 if mpu is None else int(mpu.get_model_parallel_rank())


def mp_group() -> Any:
    """The model-parallel process group (None without a unit: there is nothing to gather)."""
    mpu = _STATE.mpu
    return None if mpu is None else mpu.get_model_parallel_group()


def _block(deepspeed_config: Any) -> ActivationCheckpointingSection:
    """The ``"activation_checkpointing"`` block of a config given as ``load_config``'s
    result, a dict or a JSON path (only this block is read: a config holding nothing else is
    fine)."""
    if deepspeed_config is None:
        return ActivationCheckpointingSection()
    if isinstance(deepspeed_config, ZeroCoreConfig):
        return ActivationCheckpointingSection(**deepspeed_config.sections.get(_SECTION, {}))
    if not isinstance(deepspeed_config, (Mapping, str, os.PathLike)):
        raise TypeError(
            f"configure: deepspeed_config must be a dict, a JSON path or load_config()'s "
            f"result, got {type(deepspeed_config).__name__}"
        )
    raw = read_config(deepspeed_config)
    return parse_block(ActivationCheckpointingSection, raw.get(_SECTION), _SECTION)


def _check(s: ActivationCheckpointingSection) -> None:
    """Refuse combinations the options do not define (the reference describes CPU and
    contiguous checkpointing as acting on partitioned activations)."""
    if s.cpu_checkpointing and not s.partition_activations:
        raise ConfigError(
            f"{_SECTION}.cpu_checkpointing (configure's checkpoint_in_cpu) moves partitioned "
            f"activations to the CPU: set partition_activations to true as well (without a "
            f"model-parallel unit each rank keeps, and moves, the whole activations)"
        )
    if s.contiguous_memory_optimization and not s.partition_activations:
        raise ConfigError(
            f"{_SECTION}.contiguous_memory_optimization (configure's contiguous_checkpointing) "
            f"copies partitioned activations into one buffer: set partition_activations to "
            f"true as well"
        )
    if s.contiguous_memory_optimization and s.number_checkpoints is None:
        raise ConfigError(
            f"{_SECTION}.contiguous_memory_optimization needs number_checkpoints (configure's "
            f"num_checkpoints): the number of checkpoint() calls in one forward pass, to size "
            f"the buffer"
        )


def _check_mpu(mpu: Any) -> None:
    missing = [m for m in _MPU_METHODS if not callable(getattr(mpu, m, None))]
    if missing:
        raise TypeError(
            f"configure: the model-parallel unit {type(mpu).__name__} has no {', '.join(missing)}; "
            f"pass an object with {', '.join(_MPU_METHODS)}, or None without model parallelism"
        )
    world = mpu.get_model_parallel_world_size()
    if world > 1 and _dist.world_size() == 1:
        raise RuntimeError(
            f"configure: the model-parallel unit spans {world} ranks but no process group is "
            f"initialized; call zero_core.init_distributed() first"
        )


def configure(
    mpu_: Any,
    deepspeed_config: Any = None,
    partition_activations: bool | None = None,
    contiguous_checkpointing: bool | None = None,
    num_checkpoints: int | None = None,
    checkpoint_in_cpu: bool | None = None,
    synchronize: bool | None = None,
    profile: bool | None = None,
) -> None:
    """Set how ``checkpoint`` stores and recomputes activations (DeepSpeed's signature).

    Args:
        mpu_: the model-parallel unit activations are partitioned over: an object with
            ``get_model_parallel_rank()``, ``get_model_parallel_world_size()`` and
            ``get_model_parallel_group()``; None without model parallelism.
        deepspeed_config: a DeepSpeed config (dict, JSON path or ``load_config``'s result)
            whose ``"activation_checkpointing"`` block gives the settings not passed here.
        partition_activations: keep only this model-parallel rank's slice of each saved
            input, all-gathered again before recomputation.
        contiguous_checkpointing: copy the saved slices into one buffer of
            ``num_checkpoints`` slots (needs ``partition_activations``).
        num_checkpoints: ``checkpoint`` calls per forward pass, to size that buffer.
        checkpoint_in_cpu: keep the saved slices in CPU memory (needs
            ``partition_activations``).
        synchronize: synchronize the CUDA device at each checkpoint's start and end, in
            forward and in backward (nothing to wait for on CPU).
        profile: time each checkpointed function's forward and recomputation
            (:func:`profile_stats`, and a log line on the ``zero_core.checkpointing`` logger).

    Raises:
        zero_core.ConfigError: a bad key or value in the block, or options that need another one.
        TypeError: ``mpu_`` lacks one of the three methods.
    """
    base = _block(deepspeed_config)
    given = {
        "partition_activations": partition_activations,
        "contiguous_memory_optimization": contiguous_checkpointing,
        "number_checkpoints": num_checkpoints,
        "cpu_checkpointing": checkpoint_in_cpu,
        "synchronize_checkpoint_boundary": synchronize,
        "profile": profile,
    }
    new = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
    _apply(new, mpu_, by_user=True)


def apply_engine_config(cfg: ZeroCoreConfig) -> None:
    """What ``initialize`` does with a config: apply its ``"activation_checkpointing"`` block,
    unless it has none or the user called ``configure()`` (see [Note: who configures
    checkpointing])."""
    if _SECTION in cfg.sections and not _STATE.by_user:
        _apply(_block(cfg), _STATE.mpu, by_user=False)


def _apply(new: ActivationCheckpointingSection, mpu: Any, by_user: bool) -> None:
    _check(new)
    if mpu is not None:
        _check_mpu(mpu)
    _storage.reset()  # the buffer is sized by the settings: drop the old one
    _STATE.settings = new
    _STATE.mpu = mpu
    _STATE.configured = True
    _STATE.by_user = _STATE.by_user or by_user


def model_parallel_cuda_manual_seed(seed: int) -> None:
    """Seed the default generators (CPU and, with CUDA, the current device) with ``seed`` and
    reset the tracker to one stream, ``"model-parallel-rng"``, seeded with
    ``seed + 2718 + model-parallel rank``: dropout in model-parallel regions (inside
    ``get_cuda_rng_tracker().fork()``) then differs between model-parallel ranks and matches
    across data-parallel ones. Configure the model-parallel unit first."""
    _rng.seed_streams(seed, mp_rank())

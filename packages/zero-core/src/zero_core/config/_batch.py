"""The batch-size triangle: ``train_batch_size = micro * accumulation * world_size``.

[Note: inferring the batch sizes]
DeepSpeed lets a config give any two of the three batch sizes and infers the third from
the world size; with one given it takes ``gradient_accumulation_steps = 1``:

=====================  ====================================================================
given                  inferred
=====================  ====================================================================
all three              nothing; they must satisfy the equation
train, micro           accumulation = train / (micro * world)
train, accumulation    micro = train / (accumulation * world)
micro, accumulation    train = micro * accumulation * world
train                  accumulation = 1, micro = train / world
micro                  accumulation = 1, train = micro * world
accumulation or none   an error: there is nothing to infer the batch from
=====================  ====================================================================

A division that leaves a remainder is an error (a fractional batch cannot be run), and so
is a triple that does not satisfy the equation; both messages show the arithmetic.
"""

from __future__ import annotations

from ._errors import ConfigError

__all__ = ["resolve_batch"]

_TRAIN = "train_batch_size"
_MICRO = "train_micro_batch_size_per_gpu"
_GAS = "gradient_accumulation_steps"


def resolve_batch(
    train: int | None, micro: int | None, gas: int | None, world_size: int
) -> tuple[int, int, int]:
    """The three batch sizes, completed and checked. See [Note: inferring the batch sizes].

    Args:
        train: ``train_batch_size`` or None when absent.
        micro: ``train_micro_batch_size_per_gpu`` or None.
        gas: ``gradient_accumulation_steps`` or None.
        world_size: the number of data-parallel ranks.

    Returns:
        ``(train_batch_size, train_micro_batch_size_per_gpu, gradient_accumulation_steps)``.

    Raises:
        ConfigError: nothing to infer from, a remainder, or an inconsistent triple.
    """
    if train is not None and micro is not None and gas is not None:
        pass
    elif train is not None and micro is not None:
        gas = _divide(train, _MICRO, micro, world_size, _GAS)
    elif train is not None and gas is not None:
        micro = _divide(train, _GAS, gas, world_size, _MICRO)
    elif micro is not None and gas is not None:
        train = micro * gas * world_size
    elif train is not None:
        gas = 1
        micro = _divide(train, _GAS, gas, world_size, _MICRO)
    elif micro is not None:
        gas = 1
        train = micro * world_size
    else:
        given = f" (only {_GAS} = {gas} is given)" if gas is not None else ""
        raise ConfigError(
            f"{_TRAIN}: set {_TRAIN} or {_MICRO}{given}; with world_size = {world_size}, the "
            f"other batch sizes are inferred ({_GAS} defaults to 1)"
        )
    if train != micro * gas * world_size:
        raise ConfigError(
            f"{_TRAIN}: the batch sizes are inconsistent: {_TRAIN} = {train}, but {_MICRO} * "
            f"{_GAS} * world_size = {micro} * {gas} * {world_size} = "
            f"{micro * gas * world_size}"
        )
    return train, micro, gas


def _divide(train: int, other_name: str, other: int, world_size: int, result: str) -> int:
    per_step = other * world_size
    if train % per_step:
        raise ConfigError(
            f"{_TRAIN}: {_TRAIN} = {train} is not divisible by {other_name} * world_size = "
            f"{other} * {world_size} = {per_step}, so {result} would be "
            f"{train} / {per_step} = {train / per_step:g}"
        )
    return train // per_step

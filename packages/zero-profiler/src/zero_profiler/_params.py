"""Parameter counts that see through ZeRO stage-3 partitioning."""

from __future__ import annotations

from torch import nn


def parameter_numel(param: nn.Parameter) -> int:
    """Elements of the full parameter, also when ZeRO stage 3 has partitioned it away.

    A partitioned parameter holds an empty tensor between uses; zero-core and DeepSpeed
    both record the full size as ``ds_numel``, so a profile of a stage-3 model reports the
    model's real size instead of 0.
    """
    full = getattr(param, "ds_numel", None)
    return int(full) if full is not None else param.numel()


def count_parameters(model: nn.Module) -> int:
    """Elements in the model's parameters, each shared parameter counted once."""
    return sum(parameter_numel(p) for p in model.parameters())

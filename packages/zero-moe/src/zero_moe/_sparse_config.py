"""DeepSpeed's ``"sparse_attention"`` config block -> a ``SparsityConfig`` object."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from ._sparsity import (
    BigBirdSparsityConfig,
    BSLongformerSparsityConfig,
    DenseSparsityConfig,
    FixedSparsityConfig,
    SparsityConfig,
    VariableSparsityConfig,
)

#: mode -> (class, the block's keys that mode reads).
SPARSE_ATTENTION_MODES: dict[str, tuple[type[SparsityConfig], tuple[str, ...]]] = {
    "dense": (DenseSparsityConfig, ("block", "different_layout_per_head")),
    "fixed": (
        FixedSparsityConfig,
        (
            "block",
            "different_layout_per_head",
            "num_local_blocks",
            "num_global_blocks",
            "attention",
            "horizontal_global_attention",
            "num_different_global_patterns",
        ),
    ),
    "variable": (
        VariableSparsityConfig,
        (
            "block",
            "different_layout_per_head",
            "num_random_blocks",
            "local_window_blocks",
            "global_block_indices",
            "global_block_end_indices",
            "attention",
            "horizontal_global_attention",
        ),
    ),
    "bigbird": (
        BigBirdSparsityConfig,
        (
            "block",
            "different_layout_per_head",
            "num_random_blocks",
            "num_sliding_window_blocks",
            "num_global_blocks",
            "attention",
        ),
    ),
    "bslongformer": (
        BSLongformerSparsityConfig,
        (
            "block",
            "different_layout_per_head",
            "num_sliding_window_blocks",
            "global_block_indices",
            "global_block_end_indices",
            "attention",
        ),
    ),
}

#: The values the Configuration JSON reference lists for every key of the block. A key the
#: chosen mode does not read is accepted only at this value (or the default of a class
#: that reads it), so the documented all-keys example parses and nothing set is ignored.
DOCUMENTED_VALUES: dict[str, Any] = {
    "block": 16,
    "different_layout_per_head": False,
    "num_local_blocks": 4,
    "num_global_blocks": 1,
    "attention": "bidirectional",
    "horizontal_global_attention": False,
    "num_different_global_patterns": 4,
    "num_random_blocks": 0,
    "local_window_blocks": [4],
    "global_block_indices": [0],
    "global_block_end_indices": None,
    "num_sliding_window_blocks": 3,
}

_CLASS_DEFAULTS: dict[str, list[Any]] = {
    "num_different_global_patterns": [1],
    "num_random_blocks": [1],
}


def sparsity_config_from_dict(
    config: Mapping[str, Any], num_heads: int, *, seed: int | None = None
) -> SparsityConfig:
    """Build the layout config a ``"sparse_attention"`` block describes.

    Keys left out take the class's default (the ``__init__`` defaults of the mode's
    class). The attention module's head count is not part of the block.

    Args:
        config: The ``"sparse_attention"`` block, or a whole DeepSpeed config holding one.
        num_heads: Attention heads of the model.
        seed: Seed of random blocks (``"variable"``/``"bigbird"``).

    Returns:
        A :class:`DenseSparsityConfig`, :class:`FixedSparsityConfig`,
        :class:`VariableSparsityConfig`, :class:`BigBirdSparsityConfig` or
        :class:`BSLongformerSparsityConfig`.

    Raises:
        ValueError: An unknown mode or key (with the closest valid name), or a key the mode
            does not read set to a non-default value.
    """
    block = dict(config.get("sparse_attention", config))
    mode = block.pop("mode", "fixed")
    if mode not in SPARSE_ATTENTION_MODES:
        raise ValueError(
            f"sparse_attention mode {mode!r} is not one of {sorted(SPARSE_ATTENTION_MODES)}"
        )
    cls, keys = SPARSE_ATTENTION_MODES[mode]
    kwargs = {}
    for key, value in block.items():
        if key not in DOCUMENTED_VALUES:
            close = difflib.get_close_matches(key, DOCUMENTED_VALUES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown sparse_attention key {key!r}{hint}")
        if key in keys:
            kwargs[key] = value
        elif value != DOCUMENTED_VALUES[key] and value not in _CLASS_DEFAULTS.get(key, []):
            raise ValueError(
                f"sparse_attention key {key!r}={value!r} has no effect in mode {mode!r} "
                f"(which reads {', '.join(keys)}); remove it"
            )
    return cls(num_heads, seed=seed, **kwargs)

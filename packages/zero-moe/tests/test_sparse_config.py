"""The "sparse_attention" config block builds the right SparsityConfig."""

from __future__ import annotations

import pytest

from zero_moe import (
    BigBirdSparsityConfig,
    BSLongformerSparsityConfig,
    DenseSparsityConfig,
    FixedSparsityConfig,
    VariableSparsityConfig,
    sparsity_config_from_dict,
)

#: The example block of DeepSpeed's Configuration JSON reference (every key, mode fixed).
DOCUMENTED_EXAMPLE = {
    "mode": "fixed",
    "block": 16,
    "different_layout_per_head": True,
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


def test_documented_example():
    config = sparsity_config_from_dict({"sparse_attention": DOCUMENTED_EXAMPLE}, num_heads=8)
    assert type(config) is FixedSparsityConfig
    assert (config.num_heads, config.block, config.different_layout_per_head) == (8, 16, True)
    assert (config.num_local_blocks, config.num_global_blocks) == (4, 1)
    assert config.num_different_global_patterns == 4
    assert config.make_layout(128).shape == (8, 8, 8)


@pytest.mark.parametrize(
    ("block", "cls", "attrs"),
    [
        ({"mode": "dense", "block": 32}, DenseSparsityConfig, {"block": 32}),
        ({}, FixedSparsityConfig, {"block": 16, "num_local_blocks": 4}),
        (
            {
                "mode": "variable",
                "num_random_blocks": 2,
                "local_window_blocks": [2, 4],
                "global_block_indices": [0, 8],
                "global_block_end_indices": [2, 9],
                "attention": "unidirectional",
            },
            VariableSparsityConfig,
            {
                "num_random_blocks": 2,
                "local_window_blocks": [2, 4],
                "global_block_end_indices": [2, 9],
                "attention": "unidirectional",
            },
        ),
        (
            {
                "mode": "bigbird",
                "num_random_blocks": 3,
                "num_sliding_window_blocks": 5,
                "num_global_blocks": 2,
            },
            BigBirdSparsityConfig,
            {"num_random_blocks": 3, "num_sliding_window_blocks": 5, "num_global_blocks": 2},
        ),
        (
            {"mode": "bslongformer", "num_sliding_window_blocks": 7, "global_block_indices": [1]},
            BSLongformerSparsityConfig,
            {"num_sliding_window_blocks": 7, "global_block_indices": [1]},
        ),
    ],
    ids=["dense", "fixed-defaults", "variable", "bigbird", "bslongformer"],
)
def test_each_mode(block, cls, attrs):
    config = sparsity_config_from_dict(block, num_heads=4, seed=0)
    assert type(config) is cls and config.num_heads == 4
    for name, value in attrs.items():
        assert getattr(config, name) == value


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"mode": "sparse"}, "mode 'sparse' is not one of"),
        (
            {"num_local_block": 4},
            "unknown sparse_attention key 'num_local_block'; did you mean 'num_local_blocks'",
        ),
        (
            {"mode": "bigbird", "num_local_blocks": 8},
            "'num_local_blocks'=8 has no effect in mode 'bigbird'",
        ),
        (
            {"mode": "fixed", "num_local_blocks": 4, "num_global_blocks": 3},
            "must be a multiple of num_global_blocks",
        ),
    ],
    ids=["mode", "typo", "ignored", "invalid-combination"],
)
def test_errors(block, message):
    with pytest.raises(ValueError, match=message):
        sparsity_config_from_dict(block, num_heads=4)

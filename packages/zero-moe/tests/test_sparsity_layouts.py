"""Layouts of every SparsityConfig against hand-drawn block patterns; errors; seeds."""

from __future__ import annotations

import random

import pytest
import torch

from zero_moe import (
    BigBirdSparsityConfig,
    BSLongformerSparsityConfig,
    DenseSparsityConfig,
    FixedSparsityConfig,
    LocalSlidingWindowSparsityConfig,
    SparsityConfig,
    VariableSparsityConfig,
)


def _grid(*rows: str) -> torch.Tensor:
    return torch.tensor([[int(c) for c in row] for row in rows])


HAND_DRAWN = {
    "fixed-bidirectional": (
        FixedSparsityConfig(1, num_local_blocks=2, num_global_blocks=1),
        6,
        _grid("110101", "110101", "011101", "011101", "010111", "010111"),
    ),
    "fixed-unidirectional-short-last-window": (
        FixedSparsityConfig(1, num_local_blocks=3, attention="unidirectional"),
        7,
        _grid("1000000", "1100000", "1110000", "0011000", "0011100", "0011110", "0010011"),
    ),
    "fixed-two-global-blocks": (
        FixedSparsityConfig(1, num_local_blocks=4, num_global_blocks=2),
        8,
        _grid(*["11110011"] * 4, *["00111111"] * 4),
    ),
    "variable-windows-and-global": (
        VariableSparsityConfig(1, local_window_blocks=[1, 2], global_block_indices=[0]),
        6,
        _grid("100000", "111000", "111000", "100110", "100110", "100001"),
    ),
    "variable-global-window-horizontal": (
        VariableSparsityConfig(
            1,
            local_window_blocks=[2],
            global_block_indices=[3],
            global_block_end_indices=[5],
            horizontal_global_attention=True,
        ),
        6,
        _grid("110110", "110110", "001110", "111111", "111111", "000111"),
    ),
    "variable-unidirectional": (
        VariableSparsityConfig(
            1, local_window_blocks=[3], global_block_indices=[1], attention="unidirectional"
        ),
        6,
        _grid("100000", "110000", "111000", "010100", "010110", "010111"),
    ),
    "bigbird-no-random": (
        BigBirdSparsityConfig(1, num_random_blocks=0, num_sliding_window_blocks=3),
        5,
        _grid("11111", "11100", "11110", "10111", "10011"),
    ),
    "bigbird-unidirectional": (
        BigBirdSparsityConfig(1, num_random_blocks=0, attention="unidirectional"),
        5,
        _grid("10000", "11000", "11100", "10110", "10011"),
    ),
    "bslongformer": (
        BSLongformerSparsityConfig(1, global_block_indices=[2]),
        5,
        _grid("11100", "11100", "11111", "00111", "00111"),
    ),
    "bslongformer-global-window-unidirectional": (
        BSLongformerSparsityConfig(
            1,
            num_sliding_window_blocks=1,
            global_block_indices=[1],
            global_block_end_indices=[3],
            attention="unidirectional",
        ),
        5,
        _grid("10000", "11000", "11100", "01110", "01101"),
    ),
    "local-causal": (
        LocalSlidingWindowSparsityConfig(1, num_sliding_window_blocks=3),
        4,
        _grid("1000", "1100", "0110", "0011"),
    ),
    "local-bidirectional": (
        LocalSlidingWindowSparsityConfig(1, num_sliding_window_blocks=5, attention="bidirectional"),
        6,
        _grid("111000", "111100", "111110", "011111", "001111", "000111"),
    ),
    "dense": (DenseSparsityConfig(1), 3, torch.ones(3, 3, dtype=torch.long)),
}


@pytest.mark.parametrize("name", list(HAND_DRAWN))
def test_layout_by_hand(name):
    config, blocks, expected = HAND_DRAWN[name]
    layout = config.make_layout(blocks * config.block)
    assert layout.dtype == torch.int64 and layout.shape == (1, blocks, blocks)
    assert torch.equal(layout[0], expected), f"\n{layout[0]}"


def test_fixed_global_patterns_per_head_with_horizontal():
    config = FixedSparsityConfig(
        2,
        block=8,
        different_layout_per_head=True,
        num_local_blocks=4,
        num_different_global_patterns=2,
        horizontal_global_attention=True,
    )
    layout = config.make_layout(64)
    head0 = _grid(*["11110001"] * 3, "11111111", *["00011111"] * 3, "11111111")
    head1 = _grid(
        "11110010",
        "11110010",
        "11111111",
        "11110010",
        "00101111",
        "00101111",
        "11111111",
        "00101111",
    )
    assert torch.equal(layout[0], head0) and torch.equal(layout[1], head1)


def test_shared_layout_copies_head_zero():
    layout = BigBirdSparsityConfig(4, num_random_blocks=2, seed=0).make_layout(16 * 10)
    assert all(torch.equal(layout[h], layout[0]) for h in range(4))
    per_head = BigBirdSparsityConfig(4, different_layout_per_head=True, num_random_blocks=2, seed=0)
    layout = per_head.make_layout(16 * 10)
    assert not all(torch.equal(layout[h], layout[0]) for h in range(4))


@pytest.mark.parametrize("cls", [VariableSparsityConfig, BigBirdSparsityConfig])
def test_random_blocks_are_seeded(cls):
    def make(seed=None):
        return cls(2, different_layout_per_head=True, num_random_blocks=3, seed=seed).make_layout(
            16 * 12
        )

    assert torch.equal(make(1), make(1)) and not torch.equal(make(1), make(2))
    random.seed(5)
    a = make()
    random.seed(5)
    assert torch.equal(a, make())  # the global random module when no seed is given
    base = cls(2, different_layout_per_head=True, num_random_blocks=0).make_layout(16 * 12)
    extra = make(1) - base
    assert (extra >= 0).all() and (make(1).sum(dim=2) >= 3).all()


def test_bigbird_unidirectional_random_blocks_stay_causal():
    layout = BigBirdSparsityConfig(
        1, num_random_blocks=3, attention="unidirectional", seed=0
    ).make_layout(16 * 9)
    assert torch.equal(layout[0], layout[0].tril())


ERRORS = [
    (lambda: DenseSparsityConfig(2).make_layout(100), ValueError, "multiple of the block size"),
    (
        lambda: FixedSparsityConfig(2, num_local_blocks=4, num_global_blocks=3),
        ValueError,
        "must be a multiple of num_global_blocks",
    ),
    (
        lambda: FixedSparsityConfig(2, attention="causal"),
        NotImplementedError,
        "only 'unidirectional' and 'bidirectional'",
    ),
    (
        lambda: FixedSparsityConfig(
            2, attention="unidirectional", horizontal_global_attention=True
        ),
        ValueError,
        "horizontal_global_attention needs",
    ),
    (
        lambda: FixedSparsityConfig(2, num_different_global_patterns=2),
        ValueError,
        "needs different_layout_per_head=True",
    ),
    (
        lambda: FixedSparsityConfig(
            2,
            different_layout_per_head=True,
            num_local_blocks=4,
            num_global_blocks=2,
            num_different_global_patterns=3,
        ),
        ValueError,
        "must not exceed num_local_blocks/num_global_blocks = 2",
    ),
    (
        lambda: VariableSparsityConfig(
            2, global_block_indices=[0, 4], global_block_end_indices=[2]
        ),
        ValueError,
        "must have the same length",
    ),
    (
        lambda: VariableSparsityConfig(2, global_block_indices=[3], global_block_end_indices=[3]),
        ValueError,
        "start index 3 must be smaller than its end index 3",
    ),
    (
        lambda: VariableSparsityConfig(
            2, attention="unidirectional", horizontal_global_attention=True
        ),
        ValueError,
        "horizontal_global_attention needs",
    ),
    (
        lambda: VariableSparsityConfig(2, num_random_blocks=5).make_layout(64),
        ValueError,
        "num_random_blocks=5 must not exceed the 4 blocks",
    ),
    (
        lambda: BigBirdSparsityConfig(2, num_random_blocks=5).make_layout(64),
        ValueError,
        "num_random_blocks=5 must not exceed the 4 blocks",
    ),
    (
        lambda: BigBirdSparsityConfig(
            2, num_random_blocks=0, num_sliding_window_blocks=5
        ).make_layout(64),
        ValueError,
        "num_sliding_window_blocks=5 must not exceed the 4",
    ),
    (
        lambda: BigBirdSparsityConfig(2, num_random_blocks=0, num_global_blocks=5).make_layout(64),
        ValueError,
        "num_global_blocks=5 must not exceed the 4",
    ),
    (
        lambda: BSLongformerSparsityConfig(
            2, global_block_indices=[2, 1], global_block_end_indices=[1, 2]
        ),
        ValueError,
        "start index 2 must be smaller",
    ),
    (
        lambda: LocalSlidingWindowSparsityConfig(2, attention="sideways"),
        NotImplementedError,
        "only 'unidirectional'",
    ),
    (lambda: SparsityConfig(2).make_layout(64), NotImplementedError, "does not define"),
]


@pytest.mark.parametrize(("make", "error", "message"), ERRORS, ids=[e[2][:30] for e in ERRORS])
def test_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_defaults_match_the_reference():
    fixed = FixedSparsityConfig(8)
    assert (fixed.block, fixed.different_layout_per_head, fixed.num_local_blocks) == (16, False, 4)
    assert (fixed.num_global_blocks, fixed.attention) == (1, "bidirectional")
    assert (fixed.horizontal_global_attention, fixed.num_different_global_patterns) == (False, 1)
    variable = VariableSparsityConfig(8)
    assert variable.num_random_blocks == 0 and variable.local_window_blocks == [4]
    assert variable.global_block_indices == [0] and variable.global_block_end_indices is None
    bigbird = BigBirdSparsityConfig(8)
    assert (bigbird.num_random_blocks, bigbird.num_sliding_window_blocks) == (1, 3)
    assert bigbird.num_global_blocks == 1
    assert BSLongformerSparsityConfig(8).num_sliding_window_blocks == 3
    assert LocalSlidingWindowSparsityConfig(8).attention == "unidirectional"

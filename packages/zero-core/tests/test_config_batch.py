"""The batch-size triangle: train_batch_size = micro * accumulation * world_size."""

from __future__ import annotations

import pytest

from zero_core.config import ConfigError, load_config

T, M, G = "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"


def batch(world_size: int, **given: int | None) -> tuple[int, int, int]:
    cfg = load_config(given, world_size=world_size)
    return cfg.train_batch_size, cfg.train_micro_batch_size_per_gpu, cfg.gradient_accumulation_steps


def error(world_size: int, **given: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(given, world_size=world_size)
    return str(info.value)


@pytest.mark.parametrize(
    ("world_size", "given", "expected"),
    [
        # all three, consistent
        (1, {T: 8, M: 4, G: 2}, (8, 4, 2)),
        (2, {T: 16, M: 4, G: 2}, (16, 4, 2)),
        # train and micro: accumulation inferred
        (1, {T: 32, M: 4}, (32, 4, 8)),
        (2, {T: 32, M: 4}, (32, 4, 4)),
        (2, {T: 8, M: 4}, (8, 4, 1)),
        # train and accumulation: micro inferred
        (1, {T: 32, G: 4}, (32, 8, 4)),
        (2, {T: 32, G: 4}, (32, 4, 4)),
        # micro and accumulation: train inferred
        (1, {M: 3, G: 5}, (15, 3, 5)),
        (2, {M: 3, G: 5}, (30, 3, 5)),
        # train only: accumulation 1
        (1, {T: 32}, (32, 32, 1)),
        (2, {T: 32}, (32, 16, 1)),
        (4, {T: 32}, (32, 8, 1)),
        # micro only: accumulation 1
        (1, {M: 6}, (6, 6, 1)),
        (2, {M: 6}, (12, 6, 1)),
        # null is absent
        (2, {T: 32, M: None, G: None}, (32, 16, 1)),
        # integral floats are integers
        (2, {T: 32.0, M: 4.0}, (32, 4, 4)),
    ],
    ids=lambda v: (
        str(v) if not isinstance(v, dict) else ",".join(f"{k[:5]}={x}" for k, x in v.items())
    ),
)
def test_inferred(world_size, given, expected):
    assert batch(world_size, **given) == expected
    assert all(isinstance(n, int) for n in expected)


@pytest.mark.parametrize(
    ("world_size", "given", "message"),
    [
        (
            1,
            {T: 8, M: 4, G: 4},
            "train_batch_size: the batch sizes are inconsistent: train_batch_size = 8, but "
            "train_micro_batch_size_per_gpu * gradient_accumulation_steps * world_size = "
            "4 * 4 * 1 = 16",
        ),
        (
            2,
            {T: 8, M: 4, G: 2},
            "train_batch_size: the batch sizes are inconsistent: train_batch_size = 8, but "
            "train_micro_batch_size_per_gpu * gradient_accumulation_steps * world_size = "
            "4 * 2 * 2 = 16",
        ),
    ],
    ids=["world1", "world2"],
)
def test_inconsistent_triple_shows_the_arithmetic(world_size, given, message):
    assert error(world_size, **given) == message


@pytest.mark.parametrize(
    ("world_size", "given", "message"),
    [
        (
            2,
            {T: 30, M: 4},
            "train_batch_size: train_batch_size = 30 is not divisible by "
            "train_micro_batch_size_per_gpu * world_size = 4 * 2 = 8, so "
            "gradient_accumulation_steps would be 30 / 8 = 3.75",
        ),
        (
            1,
            {T: 2, M: 4},
            "train_batch_size: train_batch_size = 2 is not divisible by "
            "train_micro_batch_size_per_gpu * world_size = 4 * 1 = 4, so "
            "gradient_accumulation_steps would be 2 / 4 = 0.5",
        ),
        (
            2,
            {T: 10, G: 3},
            "train_batch_size: train_batch_size = 10 is not divisible by "
            "gradient_accumulation_steps * world_size = 3 * 2 = 6, so "
            "train_micro_batch_size_per_gpu would be 10 / 6 = 1.66667",
        ),
        (
            2,
            {T: 7},
            "train_batch_size: train_batch_size = 7 is not divisible by "
            "gradient_accumulation_steps * world_size = 1 * 2 = 2, so "
            "train_micro_batch_size_per_gpu would be 7 / 2 = 3.5",
        ),
    ],
    ids=["train-micro", "train-micro-too-small", "train-gas", "train-only"],
)
def test_not_divisible_shows_the_arithmetic(world_size, given, message):
    assert error(world_size, **given) == message


def test_accumulation_alone_is_not_enough():
    assert error(2, **{G: 4}) == (
        "train_batch_size: set train_batch_size or train_micro_batch_size_per_gpu (only "
        "gradient_accumulation_steps = 4 is given); with world_size = 2, the other batch sizes "
        "are inferred (gradient_accumulation_steps defaults to 1)"
    )


def test_no_batch_size_at_all():
    assert error(1) == (
        "train_batch_size: set train_batch_size or train_micro_batch_size_per_gpu; with "
        "world_size = 1, the other batch sizes are inferred (gradient_accumulation_steps "
        "defaults to 1)"
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (T, 0, "train_batch_size: expected an integer >= 1 or null, got 0"),
        (M, -2, "train_micro_batch_size_per_gpu: expected an integer >= 1 or null, got -2"),
        (G, 1.5, "gradient_accumulation_steps: expected an integer >= 1 or null, got 1.5"),
        (T, "32", 'train_batch_size: expected an integer >= 1 or null, got "32"'),
        (M, True, "train_micro_batch_size_per_gpu: expected an integer >= 1 or null, got true"),
    ],
)
def test_batch_size_types(key, value, message):
    assert error(1, **{T: 8, key: value} if key != T else {key: value}) == message

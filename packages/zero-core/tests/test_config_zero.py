"""The zero_optimization block: defaults, aliases, legacy keys, offload, refusals."""

from __future__ import annotations

import dataclasses

import pytest

from zero_core.config import (
    ConfigError,
    OffloadOptimizerConfig,
    OffloadParamConfig,
    ZeroConfig,
    load_config,
)


def zero(block: dict) -> ZeroConfig:
    return load_config(
        {"train_batch_size": 4, "zero_optimization": block}, world_size=1
    ).zero_optimization


def error(block: dict, exc: type[Exception] = ConfigError) -> str:
    with pytest.raises(exc) as info:
        zero(block)
    return str(info.value)


def test_defaults_are_deepspeeds():
    assert dataclasses.asdict(zero({})) == {
        "stage": 0,
        "allgather_partitions": True,
        "allgather_bucket_size": 500_000_000,
        "overlap_comm": False,
        "reduce_scatter": True,
        "reduce_bucket_size": 500_000_000,
        "contiguous_gradients": True,
        "load_from_fp32_weights": True,
        "grad_hooks": True,
        "round_robin_gradients": False,
        "offload_param": None,
        "offload_optimizer": None,
        "stage3_max_live_parameters": 1_000_000_000,
        "stage3_max_reuse_distance": 1_000_000_000,
        "stage3_prefetch_bucket_size": 50_000_000,
        "stage3_param_persistence_threshold": 100_000,
        "stage3_gather_16bit_weights_on_model_save": False,
        "stage3_module_granularity_threshold": 0,
        "sub_group_size": 1_000_000_000,
        "elastic_checkpoint": False,
        "ignore_unused_parameters": True,
        "zero_hpz_partition_size": 1,
        "zero_quantized_weights": False,
        "zero_quantized_nontrainable_weights": False,
        "zero_quantized_gradients": False,
        "log_trace_cache_warnings": False,
        "mics_shard_size": -1,
        "mics_hierarchical_params_gather": False,
    }


def test_offload_block_defaults_are_deepspeeds():
    assert dataclasses.asdict(OffloadParamConfig()) == {
        "device": "cpu",
        "nvme_path": "/local_nvme",
        "pin_memory": False,
        "buffer_count": 5,
        "buffer_size": 100_000_000,
        "max_in_cpu": 1_000_000_000,
    }
    assert dataclasses.asdict(OffloadOptimizerConfig()) == {
        "device": "cpu",
        "nvme_path": "/local_nvme",
        "pin_memory": False,
        "ratio": 1.0,
        "buffer_count": 4,
        "fast_init": False,
        "pipeline_read": False,
        "pipeline_write": False,
    }


@pytest.mark.parametrize(("stage", "overlap"), [(0, False), (1, False), (2, False), (3, True)])
def test_overlap_comm_default_depends_on_the_stage(stage, overlap):
    assert zero({"stage": stage}).overlap_comm is overlap
    assert zero({"stage": stage, "overlap_comm": not overlap}).overlap_comm is (not overlap)


def test_every_key_given():
    block = {
        "stage": 2,
        "allgather_partitions": False,
        "allgather_bucket_size": 2e8,
        "overlap_comm": True,
        "reduce_scatter": False,
        "reduce_bucket_size": 3e8,
        "contiguous_gradients": False,
        "load_from_fp32_weights": False,
        "grad_hooks": False,
        "round_robin_gradients": True,
        "stage3_max_live_parameters": 1e6,
        "stage3_max_reuse_distance": 2e6,
        "stage3_prefetch_bucket_size": 3e6,
        "stage3_param_persistence_threshold": 1e4,
        "stage3_gather_16bit_weights_on_model_save": True,
        "stage3_module_granularity_threshold": 100,
        "sub_group_size": 1e12,
        "elastic_checkpoint": False,
        "ignore_unused_parameters": False,
        "zero_hpz_partition_size": 1,
        "zero_quantized_weights": False,
        "zero_quantized_nontrainable_weights": False,
        "zero_quantized_gradients": False,
        "log_trace_cache_warnings": True,
        "mics_shard_size": -1,
        "mics_hierarchical_params_gather": False,
    }
    got = dataclasses.asdict(zero(block))
    expected = {k: (int(v) if isinstance(v, float) else v) for k, v in block.items()}
    assert got == {**expected, "offload_param": None, "offload_optimizer": None}
    assert isinstance(got["sub_group_size"], int) and got["sub_group_size"] == 10**12


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("stage3_gather_fp16_weights_on_model_save", "stage3_gather_16bit_weights_on_model_save"),
        ("gather_16bit_weights_on_model_save", "stage3_gather_16bit_weights_on_model_save"),
        ("max_live_parameters", "stage3_max_live_parameters"),
        ("max_reuse_distance", "stage3_max_reuse_distance"),
        ("prefetch_bucket_size", "stage3_prefetch_bucket_size"),
        ("param_persistence_threshold", "stage3_param_persistence_threshold"),
        ("module_granularity_threshold", "stage3_module_granularity_threshold"),
    ],
)
def test_aliases_land_on_the_canonical_name(alias, canonical):
    value = True if "gather" in alias else 12345
    cfg = load_config(
        {"train_batch_size": 4, "zero_optimization": {"stage": 3, alias: value}}, world_size=1
    )
    assert getattr(cfg.zero_optimization, canonical) == value
    plain = cfg.to_dict()["zero_optimization"]
    assert plain[canonical] == value and alias not in plain


def test_alias_with_its_canonical_name_is_an_error():
    assert error(
        {
            "stage3_gather_16bit_weights_on_model_save": True,
            "stage3_gather_fp16_weights_on_model_save": True,
        }
    ) == (
        "zero_optimization.stage3_gather_fp16_weights_on_model_save: "
        "'stage3_gather_16bit_weights_on_model_save' and "
        "'stage3_gather_fp16_weights_on_model_save' are the same setting; give only "
        "'stage3_gather_16bit_weights_on_model_save'"
    )


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"stage": 4}, "zero_optimization.stage: expected an integer from 0 to 3, got 4"),
        ({"stage": -1}, "zero_optimization.stage: expected an integer from 0 to 3, got -1"),
        ({"stage": "2"}, 'zero_optimization.stage: expected an integer from 0 to 3, got "2"'),
        ({"stage": 1.5}, "zero_optimization.stage: expected an integer from 0 to 3, got 1.5"),
        (
            {"reduce_bucket_size": 0},
            "zero_optimization.reduce_bucket_size: expected an integer >= 1, got 0",
        ),
        (
            {"allgather_bucket_size": 5.5e0},
            "zero_optimization.allgather_bucket_size: expected an integer >= 1, got 5.5",
        ),
        (
            {"overlap_comm": "true"},
            'zero_optimization.overlap_comm: expected true or false or null, got "true"',
        ),
        (
            {"stage3_param_persistence_threshold": -5},
            "zero_optimization.stage3_param_persistence_threshold: expected an integer >= 0, got -5",
        ),
        (
            {"prefetch_bucket_size": None},
            "zero_optimization.prefetch_bucket_size: expected an integer >= 0, got null",
        ),
        (
            {"mics_shard_size": -2},
            "zero_optimization.mics_shard_size: expected an integer >= -1, got -2",
        ),
        (
            {"zero_hpz_partition_size": 0},
            "zero_optimization.zero_hpz_partition_size: expected an integer >= 1, got 0",
        ),
        ({"cpu_offload": 1}, "zero_optimization.cpu_offload: expected true or false, got 1"),
    ],
)
def test_wrong_types_and_ranges(block, message):
    assert error(block) == message


def test_block_must_be_an_object():
    with pytest.raises(ConfigError) as info:
        load_config({"train_batch_size": 4, "zero_optimization": 2}, world_size=1)
    assert str(info.value) == "zero_optimization: expected an object ({...}), got 2"


def test_unknown_key_suggests_the_closest():
    assert error({"stage": 3, "stage3_max_live_parameter": 1e9}) == (
        "zero_optimization.stage3_max_live_parameter: unknown key 'stage3_max_live_parameter' in "
        "'zero_optimization' (did you mean 'stage3_max_live_parameters'?)"
    )
    # a typo of an alias suggests the canonical name
    assert "(did you mean 'stage3_gather_16bit_weights_on_model_save'?)" in error(
        {"stage3_gather_fp16_weights_on_model_sav": True}
    )


def test_unknown_key_in_an_offload_block():
    assert error({"stage": 3, "offload_param": {"device": "none", "pin_memroy": True}}) == (
        "zero_optimization.offload_param.pin_memroy: unknown key 'pin_memroy' in "
        "'zero_optimization.offload_param' (did you mean 'pin_memory'?)"
    )
    assert error({"stage": 2, "offload_optimizer": {"device": "gpu"}}) == (
        'zero_optimization.offload_optimizer.device: expected one of "cpu", "nvme", "none", '
        'got "gpu"'
    )
    assert error({"stage": 2, "offload_optimizer": {"device": "none", "ratio": 1.5}}) == (
        "zero_optimization.offload_optimizer.ratio: expected a number from 0 to 1, got 1.5"
    )


@pytest.mark.parametrize("name", ["offload_param", "offload_optimizer"])
def test_offload_device_none_or_null_block_is_no_offload(name):
    assert getattr(zero({"stage": 3, name: {"device": "none", "pin_memory": True}}), name) is None
    assert getattr(zero({"stage": 3, name: None}), name) is None


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (
            {"stage": 2, "offload_param": {"device": "cpu"}},
            "zero_optimization.offload_param: parameter offload needs stage 3, but "
            "zero_optimization.stage is 2",
        ),
        (
            {"stage": 0, "offload_optimizer": {"device": "cpu"}},
            "zero_optimization.offload_optimizer: optimizer offload needs stage 1, 2 or 3, but "
            "zero_optimization.stage is 0",
        ),
        (
            {"stage": 2, "offload_optimizer": {"device": "nvme"}},
            "zero_optimization.offload_optimizer.device: NVMe offload needs stage 3, but "
            "zero_optimization.stage is 2",
        ),
    ],
)
def test_offload_at_the_wrong_stage_is_a_config_error(block, message):
    assert error(block) == message


def test_legacy_cpu_offload_becomes_offload_optimizer():
    assert zero({"stage": 2, "cpu_offload": True}).offload_optimizer == OffloadOptimizerConfig(
        device="cpu", pin_memory=False
    )
    assert zero(
        {"stage": 3, "cpu_offload_param": True, "cpu_offload_use_pin_memory": True}
    ).offload_param == OffloadParamConfig(device="cpu", pin_memory=True)
    assert zero(
        {"stage": 2, "cpu_offload": False, "cpu_offload_use_pin_memory": True}
    ) == ZeroConfig(stage=2)


def test_legacy_cpu_offload_with_offload_optimizer_is_an_error():
    assert error({"stage": 2, "cpu_offload": True, "offload_optimizer": {"device": "cpu"}}) == (
        "zero_optimization.cpu_offload: the legacy 'cpu_offload' and 'offload_optimizer' both "
        "configure offload; give only 'offload_optimizer'"
    )


@pytest.mark.parametrize(
    ("key", "value", "what"),
    [
        ("elastic_checkpoint", True, "elastic checkpoints"),
        ("zero_hpz_partition_size", 8, "ZeRO++ hpZ partitioning"),
        ("zero_quantized_weights", True, "ZeRO++ quantized weights"),
        ("zero_quantized_nontrainable_weights", True, "ZeRO++ quantized frozen weights"),
        ("zero_quantized_gradients", True, "ZeRO++ quantized gradients"),
        ("mics_shard_size", 8, "MiCS sharding"),
        ("mics_hierarchical_params_gather", True, "MiCS hierarchical gather"),
    ],
)
def test_unimplemented_zero_features_are_refused(key, value, what):
    shown = "true" if value is True else str(value)
    assert error({"stage": 3, key: value}, NotImplementedError) == (
        f"zero_optimization.{key}: {what} ({key} = {shown}) is not implemented by zero-core; "
        f"remove the key"
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("elastic_checkpoint", False),
        ("zero_hpz_partition_size", 1),
        ("zero_quantized_weights", False),
        ("zero_quantized_gradients", False),
        ("mics_shard_size", 0),
        ("mics_shard_size", -1),
    ],
)
def test_unimplemented_zero_features_switched_off_are_accepted(key, value):
    assert getattr(zero({"stage": 3, key: value}), key) == value

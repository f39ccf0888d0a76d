"""The config as a whole: defaults, loading, types, precision modes, refusals, round trip."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from zero_core.config import (
    BF16Config,
    ConfigError,
    FP16Config,
    OptimizerBlock,
    SchedulerBlock,
    ZeroConfig,
    ZeroCoreConfig,
    load_config,
)

BATCH = {"train_batch_size": 8}


def load(extra: dict | None = None, world_size: int = 1) -> ZeroCoreConfig:
    return load_config({**BATCH, **(extra or {})}, world_size=world_size)


def error(config: dict, world_size: int = 1, exc: type[Exception] = ConfigError) -> str:
    with pytest.raises(exc) as info:
        load_config(config, world_size=world_size)
    return str(info.value)


# -- defaults ---------------------------------------------------------------------------


def test_top_level_defaults_are_deepspeeds():
    cfg = load()
    assert cfg.optimizer is None
    assert cfg.scheduler is None
    assert cfg.gradient_clipping == 0.0
    assert cfg.prescale_gradients is False
    assert cfg.gradient_predivide_factor == 1.0
    assert cfg.communication_data_type is None
    assert cfg.sparse_gradients is False
    assert cfg.steps_per_print == 10
    assert cfg.wall_clock_breakdown is False
    assert cfg.dump_state is False
    assert cfg.dataloader_drop_last is False
    assert cfg.zero_allow_untested_optimizer is False
    assert cfg.zero_force_ds_cpu_optimizer is True
    assert cfg.sections == {}
    assert cfg.zero_optimization == ZeroConfig()
    assert cfg.zero_optimization.stage == 0


def test_fp16_defaults_are_deepspeeds():
    fp16 = load().fp16
    assert fp16 == FP16Config()
    assert dataclasses.asdict(fp16) == {
        "enabled": False,
        "auto_cast": False,
        "loss_scale": 0.0,
        "initial_scale_power": 16,
        "loss_scale_window": 1000,
        "hysteresis": 2,
        "consecutive_hysteresis": False,
        "min_loss_scale": 1.0,
        "fp16_master_weights_and_grads": False,
    }


def test_bf16_default_is_off():
    assert load().bf16 == BF16Config(enabled=False)


def test_config_is_frozen():
    cfg = load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps_per_print = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.fp16.enabled = True  # type: ignore[misc]


# -- values given -----------------------------------------------------------------------


def test_fp16_block_values():
    fp16 = load(
        {
            "fp16": {
                "enabled": True,
                "auto_cast": True,
                "loss_scale": 128,
                "initial_scale_power": 12,
                "loss_scale_window": 500,
                "hysteresis": 4,
                "consecutive_hysteresis": True,
                "min_loss_scale": 0.5,
            }
        }
    ).fp16
    assert fp16 == FP16Config(
        enabled=True,
        auto_cast=True,
        loss_scale=128.0,
        initial_scale_power=12,
        loss_scale_window=500,
        hysteresis=4,
        consecutive_hysteresis=True,
        min_loss_scale=0.5,
    )
    assert isinstance(fp16.loss_scale, float)


def test_scalars_given():
    cfg = load(
        {
            "gradient_clipping": 1,
            "prescale_gradients": True,
            "gradient_predivide_factor": 2,
            "steps_per_print": 100,
            "wall_clock_breakdown": True,
            "dump_state": True,
            "dataloader_drop_last": True,
            "zero_allow_untested_optimizer": True,
        }
    )
    assert (cfg.gradient_clipping, cfg.gradient_predivide_factor) == (1.0, 2.0)
    assert isinstance(cfg.gradient_clipping, float)
    assert cfg.prescale_gradients and cfg.wall_clock_breakdown and cfg.dump_state
    assert cfg.dataloader_drop_last is True
    assert cfg.steps_per_print == 100
    assert cfg.zero_allow_untested_optimizer is True


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16), (None, None)],
    ids=["fp32", "fp16", "bf16", "null"],
)
def test_communication_data_type(name, dtype):
    cfg = load({"communication_data_type": name})
    assert cfg.communication_data_type is dtype
    assert cfg.to_dict()["communication_data_type"] == name


def test_optimizer_and_scheduler_blocks():
    cfg = load(
        {
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "betas": [0.9, 0.99]}},
            "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10}},
        }
    )
    assert cfg.optimizer == OptimizerBlock(type="AdamW", params={"lr": 1e-3, "betas": [0.9, 0.99]})
    assert cfg.scheduler == SchedulerBlock(type="WarmupLR", params={"warmup_num_steps": 10})
    # params go through unchecked: the registries check them
    assert load({"optimizer": {"type": "X", "params": {"anything": 1}}}).optimizer.params == {
        "anything": 1
    }
    assert load({"optimizer": {"type": "SGD"}}).optimizer.params == {}


def test_optimizer_params_are_copied_from_the_input():
    given = {**BATCH, "optimizer": {"type": "AdamW", "params": {"betas": [0.9, 0.99]}}}
    cfg = load_config(given, world_size=1)
    given["optimizer"]["params"]["betas"].append(1.0)
    assert cfg.optimizer.params == {"betas": [0.9, 0.99]}
    assert cfg.raw["optimizer"]["params"]["betas"] == [0.9, 0.99]


def test_optimizer_errors():
    assert error({**BATCH, "optimizer": {"params": {}}}) == "optimizer.type: required, but missing"
    assert error({**BATCH, "optimizer": {"type": "Adam", "parms": {}}}) == (
        "optimizer.parms: unknown key 'parms' in 'optimizer' (did you mean 'params'?)"
    )
    assert error({**BATCH, "scheduler": {"type": "WarmupLR", "params": [1]}}) == (
        "scheduler.params: expected an object ({...}), got [1]"
    )
    assert error({**BATCH, "optimizer": "Adam"}) == (
        'optimizer: expected an object ({...}), got "Adam"'
    )


def test_raw_is_the_config_as_given():
    given = {"train_micro_batch_size_per_gpu": 2, "bfloat16": {"enabled": True}}
    cfg = load_config(given, world_size=2)
    assert cfg.raw == given
    assert cfg.world_size == 2


# -- unknown keys and types -------------------------------------------------------------


def test_unknown_top_level_key_suggests_the_closest():
    assert error({**BATCH, "gradient_cliping": 1.0}) == (
        "gradient_cliping: unknown key 'gradient_cliping' at the top level "
        "(did you mean 'gradient_clipping'?)"
    )
    assert "did you mean 'flops_profiler'" in error({**BATCH, "flops_profilr": {}})
    assert "did you mean 'bf16'" in error({**BATCH, "bf61": {}})


def test_unknown_key_without_a_close_match_lists_the_valid_keys():
    message = error({**BATCH, "fp16": {"zzz": 1}})
    assert message.startswith("fp16.zzz: unknown key 'zzz' in 'fp16'; valid keys: ")
    assert "initial_scale_power" in message and "did you mean" not in message


def test_unknown_nested_key_suggests_the_closest():
    assert error({**BATCH, "fp16": {"enabled": True, "initial_scale_powr": 8}}) == (
        "fp16.initial_scale_powr: unknown key 'initial_scale_powr' in 'fp16' "
        "(did you mean 'initial_scale_power'?)"
    )
    assert error({**BATCH, "bf16": {"enable": True}}) == (
        "bf16.enable: unknown key 'enable' in 'bf16' (did you mean 'enabled'?)"
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"fp16": {"enabled": 1}}, "fp16.enabled: expected true or false, got 1"),
        ({"fp16": {"enabled": "true"}}, 'fp16.enabled: expected true or false, got "true"'),
        ({"fp16": {"loss_scale": -1}}, "fp16.loss_scale: expected a number >= 0, got -1"),
        (
            {"fp16": {"initial_scale_power": 2.5}},
            "fp16.initial_scale_power: expected an integer >= 0, got 2.5",
        ),
        (
            {"fp16": {"loss_scale_window": 0}},
            "fp16.loss_scale_window: expected an integer >= 1, got 0",
        ),
        ({"fp16": {"hysteresis": True}}, "fp16.hysteresis: expected an integer >= 1, got true"),
        ({"fp16": {"min_loss_scale": 0}}, "fp16.min_loss_scale: expected a number > 0, got 0"),
        ({"fp16": True}, "fp16: expected an object ({...}), got true"),
        ({"gradient_clipping": -0.5}, "gradient_clipping: expected a number >= 0, got -0.5"),
        ({"gradient_clipping": "1.0"}, 'gradient_clipping: expected a number >= 0, got "1.0"'),
        (
            {"gradient_predivide_factor": 0},
            "gradient_predivide_factor: expected a number > 0, got 0",
        ),
        ({"prescale_gradients": None}, "prescale_gradients: expected true or false, got null"),
        ({"steps_per_print": 0}, "steps_per_print: expected an integer >= 1, got 0"),
        (
            {"wall_clock_breakdown": "yes"},
            'wall_clock_breakdown: expected true or false, got "yes"',
        ),
        (
            {"communication_data_type": "float16"},
            'communication_data_type: expected one of "fp32", "fp16", "bf16" or null, '
            'got "float16"',
        ),
        (
            {"gradient_clipping": "auto"},
            "gradient_clipping: expected a number >= 0, got \"auto\" ('auto' is a placeholder "
            "that the HuggingFace Trainer fills in; zero-core needs the actual value)",
        ),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else "",
)
def test_wrong_type_or_range_names_key_value_and_expectation(config, message):
    assert error({**BATCH, **config}) == message


def test_non_finite_numbers_are_refused():
    assert error({**BATCH, "gradient_clipping": float("inf")}) == (
        "gradient_clipping: expected a number >= 0, got Infinity"
    )


def test_non_string_key():
    assert error({**BATCH, 3: 1}) == "the config: keys must be strings, got 3"


# -- aliases ----------------------------------------------------------------------------


def test_bfloat16_is_an_alias_of_bf16():
    cfg = load({"bfloat16": {"enabled": True}})
    assert cfg.bf16.enabled is True
    assert "bf16" in cfg.to_dict() and "bfloat16" not in cfg.to_dict()


def test_alias_and_canonical_name_together_are_an_error():
    assert error({**BATCH, "bf16": {"enabled": True}, "bfloat16": {"enabled": True}}) == (
        "bfloat16: 'bf16' and 'bfloat16' are the same setting; give only 'bf16'"
    )


# -- precision modes --------------------------------------------------------------------


def test_fp16_and_bf16_exclude_each_other():
    assert error({**BATCH, "fp16": {"enabled": True}, "bf16": {"enabled": True}}) == (
        "fp16.enabled, bf16.enabled: fp16 and bf16 training exclude each other; enable one of them"
    )


def test_disabled_blocks_do_not_conflict():
    cfg = load({"fp16": {"enabled": False, "loss_scale": 8}, "bf16": {"enabled": True}})
    assert cfg.bf16.enabled and not cfg.fp16.enabled and cfg.fp16.loss_scale == 8.0


@pytest.mark.parametrize("mode", ["fp16", "bf16"])
def test_amp_excludes_fp16_and_bf16(mode):
    config = {**BATCH, "amp": {"enabled": True, "opt_level": "O1"}, mode: {"enabled": True}}
    assert error(config) == (
        f"amp.enabled, {mode}.enabled: Apex AMP and {mode} training exclude each other; "
        f"enable one of them"
    )


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_amp_excludes_zero(stage):
    config = {**BATCH, "amp": {"enabled": True}, "zero_optimization": {"stage": stage}}
    assert error(config) == (
        f"amp.enabled, zero_optimization.stage: Apex AMP does not work with ZeRO (stage "
        f"{stage}); use fp16 or bf16 instead of amp, or stage 0"
    )


def test_amp_disabled_is_accepted_with_any_apex_keys():
    cfg = load({"amp": {"enabled": False, "opt_level": "O2"}, "zero_optimization": {"stage": 2}})
    assert cfg.zero_optimization.stage == 2
    assert "amp" not in cfg.to_dict()


def test_amp_block_types():
    assert error({**BATCH, "amp": {"enabled": "yes"}}) == (
        'amp.enabled: expected true or false, got "yes"'
    )
    assert error({**BATCH, "amp": []}) == "amp: expected an object ({...}), got []"


# -- not implemented --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"amp": {"enabled": True, "opt_level": "O1"}},
            'amp.enabled: Apex AMP is not implemented by zero-core; use "fp16" or "bf16" (or '
            "torch.autocast in the model)",
        ),
        (
            {"sparse_gradients": True},
            "sparse_gradients: sparse gradient reduction is not implemented by zero-core; "
            "remove it or set it to false",
        ),
        (
            {"fp16": {"enabled": True, "fp16_master_weights_and_grads": True}},
            "fp16.fp16_master_weights_and_grads: fp16 master weights are not implemented by "
            "zero-core (master weights are fp32); remove it or set it to false",
        ),
    ],
    ids=["amp", "sparse_gradients", "fp16_master_weights_and_grads"],
)
def test_unimplemented_top_level_features_are_refused(config, message):
    assert error({**BATCH, **config}, exc=NotImplementedError) == message


def test_switched_off_features_are_accepted():
    cfg = load({"sparse_gradients": False, "fp16": {"fp16_master_weights_and_grads": False}})
    assert cfg.sparse_gradients is False


def test_config_errors_come_before_refusals():
    # sparse_gradients would be refused, but the typo is reported first
    config = {**BATCH, "sparse_gradients": True, "zero_optimization": {"stgae": 1}}
    assert "did you mean 'stage'" in error(config)


# -- loading ----------------------------------------------------------------------------


def test_none_is_an_empty_config_which_needs_a_batch_size():
    with pytest.raises(ConfigError, match=r"^train_batch_size: set train_batch_size or"):
        load_config(None, world_size=1)


def test_load_from_a_json_file(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_batch_size": 16, "zero_optimization": {"stage": 2}}))
    for source in (path, str(path)):
        cfg = load_config(source, world_size=2)
        assert (cfg.train_batch_size, cfg.train_micro_batch_size_per_gpu) == (16, 8)
        assert cfg.zero_optimization.stage == 2
        assert cfg.raw == {"train_batch_size": 16, "zero_optimization": {"stage": 2}}


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    assert error(str(path)) == f"config file {str(path)!r} does not exist"
    assert "looks like JSON text" in error('{"train_batch_size": 8}')


def test_directory_is_not_a_config(tmp_path):
    assert error(str(tmp_path)).startswith(f"config file {str(tmp_path)!r} cannot be read: ")


def test_invalid_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "train_batch_size": 8,\n  "fp16": {"enabled": tru}\n}\n')
    assert error(path) == (
        f"config file {str(path)!r} is not valid JSON: Expecting value at line 3, column 23"
    )


def test_json_file_with_a_repeated_key(tmp_path):
    path = tmp_path / "dup.json"
    path.write_text('{"train_batch_size": 8, "train_batch_size": 16}')
    assert (
        error(path)
        == f"config file {str(path)!r} gives the key 'train_batch_size' twice in one object"
    )


def test_json_file_holding_a_list(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    assert error(path) == f"config file {str(path)!r} must hold a JSON object ({{...}}), not list"


def test_config_of_another_type():
    assert error([1]) == "config: expected a dict, the path of a JSON file or None, got list"


@pytest.mark.parametrize("world_size", [0, -1, True, 1.0])
def test_world_size_must_be_a_positive_int(world_size):
    with pytest.raises(ValueError, match=re.escape(f"got {world_size!r}")):
        load_config(BATCH, world_size=world_size)


def test_world_size_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert load_config({"train_micro_batch_size_per_gpu": 2}).train_batch_size == 8
    monkeypatch.delenv("WORLD_SIZE")
    assert load_config({"train_micro_batch_size_per_gpu": 2}).world_size == 1


# -- round trip -------------------------------------------------------------------------

FULL = {
    "train_batch_size": 32,
    "gradient_accumulation_steps": 2,
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "betas": [0.9, 0.95]}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 5}},
    "fp16": {"enabled": True, "loss_scale_window": 100, "hysteresis": 3},
    "gradient_clipping": 1.0,
    "prescale_gradients": True,
    "gradient_predivide_factor": 2.0,
    "communication_data_type": "fp32",
    "zero_optimization": {
        "stage": 3,
        "reduce_bucket_size": 5e7,
        "stage3_prefetch_bucket_size": 1e7,
        "stage3_gather_fp16_weights_on_model_save": True,
        "offload_param": {"device": "none"},
    },
    "steps_per_print": 5,
    "wall_clock_breakdown": True,
    "flops_profiler": {"enabled": True, "profile_step": 3},
    "aio": {"thread_count": 4, "overlap_events": "false"},
    "checkpoint": {"tag_validation": "ignore", "parallel_write": {"pipeline_stage": True}},
    "tensorboard": {"enabled": True, "output_path": "logs"},
    "elasticity": {"enabled": False, "max_train_batch_size": 64},
}


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_to_dict_round_trip(world_size):
    cfg = load_config(FULL, world_size=world_size)
    plain = cfg.to_dict()
    assert json.loads(json.dumps(plain)) == plain
    again = load_config(plain, world_size=world_size)
    assert again == cfg
    assert again.to_dict() == plain


def test_to_dict_is_resolved_with_canonical_names():
    plain = load_config(FULL, world_size=2).to_dict()
    assert plain["train_micro_batch_size_per_gpu"] == 8
    assert plain["communication_data_type"] == "fp32"
    zero = plain["zero_optimization"]
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert "stage3_gather_fp16_weights_on_model_save" not in zero
    assert zero["reduce_bucket_size"] == 50_000_000
    assert isinstance(zero["reduce_bucket_size"], int)
    assert zero["overlap_comm"] is True
    assert zero["offload_param"] is None
    assert plain["aio"] == {"intra_op_parallelism": 4, "overlap_events": False}
    assert plain["checkpoint"] == {
        "tag_validation": "Ignore",
        "parallel_write": {"pipeline_stage": True},
    }
    assert plain["elasticity"] == {"enabled": False, "max_train_batch_size": 64}
    assert plain["fp16"]["initial_scale_power"] == 16


def test_to_dict_of_a_minimal_config_omits_absent_blocks():
    plain = load().to_dict()
    assert "optimizer" not in plain and "scheduler" not in plain
    assert set(plain) == {
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "fp16",
        "bf16",
        "gradient_clipping",
        "prescale_gradients",
        "gradient_predivide_factor",
        "communication_data_type",
        "sparse_gradients",
        "zero_optimization",
        "steps_per_print",
        "wall_clock_breakdown",
        "dump_state",
        "dataloader_drop_last",
        "zero_allow_untested_optimizer",
        "zero_force_ds_cpu_optimizer",
    }


def test_equality_ignores_raw():
    a = load_config({"train_batch_size": 4}, world_size=1)
    b = load_config({"train_micro_batch_size_per_gpu": 4}, world_size=1)
    assert a.raw != b.raw
    assert a == b

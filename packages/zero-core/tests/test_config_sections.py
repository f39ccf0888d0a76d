"""Sections other packages act on (checked, handed on) and unimplemented ones (refused)."""

from __future__ import annotations

import pytest

from zero_core.config import ConfigError, load_config


def sections(extra: dict) -> dict:
    return load_config({"train_batch_size": 2, **extra}, world_size=1).sections


def error(extra: dict, exc: type[Exception] = ConfigError) -> str:
    with pytest.raises(exc) as info:
        sections(extra)
    return str(info.value)


FULL_SECTIONS = {
    "flops_profiler": {
        "enabled": True,
        "profile_step": 2,
        "module_depth": -1,
        "top_modules": 3,
        "detailed": False,
        "output_file": None,
    },
    "comms_logger": {
        "enabled": True,
        "verbose": False,
        "prof_all": False,
        "debug": True,
        "prof_ops": ["all_reduce", "all_gather"],
    },
    "tensorboard": {"enabled": True, "output_path": "out/", "job_name": "bert"},
    "csv_monitor": {"enabled": True, "output_path": None, "job_name": "bert"},
    "wandb": {"enabled": True, "group": "g", "team": "t", "project": "p"},
    "comet": {
        "enabled": True,
        "workspace": "w",
        "project": "p",
        "samples_log_interval": 50,
        "experiment_name": "e",
        "api_key": None,
        "experiment_key": "0c4a1c4a90664f2a8084e600b19a9d7",
        "online": False,
        "mode": "get",
    },
    "aio": {
        "block_size": 1048576,
        "queue_depth": 8,
        "intra_op_parallelism": 1,
        "single_submit": False,
        "overlap_events": True,
    },
    "activation_checkpointing": {
        "partition_activations": False,
        "cpu_checkpointing": False,
        "contiguous_memory_optimization": False,
        "number_checkpoints": None,
        "synchronize_checkpoint_boundary": False,
        "profile": True,
    },
    "checkpoint": {
        "tag_validation": "Warn",
        "load_universal": False,
        "use_node_local_storage": True,
        "parallel_write": {"pipeline_stage": False},
    },
    "data_types": {"grad_accum_dtype": "fp32"},
}


def test_owned_sections_are_handed_on_as_given():
    assert sections(FULL_SECTIONS) == FULL_SECTIONS


def test_only_given_keys_are_handed_on():
    assert sections({"wandb": {"enabled": True}, "flops_profiler": {}}) == {
        "wandb": {"enabled": True},
        "flops_profiler": {},
    }


def test_sparse_attention_is_checked_and_handed_on_to_the_model():
    """DeepSpeed models build their attention from this block (zero-moe's
    ``sparsity_config_from_dict``); the engine accepts it instead of refusing the config."""
    block = {"mode": "fixed", "block": 16, "num_local_blocks": 4}
    assert sections({"sparse_attention": block}) == {"sparse_attention": block}
    cfg = load_config({"train_batch_size": 2, "sparse_attention": block}, world_size=1)
    assert cfg.sections["sparse_attention"] == block


def test_null_section_is_absent():
    assert sections({"tensorboard": None}) == {}


def test_nested_block_is_filled_with_its_defaults():
    assert sections({"checkpoint": {"parallel_write": {}}}) == {
        "checkpoint": {"parallel_write": {"pipeline_stage": False}}
    }


def test_aio_aliases_and_tuner_strings():
    # DeepSpeed's NVMe tuner writes booleans as strings; the reference documents thread_count
    got = sections({"aio": {"thread_count": 8, "single_submit": "false", "overlap_events": "True"}})
    assert got == {
        "aio": {"intra_op_parallelism": 8, "single_submit": False, "overlap_events": True}
    }
    assert sections({"aio": {"backend": "io_uring", "block_size": 4.194304e6}}) == {
        "aio": {"backend": "io_uring", "block_size": 4194304}
    }


def test_checkpoint_tag_validation_any_case():
    assert sections({"checkpoint": {"tag_validation": "FAIL"}}) == {
        "checkpoint": {"tag_validation": "Fail"}
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"flops_profiler": {"enabled": True, "profile_steps": 3}},
            "flops_profiler.profile_steps: unknown key 'profile_steps' in 'flops_profiler' "
            "(did you mean 'profile_step'?)",
        ),
        (
            {"comms_logger": {"prof_ops": "all_reduce"}},
            'comms_logger.prof_ops: expected a list of strings, got "all_reduce"',
        ),
        (
            {"comms_logger": {"prof_ops": ["all_reduce", 3]}},
            "comms_logger.prof_ops[1]: expected a string, got 3",
        ),
        (
            {"tensorboard": {"enabled": True, "output": "x"}},
            "tensorboard.output: unknown key 'output' in 'tensorboard' (did you mean "
            "'output_path'?)",
        ),
        ({"wandb": {"project": 3}}, "wandb.project: expected a string, got 3"),
        (
            {"comet": {"mode": "replace"}},
            'comet.mode: expected one of "get", "create", "get_or_create" or null, got "replace"',
        ),
        (
            {"comet": {"samples_log_interval": 0}},
            "comet.samples_log_interval: expected an integer >= 1, got 0",
        ),
        (
            {"aio": {"single_submit": "no"}},
            'aio.single_submit: expected true or false (or "true"/"false"), got "no"',
        ),
        ({"aio": {"queue_depth": 0}}, "aio.queue_depth: expected an integer >= 1, got 0"),
        (
            {"aio": {"thread_count": 2, "intra_op_parallelism": 2}},
            "aio.intra_op_parallelism: 'thread_count' and 'intra_op_parallelism' are the same "
            "setting; give only 'intra_op_parallelism'",
        ),
        (
            {"activation_checkpointing": {"number_checkpoints": 0}},
            "activation_checkpointing.number_checkpoints: expected an integer >= 1 or null, got 0",
        ),
        (
            {"checkpoint": {"tag_validation": "Error"}},
            'checkpoint.tag_validation: expected one of "Ignore", "Warn", "Fail" (any case), '
            'got "Error"',
        ),
        (
            {"checkpoint": {"parallel_write": {"pipeline": True}}},
            "checkpoint.parallel_write.pipeline: unknown key 'pipeline' in "
            "'checkpoint.parallel_write' (did you mean 'pipeline_stage'?)",
        ),
        (
            {"data_types": {"grad_accum_dtype": "fp8"}},
            'data_types.grad_accum_dtype: expected one of "fp32", "fp16", "bf16" or null, '
            'got "fp8"',
        ),
        ({"csv_monitor": []}, "csv_monitor: expected an object ({...}), got []"),
    ],
)
def test_section_errors(extra, message):
    assert error(extra) == message


# -- unimplemented features -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "block", "message"),
    [
        (
            "autotuning",
            {"enabled": True, "fast": False},
            "autotuning: autotuning is enabled but is not implemented by zero-core; remove the "
            "'autotuning' section",
        ),
        (
            "elasticity",
            {"enabled": True, "max_train_batch_size": 2000, "micro_batch_sizes": [2, 4]},
            "elasticity: elastic training is enabled but is not implemented by zero-core; "
            "remove the 'elasticity' section",
        ),
        (
            "curriculum_learning",
            {"enabled": True, "curriculum_type": "seqlen", "min_difficulty": 8},
            "curriculum_learning: curriculum learning is enabled but is not implemented by "
            "zero-core; remove the 'curriculum_learning' section",
        ),
        (
            "data_efficiency",
            {"enabled": True, "seed": 1},
            "data_efficiency: the data efficiency library is enabled but is not implemented by "
            "zero-core; remove the 'data_efficiency' section",
        ),
        (
            "compression_training",
            {"weight_quantization": {"shared_parameters": {"enabled": True}}},
            "compression_training: compression training is enabled but is not implemented by "
            "zero-core; remove the 'compression_training' section",
        ),
        (
            "compression_training",
            {"layer_reduction": {"enabled": True, "keep_number_layer": 5}},
            "compression_training: compression training is enabled but is not implemented by "
            "zero-core; remove the 'compression_training' section",
        ),
        (
            "eigenvalue",
            {"enabled": True, "max_iter": 100},
            "eigenvalue: eigenvalue computation is enabled but is not implemented by zero-core; "
            "remove the 'eigenvalue' section",
        ),
        (
            "progressive_layer_drop",
            {"enabled": True, "theta": 0.5},
            "progressive_layer_drop: progressive layer drop is enabled but is not implemented "
            "by zero-core; remove the 'progressive_layer_drop' section",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and " " not in v else None,
)
def test_unimplemented_sections_are_refused(name, block, message):
    assert error({name: block}, NotImplementedError) == message


@pytest.mark.parametrize(
    ("name", "block"),
    [
        ("autotuning", {"enabled": False, "metric": "latency"}),
        ("elasticity", {"enabled": False, "version": 0.1}),
        ("curriculum_learning", {"enabled": False}),
        ("data_efficiency", {"enabled": False, "data_sampling": {"enabled": True}}),
        (
            "compression_training",
            {
                "weight_quantization": {"shared_parameters": {"enabled": False}},
                "sparse_pruning": {"shared_parameters": {"enabled": False}},
            },
        ),
        ("hybrid_engine", {"enabled": False, "max_out_tokens": 512}),
        ("nebula", {"enabled": False}),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_unimplemented_sections_switched_off_are_accepted(name, block):
    assert sections({name: block}) == {name: block}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"elasticity": {"enabled": True, "max_gpu": 8}},
            "elasticity.max_gpu: unknown key 'max_gpu' in 'elasticity' (did you mean 'max_gpus'?)",
        ),
        (
            {"sparse_attention": {"mode": "sparse"}},
            'sparse_attention.mode: expected one of "dense", "fixed", "bigbird", "bslongformer", '
            '"variable", got "sparse"',
        ),
        (
            {"compression_training": {"row_prunning": {}}},
            "compression_training.row_prunning: unknown key 'row_prunning' in "
            "'compression_training' (did you mean 'row_pruning'?)",
        ),
        (
            {"autotuning": {"enabled": "no"}},
            'autotuning.enabled: expected true or false, got "no"',
        ),
        ({"eigenvalue": {"enabled": 1}}, "eigenvalue.enabled: expected true or false, got 1"),
        ({"nebula": True}, "nebula: expected an object ({...}), got true"),
    ],
)
def test_refused_sections_are_checked_before_refusal(extra, message):
    assert error(extra) == message

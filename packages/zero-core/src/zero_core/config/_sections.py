"""The config sections zero-core does not act on itself.

Two kinds:

* sections owned by another package (the profiler, monitors, asynchronous I/O, activation
  checkpointing, checkpoint and data-type options): their keys and value types are checked
  here, so a typo fails at load time, and they are handed on as plain dicts holding the keys
  given (under their canonical names); the owner applies its defaults;
* sections of DeepSpeed features zero-core does not implement (autotuning, elasticity,
  compression, data efficiency, curriculum learning, sparse attention, ...): checked the
  same way, accepted while switched off, refused with NotImplementedError when on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import _aio
from ._errors import ConfigError, show
from ._schema import canonical_choice, option, parse_fields, to_plain

__all__ = ["SECTIONS", "Section", "parse_sections", "refuse_sections"]


@dataclass(frozen=True, kw_only=True)
class FlopsProfilerSection:
    """``"flops_profiler"`` (owned by zero-profiler)."""

    enabled: bool = False
    """Profile one training step."""
    profile_step: int = option(1, ge=0)
    """The global step to profile."""
    module_depth: int = option(-1, ge=-1)
    """Deepest module level in the report; -1 for all."""
    top_modules: int = option(1, ge=1)
    """Modules per depth in the aggregated report."""
    detailed: bool = True
    """Print the per-module tree."""
    output_file: str | None = None
    """Write the report here instead of stdout."""


@dataclass(frozen=True, kw_only=True)
class CommsLoggerSection:
    """``"comms_logger"`` (owned by zero-profiler)."""

    enabled: bool = False
    """Time the collectives."""
    verbose: bool = False
    """Print every operation."""
    prof_all: bool = True
    """Profile every collective (false: only ``prof_ops``)."""
    debug: bool = False
    """Append the caller's name to each operation's log name."""
    prof_ops: list[str] = field(default_factory=list)
    """Collectives to profile when ``prof_all`` is false."""


@dataclass(frozen=True, kw_only=True)
class FileMonitorSection:
    """``"tensorboard"`` and ``"csv_monitor"`` (owned by zero-profiler)."""

    enabled: bool = False
    """Write the training events."""
    output_path: str | None = None
    """Directory for the logs; null: the launch directory."""
    job_name: str = "DeepSpeedJobName"
    """Subdirectory of ``output_path`` for this job."""


@dataclass(frozen=True, kw_only=True)
class WandbSection:
    """``"wandb"`` (owned by zero-profiler)."""

    enabled: bool = False
    """Log the training events to Weights & Biases."""
    group: str | None = None
    """W&B group."""
    team: str | None = None
    """W&B team."""
    project: str = "deepspeed"
    """W&B project."""


@dataclass(frozen=True, kw_only=True)
class CometSection:
    """``"comet"`` (owned by zero-profiler)."""

    enabled: bool = False
    """Log the training events to Comet."""
    workspace: str | None = None
    """Comet workspace."""
    project: str | None = None
    """Comet project."""
    samples_log_interval: int = option(100, ge=1)
    """Samples between two submissions of the same metric."""
    experiment_name: str | None = None
    """Name of the experiment."""
    api_key: str | None = None
    """Comet API key."""
    experiment_key: str | None = None
    """Key of the experiment to log to."""
    online: bool | None = None
    """Log to the server (true) or offline (false); null: Comet's default."""
    mode: str | None = option(None, choices=("get", "create", "get_or_create", None))
    """How the experiment is started."""


@dataclass(frozen=True, kw_only=True)
class AioSection:
    """``"aio"`` (owned by zero-aio). ``thread_count`` is accepted for
    ``intra_op_parallelism``, and ``"true"``/``"false"`` strings (as DeepSpeed's NVMe tuner
    writes them) for the booleans."""

    block_size: int = option(1_048_576, ge=1)
    """I/O request size in bytes."""
    queue_depth: int = option(8, ge=1)
    """Requests in flight."""
    intra_op_parallelism: int = option(1, ge=1, aliases=("thread_count",))
    """Threads serving each read or write."""
    single_submit: bool = option(False, bool_strings=True)
    """Submit requests one by one rather than as a batch."""
    overlap_events: bool = option(True, bool_strings=True)
    """Submit new requests before earlier ones complete."""
    backend: str | None = None
    """zerospeed's own key (written by zero-nvme-tune): the zero-aio I/O backend."""


@dataclass(frozen=True, kw_only=True)
class ActivationCheckpointingSection:
    """``"activation_checkpointing"``."""

    partition_activations: bool = False
    """Partition checkpointed activations across model-parallel ranks."""
    cpu_checkpointing: bool = False
    """Move partitioned activations to the CPU."""
    contiguous_memory_optimization: bool = False
    """Copy partitioned activations into a contiguous buffer."""
    number_checkpoints: int | None = option(None, ge=1)
    """Checkpoints per step, to size the contiguous buffer."""
    synchronize_checkpoint_boundary: bool = False
    """Synchronize the device at each checkpoint boundary."""
    profile: bool = False
    """Time each checkpointed function's forward and its recomputation."""


@dataclass(frozen=True, kw_only=True)
class ParallelWriteSection:
    """``"checkpoint.parallel_write"``."""

    pipeline_stage: bool = False
    """Write checkpoints in parallel across pipeline stages."""


_TAG_VALIDATION = ("Ignore", "Warn", "Fail")
_WRITERS = ("auto", "torch", "zero_aio")


def _writer(value: str) -> str:
    name = canonical_choice(_WRITERS)(value)
    if name == "zero_aio" and not _aio.installed():
        raise ConfigError(
            f"checkpoint.writer: 'zero_aio' asks for zero-aio, which is not installed: "
            f'{_aio.INSTALL} (or use "auto" to fall back to torch.save)'
        )
    return name


@dataclass(frozen=True, kw_only=True)
class CheckpointSection:
    """``"checkpoint"``."""

    tag_validation: str = option(
        "Warn", choices=_TAG_VALIDATION, casefold=True, convert=canonical_choice(_TAG_VALIDATION)
    )
    """What to do when ranks load checkpoints with different tags."""
    load_universal: bool = False
    """Load a universal (world-size independent) checkpoint."""
    use_node_local_storage: bool = False
    """Save and load by local rank, for storage not shared between nodes."""
    parallel_write: ParallelWriteSection = field(default_factory=ParallelWriteSection)
    """Parallel checkpoint writing."""
    writer: str = option("auto", choices=_WRITERS, casefold=True, convert=_writer)
    """zerospeed's own key: who writes the tensors: ``"zero_aio"`` (zero-aio's checksummed
    files at device speed), ``"torch"`` (``torch.save``), ``"auto"`` (zero-aio if installed)."""


@dataclass(frozen=True, kw_only=True)
class DataTypesSection:
    """``"data_types"``."""

    grad_accum_dtype: str | None = option(None, choices=("fp32", "fp16", "bf16", None))
    """Data type gradients are accumulated in; null: the model's."""


@dataclass(frozen=True, kw_only=True)
class AutotuningSection:
    """``"autotuning"`` (not implemented: refused when enabled)."""

    enabled: bool = False
    """Run the autotuner."""
    results_dir: str = "autotuning_results"
    """Directory for the results."""
    exps_dir: str = "autotuning_exps"
    """Directory for the experiment descriptions."""
    overwrite: bool = False
    """Rerun experiments whose results exist."""
    metric: str = option("throughput", choices=("latency", "throughput", "flops"), casefold=True)
    """What to optimize."""
    start_profile_step: int = option(3, ge=0)
    """First profiled step of an experiment."""
    end_profile_step: int = option(5, ge=0)
    """Last profiled step of an experiment."""
    fast: bool = True
    """Tune only the ZeRO stage and micro-batch size."""
    max_train_batch_size: int | None = option(None, ge=1)
    """Largest global batch size tried."""
    mp_size: int = option(1, ge=1)
    """Model-parallel degree."""
    num_tuning_micro_batch_sizes: int = option(3, ge=1)
    """Micro-batch sizes explored."""
    tuner_type: str = option("model_based", choices=("gridsearch", "random", "model_based"))
    """Order in which the tuning space is explored."""
    tuner_early_stopping: int = option(5, ge=1)
    """Experiments without improvement before stopping."""
    tuner_num_trials: int = option(50, ge=1)
    """Most experiments per ZeRO stage."""
    arg_mappings: dict[str, Any] | None = None
    """Maps config keys to the training script's arguments."""


@dataclass(frozen=True, kw_only=True)
class ElasticitySection:
    """``"elasticity"`` (not implemented: refused when enabled)."""

    enabled: bool = False
    """Compute the global batch size for elastic training."""
    max_train_batch_size: int = option(2000, ge=1)
    """Largest acceptable global batch size."""
    micro_batch_sizes: list[int] = field(default_factory=lambda: [2, 4, 6])
    """Acceptable micro-batch sizes."""
    min_gpus: int = option(1, ge=1)
    """Fewest GPUs searched."""
    max_gpus: int = option(10000, ge=1)
    """Most GPUs searched."""
    min_time: int = option(0, ge=0)
    """Minutes before the scheduler scales again (v0.1)."""
    prefer_large_batch: bool = True
    """Prefer the batch size closest to ``max_train_batch_size``."""
    version: float = 0.2
    """Elastic logic version."""
    ignore_non_elastic_batch_info: bool = False
    """Ignore batch sizes given outside this block."""
    num_gpus_per_node: int = option(1, ge=1)
    """GPUs per node (v0.2)."""
    model_parallel_size: int = option(1, ge=1)
    """Model-parallel size (v0.2)."""


@dataclass(frozen=True, kw_only=True)
class CurriculumLearningSection:
    """``"curriculum_learning"`` (legacy; not implemented: refused when enabled)."""

    enabled: bool = False
    """Train on a curriculum."""
    curriculum_type: str | None = None
    """Difficulty metric (``"seqlen"``)."""
    min_difficulty: int | None = None
    """Starting difficulty."""
    max_difficulty: int | None = None
    """Final difficulty."""
    schedule_type: str | None = None
    """Pacing function."""
    schedule_config: dict[str, Any] | None = None
    """Pacing function parameters."""


@dataclass(frozen=True, kw_only=True)
class DataEfficiencySection:
    """``"data_efficiency"`` (not implemented: refused when enabled)."""

    enabled: bool = False
    """Turn the data efficiency library on."""
    seed: int = 1234
    """Seed for data sampling."""
    data_routing: dict[str, Any] | None = None
    """Data routing (random-LTD)."""
    data_sampling: dict[str, Any] | None = None
    """Data sampling (curriculum learning)."""


@dataclass(frozen=True, kw_only=True)
class CompressionTrainingSection:
    """``"compression_training"`` (not implemented: refused when any technique is enabled)."""

    layer_reduction: dict[str, Any] | None = None
    """Layer reduction."""
    weight_quantization: dict[str, Any] | None = None
    """Weight quantization."""
    activation_quantization: dict[str, Any] | None = None
    """Activation quantization."""
    sparse_pruning: dict[str, Any] | None = None
    """Sparse pruning."""
    row_pruning: dict[str, Any] | None = None
    """Row pruning."""
    head_pruning: dict[str, Any] | None = None
    """Head pruning."""
    channel_pruning: dict[str, Any] | None = None
    """Channel pruning."""


@dataclass(frozen=True, kw_only=True)
class SparseAttentionSection:
    """``"sparse_attention"`` (not implemented: refused when present)."""

    mode: str = option("fixed", choices=("dense", "fixed", "bigbird", "bslongformer", "variable"))
    """Sparsity structure."""
    block: int = option(16, ge=1)
    """Block size."""
    different_layout_per_head: bool = False
    """A different layout per head."""
    num_local_blocks: int = option(4, ge=0)
    """Blocks in a local window."""
    num_global_blocks: int = option(1, ge=0)
    """Global blocks per local window."""
    attention: str = option("bidirectional", choices=("unidirectional", "bidirectional"))
    """Attention direction."""
    horizontal_global_attention: bool = False
    """Global blocks also attend to all blocks."""
    num_different_global_patterns: int = option(4, ge=1)
    """Different global layouts across heads."""
    num_random_blocks: int = option(0, ge=0)
    """Random blocks per row."""
    local_window_blocks: list[int] = field(default_factory=lambda: [4])
    """Blocks in each local window."""
    global_block_indices: list[int] = field(default_factory=lambda: [0])
    """Global blocks."""
    global_block_end_indices: list[int] | None = None
    """Ends of the global windows."""
    num_sliding_window_blocks: int = option(3, ge=0)
    """Blocks in the sliding window."""


def _enabled(block: Mapping[str, Any]) -> bool:
    return block.get("enabled") is True


def _any_enabled(block: Any) -> bool:
    if isinstance(block, Mapping):
        return _enabled(block) or any(_any_enabled(v) for v in block.values())
    if isinstance(block, list):
        return any(_any_enabled(v) for v in block)
    return False


@dataclass(frozen=True)
class Section:
    """A top-level config section zero-core hands on or refuses."""

    schema: type | None
    """Its dataclass; None for DeepSpeed sections whose keys zero-core does not list (only
    ``enabled`` is checked)."""
    owner: str
    """Who acts on it, for the summary table (``"zero-profiler"``) or ``"refused"``."""
    refuse_if: Callable[[Mapping[str, Any]], bool] | None = None
    """For unimplemented features: whether the given block turns the feature on."""
    feature: str = ""
    """The feature's name, for the NotImplementedError message."""


def _refused(schema: type | None, feature: str, when=_enabled) -> Section:
    return Section(schema, "refused", when, feature)


SECTIONS: dict[str, Section] = {
    "flops_profiler": Section(FlopsProfilerSection, "zero-profiler"),
    "comms_logger": Section(CommsLoggerSection, "zero-profiler"),
    "tensorboard": Section(FileMonitorSection, "zero-profiler"),
    "csv_monitor": Section(FileMonitorSection, "zero-profiler"),
    "wandb": Section(WandbSection, "zero-profiler"),
    "comet": Section(CometSection, "zero-profiler"),
    "aio": Section(AioSection, "zero-aio"),
    "activation_checkpointing": Section(ActivationCheckpointingSection, "the engine"),
    "checkpoint": Section(CheckpointSection, "the engine"),
    "data_types": Section(DataTypesSection, "the engine"),
    "autotuning": _refused(AutotuningSection, "autotuning"),
    "elasticity": _refused(ElasticitySection, "elastic training"),
    "curriculum_learning": _refused(CurriculumLearningSection, "curriculum learning"),
    "data_efficiency": _refused(DataEfficiencySection, "the data efficiency library"),
    "compression_training": _refused(
        CompressionTrainingSection, "compression training", _any_enabled
    ),
    # The model builds its attention from this block (zero-moe's sparsity_config_from_dict,
    # as DeepSpeed models read it); the engine only checks it.
    "sparse_attention": Section(SparseAttentionSection, "the model (zero-moe)"),
    # DeepSpeed sections outside the configuration reference: refused when enabled.
    "eigenvalue": _refused(None, "eigenvalue computation"),
    "progressive_layer_drop": _refused(None, "progressive layer drop"),
    "hybrid_engine": _refused(None, "the hybrid engine"),
    "nebula": _refused(None, "Nebula checkpointing"),
}
"""Every section zero-core hands on or refuses, by its top-level key."""


def parse_sections(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The sections present in ``config``, checked, keys given under their canonical names.

    Raises:
        ConfigError: an unknown key or a value of the wrong type inside a section.
    """
    sections = {}
    for name, value in config.items():
        section = SECTIONS.get(name)
        if section is None or value is None:
            continue
        if section.schema is None:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{name}: expected an object ({{...}}), got {show(value)}")
            if not isinstance(value.get("enabled", False), bool):
                raise ConfigError(
                    f"{name}.enabled: expected true or false, got {show(value['enabled'])}"
                )
            sections[name] = to_plain(dict(value))
        else:
            sections[name] = to_plain(parse_fields(section.schema, value, name))
    return sections


def refuse_sections(sections: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise for a section that turns on a feature zero-core does not implement.

    Raises:
        NotImplementedError: naming the section and the feature.
    """
    for name, block in sections.items():
        section = SECTIONS[name]
        if section.refuse_if is not None and section.refuse_if(block):
            raise NotImplementedError(
                f"{name}: {section.feature} is enabled but is not implemented by zero-core; "
                f"remove the {name!r} section"
            )

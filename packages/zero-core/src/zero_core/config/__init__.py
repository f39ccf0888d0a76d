"""zero-core's config layer: a DeepSpeed JSON config, parsed once into frozen dataclasses.

``load_config(config, world_size)`` checks every key and value, infers the batch-size
triangle and returns a :class:`ZeroCoreConfig`; nothing downstream indexes dicts.
A problem with the config is a :class:`ConfigError` (a ``ValueError``) whose message starts
with the key's dotted path; an unknown key names the closest valid one. A DeepSpeed feature
zero-core does not implement raises ``NotImplementedError`` when switched on: it is never
accepted and ignored.

=========================================  ===================================================
config                                     zero-core
=========================================  ===================================================
train_batch_size, train_micro_batch_size_  parsed; any one or two given, the rest inferred
per_gpu, gradient_accumulation_steps       and checked (``_batch``)
optimizer, scheduler                       ``type`` and ``params``; resolved by the registries
fp16 (all keys), bf16 / bfloat16           parsed; fp16 with bf16 is an error
gradient_clipping, prescale_gradients,     parsed
gradient_predivide_factor,
communication_data_type
zero_optimization: stage 0-3, buckets,     parsed with DeepSpeed's defaults and aliases;
overlap_comm, stage3_*, sub_group_size,    overlap_comm's default resolved by stage
round_robin_gradients, ...
steps_per_print, wall_clock_breakdown,     parsed
dump_state, dataloader_drop_last
flops_profiler, comms_logger,              checked, handed on as dicts in ``sections``
tensorboard, csv_monitor, wandb, comet,    (owners: zero-profiler, zero-aio, the engine)
aio, activation_checkpointing,
checkpoint, data_types
amp enabled                                error with fp16/bf16 or ZeRO stage > 0, else
                                           NotImplementedError
sparse_gradients true                      NotImplementedError
fp16.fp16_master_weights_and_grads true    NotImplementedError
zero_quantized_weights / _gradients /      NotImplementedError when true
_nontrainable_weights, elastic_checkpoint,
mics_hierarchical_params_gather
zero_hpz_partition_size > 1,               NotImplementedError
mics_shard_size > 0
autotuning, elasticity, data_efficiency,   checked; NotImplementedError when enabled
curriculum_learning, eigenvalue,
progressive_layer_drop, hybrid_engine,
nebula
compression_training                       checked; NotImplementedError when any technique
                                           is enabled
sparse_attention                           checked; NotImplementedError when present
=========================================  ===================================================
"""

from ._config import OptimizerBlock, SchedulerBlock, ZeroCoreConfig, load_config
from ._errors import ConfigError
from ._precision import BF16Config, FP16Config
from ._zero import OffloadOptimizerConfig, OffloadParamConfig, ZeroConfig

__all__ = [
    "BF16Config",
    "ConfigError",
    "FP16Config",
    "OffloadOptimizerConfig",
    "OffloadParamConfig",
    "OptimizerBlock",
    "SchedulerBlock",
    "ZeroConfig",
    "ZeroCoreConfig",
    "load_config",
]

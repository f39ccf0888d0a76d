"""Memory of the model states (weights, gradients, optimizer) per device, per node, on NVMe.

[Note: model-states formulas]
Write Ψ for the number of parameters, Nd for the data-parallel ranks (nodes x GPUs per
node) and p for the bytes of a compute weight (2 for fp16/bf16, 4 for fp32). The ZeRO paper
(Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models", SC'20, section 5.1) counts mixed-precision Adam as 2Ψ of 16-bit weights, 2Ψ of
16-bit gradients and KΨ of optimizer state, K = 12 (fp32 master weight, momentum,
variance), and divides by Nd whatever a stage partitions:

    stage 0: (2 + 2 + K)Ψ   stage 1: 2Ψ + 2Ψ + KΨ/Nd
    stage 2: 2Ψ + (2 + K)Ψ/Nd   stage 3: (2 + 2 + K)Ψ/Nd

The estimate counts what zero-core holds when the optimizer steps, the most model state it
holds at any one time (tests/test_estimate.py reads these bytes off running engines):

- weights: pΨ, or pΨ/Nd at stage 3 (the shard; a layer is gathered only while it runs).
- gradients: zero-core reduces and keeps gradients in fp32 (4 bytes), so the update reads
  them without a cast and accumulation over micro-steps does not round: 4Ψ at stage 0,
  4Ψ/Nd at stages 1-3. The full gradients backward produces are dropped bucket by bucket as
  they are reduced, so with one micro-step per optimizer step they never all coexist, at
  stage 1 either. With gradient accumulation at stages 0-1 the reduction waits for the last
  micro-step and the full gradients (pΨ) live through the window: the estimate adds them
  (an upper bound: in the last backward they are freed as the fp32 partition fills). Stages
  2-3 reduce every micro-step and keep no full gradient.
- optimizer: an fp32 master weight (4 bytes) and the optimizer's state (Adam: 8) per
  element, divided by Nd from stage 1 on.

Mixed-precision Adam thus takes 18Ψ at stage 0, 2Ψ + 16Ψ/Nd at stages 1 and 2, and 18Ψ/Nd
at stage 3: the paper's formulas with a 4-byte gradient where the paper has a 2-byte one,
and stage 1 freeing the full gradient as stage 2 does.

fp32 training, derived the same way with the master being the weight itself (K = 8):
16Ψ, 4Ψ + 4Ψ + 8Ψ/Nd, 4Ψ + 12Ψ/Nd, 16Ψ/Nd. zero-core does this at stage 0 (the
optimizer updates the parameters, as DDP does) and at stage 3 without offload (the
optimizer steps this rank's fp32 shard itself, as FSDP2 does). At stages 1-2, and at stage
3 with either offload, its optimizer steps an fp32 copy of this rank's shard (a standalone
tensor, padding included), so K = 12 there: 4Ψ + 16Ψ/Nd at stages 1-2 and 20Ψ/Nd at stage
3 with offload; the estimate counts that copy.

Stage 3 also needs a working set on the device: a layer's weights gathered whole to run it,
and its full gradient until that is reduced: 2p x the largest layer's parameters.

Offload (``zero_optimization.offload_optimizer`` / ``offload_param``) moves states off the
device as zero-core's offload does (see [Note: optimizer offload] in ``zero_core._offload``):
``offload_optimizer`` moves the fp32 masters and the optimizer state to CPU memory
(``"cpu"``, stages 1-3) or to NVMe (``"nvme"``, stage 3), and the fp32 gradient partition
(4Ψ/Nd) to CPU memory in both cases, as DeepSpeed does. With ``offload_ratio`` r < 1
(``offload_optimizer.ratio``) it moves ``ceil(r x Ψ/Nd)`` elements' worth of these and
the rest stay on the device; zero-core splits at a sub-group boundary (see [Note: partial
optimizer offload] in ``zero_core._offload``), so it moves up to one sub-group
(``sub_group_size`` elements) more than the estimate. ``offload_param`` (stage 3) moves
the weight shards, as DeepSpeed does. A node holds what its GPUs' ranks offload. Before
training, each process of a node builds the model on CPU in fp32 (4Ψ), or, under
``zero_core.Init`` at stage 3, one layer at a time (4 x the largest layer); the node's CPU
need is the larger of that and the offloaded state.

Left out: activations (they depend on batch, sequence length and checkpointing), the
communication buckets (``reduce_bucket_size`` elements in fp32 staging, the all-gather
buckets, the stage-3 prefetch), the allocator's fragmentation, per-tensor scalars (Adam's
step counts), stage 3's persistent small parameters (``stage3_param_persistence_threshold``
keeps those whole on every rank), offload's sub-group and pinned swap buffers
(``sub_group_size``), and padding: each tensor
is padded to a multiple of Nd, up to Nd - 1 elements per tensor per partitioned state,
while the estimate counts ``ceil(Ψ / Nd)`` per rank. The DeepSpeed-named functions'
``additional_buffer_factor`` is a rough allowance for these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from ._common import DEVICES, Device, Precision, check_choice, check_whole, make_job

__all__ = ["ModelStatesEstimate", "estimate_model_states"]

#: bytes per element of an fp32 master weight, and of the fp32 gradient partition
_FP32 = 4


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelStatesEstimate:
    """Bytes of model states for one configuration (see [Note: model-states formulas]).

    Per-device fields are one rank's; ``*_per_node`` fields add up a node's ranks.
    """

    stage: int
    precision: str
    offload_optimizer: str
    offload_param: str
    #: the share of the optimizer's elements offloaded (1 without optimizer offload)
    offload_ratio: float
    #: compute weights on the device (the shard at stage 3)
    params: int
    #: gradients on the device: the fp32 partition (in CPU memory under optimizer
    #: offload), plus the full gradients that live through an accumulation window at
    #: stages 0-1
    grads: int
    #: fp32 master weights and optimizer state on the device
    optimizer: int
    #: stage 3: the largest layer gathered, with its gradient; 0 at stages 0-2
    working: int
    #: offloaded states of the node's ranks, in CPU memory
    cpu_offload_per_node: int
    #: the node's processes building the model before ``initialize``
    cpu_load_per_node: int
    #: offloaded states of the node's ranks, on NVMe
    nvme_per_node: int

    @property
    def model_states(self) -> int:
        """Weights, gradients and optimizer state on the device (what tests measure)."""
        return self.params + self.grads + self.optimizer

    @property
    def device(self) -> int:
        """Everything counted per device: model states plus the stage-3 working layer."""
        return self.model_states + self.working

    @property
    def cpu_per_node(self) -> int:
        """CPU memory a node needs: loading happens before the offloaded states exist."""
        return max(self.cpu_offload_per_node, self.cpu_load_per_node)


def estimate_model_states(
    total_params: float,
    stage: int,
    *,
    num_gpus_per_node: int = 1,
    num_nodes: int = 1,
    precision: Precision = "bf16",
    offload_optimizer: Device = "none",
    offload_param: Device = "none",
    offload_ratio: float = 1.0,
    largest_layer_params: float = 0,
    zero_init: bool = True,
    gradient_accumulation_steps: int = 1,
    optimizer_state_bytes: int = 8,
) -> ModelStatesEstimate:
    """Model-state memory of a ZeRO job in zero-core, by [Note: model-states formulas].

    Args:
        total_params: Ψ, the trainable parameters.
        stage: the ZeRO stage, 0-3.
        num_gpus_per_node: ranks per node.
        num_nodes: nodes; the data-parallel degree is their product.
        precision: ``"bf16"`` or ``"fp16"`` (16-bit weights, fp32 masters), or ``"fp32"``.
        offload_optimizer: ``"none"``, ``"cpu"`` (stages 1-3) or ``"nvme"`` (stage 3).
        offload_param: ``"none"``, ``"cpu"`` or ``"nvme"`` (stage 3 only).
        offload_ratio: ``offload_optimizer.ratio``: the share of each rank's masters,
            optimizer state and gradient partition that ``offload_optimizer`` moves, from 0
            to 1; the rest stays on the device.
        largest_layer_params: the parameters of the largest module (its own, not its
            children's); sizes the stage-3 working set and ``Init`` loading.
        zero_init: stage 3: the model is built under ``zero_core.Init``.
        gradient_accumulation_steps: micro-steps per optimizer step.
        optimizer_state_bytes: optimizer state per parameter: 8 for Adam/AdamW/LAMB (two
            fp32 moments), 4 for SGD with momentum, Lion or Adagrad.

    Returns:
        The bytes per device, per node in CPU memory, and per node on NVMe.

    Raises:
        ValueError: a count out of range, an unknown precision or device, an offload
            the stage does not support, or an ``offload_ratio`` outside [0, 1] or without
            ``offload_optimizer``.
    """
    job = make_job(
        total_params, stage, num_gpus_per_node, num_nodes, precision, gradient_accumulation_steps
    )
    check_choice("offload_optimizer", offload_optimizer, DEVICES)
    check_choice("offload_param", offload_param, DEVICES)
    if offload_optimizer != "none" and job.stage == 0:
        raise ValueError(
            "offload_optimizer needs ZeRO stage 1, 2 or 3 (stage 0 does not partition the "
            "optimizer); use offload_optimizer='none' or a higher stage"
        )
    if offload_optimizer == "nvme" and job.stage != 3:
        raise ValueError(
            f"offload_optimizer='nvme' needs ZeRO stage 3 (as in DeepSpeed); got stage "
            f"{job.stage}: use offload_optimizer='cpu' or stage 3"
        )
    if offload_param != "none" and job.stage != 3:
        raise ValueError(
            f"offload_param needs ZeRO stage 3 (only stage 3 partitions the weights); got "
            f"stage {job.stage}: use offload_param='none' or stage 3"
        )
    ratio = _check_ratio(offload_ratio, offload_optimizer)
    largest = check_whole(
        "largest_layer_params",
        largest_layer_params,
        0,
        "pass the parameter count of the biggest module, or 0 if unknown",
    )
    if largest > job.total_params:
        raise ValueError(
            f"largest_layer_params ({largest}) is more than total_params ({job.total_params}); "
            f"pass the biggest single module's own parameter count"
        )
    state = check_whole(
        "optimizer_state_bytes", optimizer_state_bytes, 0, "Adam keeps 8 bytes per parameter"
    )

    psi, p = job.total_params, job.param_bytes

    def held(partitioned: bool) -> int:  # elements of a state on one rank
        return job.shard if partitioned else psi

    weights = p * held(job.stage == 3)
    master_is_weight = job.stage == 0 or (
        job.stage == 3 and offload_optimizer == "none" and offload_param == "none"
    )
    masters = 0 if (job.precision == "fp32" and master_is_weight) else _FP32
    optimizer = (masters + state) * held(job.stage >= 1)
    partition = _FP32 * held(job.stage >= 1)
    waits_for_window = job.gradient_accumulation_steps > 1 and job.stage <= 1 and masters
    window = p * psi if waits_for_window else 0
    working = 2 * p * largest if job.stage == 3 else 0

    cpu = nvme = 0
    if offload_optimizer != "none":  # offload runs from stage 1: the state is partitioned
        moved = math.ceil(Fraction(ratio) * job.shard)
        kept = job.shard - moved
        cpu += _FP32 * moved  # the gradient partition goes to CPU memory either way
        if offload_optimizer == "cpu":
            cpu += (masters + state) * moved
        else:
            nvme += (masters + state) * moved
        partition, optimizer = _FP32 * kept, (masters + state) * kept
    if offload_param == "cpu":
        cpu, weights = cpu + weights, 0
    elif offload_param == "nvme":
        nvme, weights = nvme + weights, 0
    built_whole = largest if (job.stage == 3 and zero_init) else psi
    gpus = job.num_gpus_per_node
    return ModelStatesEstimate(
        stage=job.stage,
        precision=job.precision,
        offload_optimizer=offload_optimizer,
        offload_param=offload_param,
        offload_ratio=ratio,
        params=weights,
        grads=partition + window,
        optimizer=optimizer,
        working=working,
        cpu_offload_per_node=gpus * cpu,
        cpu_load_per_node=gpus * _FP32 * built_whole,
        nvme_per_node=gpus * nvme,
    )


def _check_ratio(ratio: object, offload_optimizer: str) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        raise ValueError(
            f"offload_ratio must be a number from 0 to 1 (the share of the optimizer "
            f"offloaded), got {ratio!r}"
        )
    if ratio != 1 and offload_optimizer == "none":
        raise ValueError(
            f"offload_ratio={ratio!r} is the share offload_optimizer moves, and "
            f"offload_optimizer is 'none': pass offload_optimizer='cpu' or 'nvme', or leave "
            f"offload_ratio at 1"
        )
    return float(ratio)

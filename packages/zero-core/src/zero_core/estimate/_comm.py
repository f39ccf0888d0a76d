"""Communication volume per optimizer step and rank, by ZeRO stage.

[Note: communication volume]
The convention: what one rank *sends* per optimizer step, with collectives run the way
bandwidth-optimal ring algorithms run them over Nd ranks. A reduce-scatter or an all-gather
of a Ψ-element tensor sends ``(Nd - 1)/Nd x Ψ`` per rank (Nd - 1 rounds, one block of
Ψ/Nd each); an all-reduce is a reduce-scatter followed by an all-gather, ``2(Nd - 1)/Nd x
Ψ``. Blocks are ``ceil(Ψ / Nd)`` elements, so the estimate counts ``(Nd - 1) x ceil(Ψ/Nd)``
per pass. Other algorithms (trees, gloo's) trade latency differently, but none moves less
than this for an all-reduce. Bytes are elements times the element size of what moves.

What zero-core sends per optimizer step of ``gas`` micro-steps (see [Note: one
micro-step] in ``zero_core._engine``: stages 0-1 reduce once per accumulation window,
stages 2-3 on every micro-step):

- stage 0: the gradients all-reduced once: ``2(Nd - 1)/Nd x Ψ``.
- stage 1: the gradients reduce-scattered once and the updated weights all-gathered after
  the step: ``(Nd - 1)/Nd x Ψ`` each, the same total as stage 0 (the paper's point).
- stage 2: a reduce-scatter on every micro-step (``gas x (Nd - 1)/Nd x Ψ``) and one
  all-gather after the step.
- stage 3: on every micro-step an all-gather of the weights in forward, another in
  backward, and a reduce-scatter of the gradients: ``3 gas x (Nd - 1)/Nd x Ψ``; the update
  writes each rank's own shard, so nothing is gathered after the step (the ZeRO paper's
  1.5x of data parallelism, section 7).

Gradients travel in fp32 (the dtype zero-core reduces in; ``communication_data_type``
overrides it), weights in the compute dtype.

Left out: the small control all-reduces of every step (one value per micro-step for the
loss check, one for the gradient norm, one int32 flag per tensor for unused parameters),
stage 3's persistent small parameters (moved as at stage 2), modules that run more than
once in a forward (gathered each time), the broadcast of the weights at start-up, and
offload traffic over PCIe.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._common import PRECISIONS, Precision, check_choice, make_job

__all__ = ["Collective", "CommEstimate", "estimate_communication"]

#: bytes per element of gradients as zero-core reduces them
_GRAD_BYTES = 4


@dataclass(frozen=True, kw_only=True, slots=True)
class Collective:
    """One kind of collective over the whole model, and what it costs per optimizer step."""

    #: ``"all_reduce"``, ``"reduce_scatter"`` or ``"all_gather"``
    op: str
    #: what moves: ``"gradients"``, ``"weights (forward)"``, ...
    what: str
    #: passes over all Ψ per optimizer step (each one runs in buckets)
    passes: int
    #: elements one rank sends per optimizer step, all passes together
    elements: int
    #: bytes one rank sends per optimizer step
    bytes: int


@dataclass(frozen=True, kw_only=True, slots=True)
class CommEstimate:
    """Per-rank sent volume of one optimizer step (see [Note: communication volume])."""

    stage: int
    collectives: tuple[Collective, ...]

    @property
    def elements(self) -> int:
        return sum(c.elements for c in self.collectives)

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.collectives)


def estimate_communication(
    total_params: float,
    stage: int,
    *,
    num_gpus_per_node: int = 1,
    num_nodes: int = 1,
    precision: Precision = "bf16",
    gradient_accumulation_steps: int = 1,
    communication_data_type: Precision | None = None,
) -> CommEstimate:
    """What one rank sends per optimizer step, by [Note: communication volume].

    Args:
        total_params: Ψ, the trainable parameters.
        stage: the ZeRO stage, 0-3.
        num_gpus_per_node: ranks per node.
        num_nodes: nodes; the data-parallel degree is their product.
        precision: the compute dtype, which the weights are gathered in.
        gradient_accumulation_steps: micro-steps per optimizer step.
        communication_data_type: the config key of the same name: the dtype gradients are
            reduced in (default: fp32).

    Returns:
        One entry per kind of collective, with elements and bytes; a single rank sends
        nothing.

    Raises:
        ValueError: a count out of range or an unknown dtype.
    """
    job = make_job(
        total_params, stage, num_gpus_per_node, num_nodes, precision, gradient_accumulation_steps
    )
    grad_bytes = _GRAD_BYTES
    if communication_data_type is not None:
        check_choice("communication_data_type", communication_data_type, tuple(PRECISIONS))
        grad_bytes = PRECISIONS[communication_data_type]
    gas = job.gradient_accumulation_steps
    one_pass = (job.ranks - 1) * job.shard  # a reduce-scatter or all-gather of Ψ

    def collective(op: str, what: str, passes: int, itemsize: int) -> Collective:
        per_pass = 2 * one_pass if op == "all_reduce" else one_pass
        elements = passes * per_pass
        return Collective(
            op=op, what=what, passes=passes, elements=elements, bytes=elements * itemsize
        )

    p = job.param_bytes
    if job.stage == 0:
        plan = [collective("all_reduce", "gradients", 1, grad_bytes)]
    elif job.stage in (1, 2):
        reductions = 1 if job.stage == 1 else gas
        plan = [
            collective("reduce_scatter", "gradients", reductions, grad_bytes),
            collective("all_gather", "weights after the step", 1, p),
        ]
    else:
        plan = [
            collective("all_gather", "weights (forward)", gas, p),
            collective("all_gather", "weights (backward)", gas, p),
            collective("reduce_scatter", "gradients", gas, grad_bytes),
        ]
    return CommEstimate(stage=job.stage, collectives=tuple(plan))

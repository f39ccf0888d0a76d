"""The ``estimate`` command's output: every stage side by side, as a table or as JSON.

The table shows rounded GiB; ``--json`` gives the exact bytes and elements that
``estimate_model_states`` and ``estimate_communication`` return, so scripts never parse
the table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ._comm import CommEstimate, estimate_communication
from ._memory import ModelStatesEstimate, estimate_model_states

__all__ = ["StagePlan", "plan_stages", "render_json", "render_table"]

_GIB = 2**30


@dataclass(frozen=True, slots=True)
class StagePlan:
    """Memory and communication of one stage."""

    memory: ModelStatesEstimate
    comm: CommEstimate


def plan_stages(
    total_params: int,
    *,
    num_gpus_per_node: int,
    num_nodes: int,
    precision: str,
    offload: str,
    largest_layer_params: int,
    zero_init: bool,
    gradient_accumulation_steps: int,
) -> list[StagePlan]:
    """Stages 0-3 of one job. ``offload`` applies where DeepSpeed allows it, and the
    table's offload column says where it did: the optimizer to CPU from stage 1, to NVMe at
    stage 3, the weights too at stage 3."""
    plans = []
    for stage in range(4):
        optimizer_ok = stage == 3 or (stage >= 1 and offload == "cpu")
        memory = estimate_model_states(
            total_params,
            stage,
            num_gpus_per_node=num_gpus_per_node,
            num_nodes=num_nodes,
            precision=precision,
            offload_optimizer=offload if optimizer_ok else "none",
            offload_param=offload if stage == 3 else "none",
            largest_layer_params=largest_layer_params,
            zero_init=zero_init,
            gradient_accumulation_steps=gradient_accumulation_steps,
        )
        comm = estimate_communication(
            total_params,
            stage,
            num_gpus_per_node=num_gpus_per_node,
            num_nodes=num_nodes,
            precision=precision,
            gradient_accumulation_steps=gradient_accumulation_steps,
        )
        plans.append(StagePlan(memory, comm))
    return plans


def render_json(setup: dict[str, Any], plans: list[StagePlan]) -> dict[str, Any]:
    """Exact numbers: bytes, and elements sent per rank per optimizer step."""
    stages = []
    for plan in plans:
        m = plan.memory
        stages.append(
            {
                **asdict(m),
                "model_states": m.model_states,
                "device": m.device,
                "cpu_per_node": m.cpu_per_node,
                "comm_elements": plan.comm.elements,
                "comm_bytes": plan.comm.bytes,
                "collectives": [asdict(c) for c in plan.comm.collectives],
            }
        )
    return {"setup": setup, "units": "bytes; comm per rank per optimizer step", "stages": stages}


def _gib(n: int) -> str:
    return f"{n / _GIB:.2f}"


def _count(n: int) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}"
    return str(n)


def render_table(setup: dict[str, Any], plans: list[StagePlan]) -> str:
    """The human-readable table: GiB per device, per node, and sent per rank per step."""
    ranks = setup["num_nodes"] * setup["num_gpus_per_node"]
    precision = f"{setup['precision']} weights"
    if setup["precision"] != "fp32":
        precision += ", fp32 master weights"
    lines = [
        f"ZeRO estimate: {_count(setup['total_params'])} parameters "
        f"({setup['total_params']:,}) on {setup['num_nodes']} node(s) x "
        f"{setup['num_gpus_per_node']} GPU(s) = {ranks} rank(s); {precision}; Adam; "
        f"{setup['gradient_accumulation_steps']} micro-step(s) per optimizer step",
        "",
    ]
    device = ["total", "weights", "grads", "optimizer", "layer"]
    node = ["CPU offload", "CPU load", "NVMe"]
    widths = {name: max(len(name), 7) for name in device + node}
    groups = [
        ("per device, GiB", device),
        ("per node, GiB", node),
    ]
    left = f"{'stage':>5} {'offload':<11}"
    spans = [" ".join(f"{n:>{widths[n]}}" for n in names) for _, names in groups]
    lines += [
        " " * len(left)
        + "".join(f" | {title:^{len(span)}}" for (title, _), span in zip(groups, spans))
        + " | sent per rank per step",
        left + "".join(f" | {span}" for span in spans) + " | GiB (elements)",
    ]
    for plan in plans:
        m, c = plan.memory, plan.comm
        offload = m.offload_optimizer
        if m.offload_param != "none":
            offload += "+params"
        values = {
            "total": m.device,
            "weights": m.params,
            "grads": m.grads,
            "optimizer": m.optimizer,
            "layer": m.working,
            "CPU offload": m.cpu_offload_per_node,
            "CPU load": m.cpu_load_per_node,
            "NVMe": m.nvme_per_node,
        }
        cells = [" ".join(f"{_gib(values[n]):>{widths[n]}}" for n in names) for _, names in groups]
        row = f"{m.stage:>5} {offload:<11}" + "".join(f" | {cell}" for cell in cells)
        lines.append(row + f" | {_gib(c.bytes)} ({_count(c.elements)})")
    lines += [
        "",
        "Model states only: activations, communication buckets and allocator fragmentation "
        "come on top.",
        "CPU load: each process builds the model in fp32 before initialize (one layer at a "
        "time under zero_core.Init at stage 3).",
        "Sent per rank: ring collectives, gradients in fp32, weights in the compute dtype.",
    ]
    if setup["offload"] != "none":
        lines.append(
            f"Offload {setup['offload']}: the optimizer from stage "
            f"{1 if setup['offload'] == 'cpu' else 3} on, the weights too at stage 3 "
            f"(DeepSpeed's rules), with the fp32 gradient partition in CPU memory."
        )
    if setup["largest_layer_params"] == 0:
        lines.append(
            "Stage 3 also gathers the largest layer with its gradient: pass "
            "--largest-layer-params to count it."
        )
    return "\n".join(lines)

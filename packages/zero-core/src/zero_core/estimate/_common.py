"""What every estimate is computed from: a checked description of the job.

Both estimates (memory and communication) start from the same few numbers, and a typo in
any of them (a negative count, zero nodes, ``precision="bf61"``) should fail with the
argument's name and a fix, not produce a table of nonsense.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal

__all__ = [
    "DEVICES",
    "PRECISIONS",
    "Device",
    "Job",
    "Precision",
    "check_choice",
    "check_whole",
    "make_job",
    "parse_count",
]

Precision = Literal["fp16", "bf16", "fp32"]
Device = Literal["none", "cpu", "nvme"]

#: bytes per element of the weights the model computes with
PRECISIONS: dict[str, int] = {"fp16": 2, "bf16": 2, "fp32": 4}
#: where offloaded states live (DeepSpeed's ``offload_optimizer.device`` values)
DEVICES: tuple[str, ...] = ("none", "cpu", "nvme")


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    """A checked job description (see ``make_job``)."""

    #: Ψ, the number of trainable parameters
    total_params: int
    #: ZeRO stage, 0-3
    stage: int
    num_gpus_per_node: int
    num_nodes: int
    precision: str
    gradient_accumulation_steps: int

    @property
    def ranks(self) -> int:
        """Nd, the data-parallel degree: every GPU of every node."""
        return self.num_gpus_per_node * self.num_nodes

    @property
    def param_bytes(self) -> int:
        """Bytes per element of the compute weights (2 for fp16/bf16, 4 for fp32)."""
        return PRECISIONS[self.precision]

    @property
    def shard(self) -> int:
        """Elements per rank of a state split over every rank: ``ceil(Ψ / Nd)``."""
        return -(-self.total_params // self.ranks)


def check_whole(name: str, value: object, minimum: int, hint: str) -> int:
    """``value`` as an int if it is a whole number >= ``minimum`` (``7e9`` is accepted, as
    notebooks write counts that way), else an error naming ``name`` and the ``hint``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a whole number, got {value!r} ({type(value).__name__})")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}: {hint}")
    return int(value)


def check_choice(name: str, value: str, choices: tuple[str, ...] | list[str]) -> str:
    """``value`` if it is one of ``choices``, else a ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def make_job(
    total_params: float,
    stage: int,
    num_gpus_per_node: int,
    num_nodes: int,
    precision: str,
    gradient_accumulation_steps: int = 1,
) -> Job:
    """Validate the common arguments once; every estimate function calls this first."""
    total = check_whole(
        "total_params",
        total_params,
        0,
        "pass the model's parameter count, e.g. sum(p.numel() for p in model.parameters())",
    )
    stage = check_whole("stage", stage, 0, "ZeRO stages are 0, 1, 2 and 3")
    if stage > 3:
        raise ValueError(f"stage must be 0, 1, 2 or 3, got {stage}")
    gpus = check_whole("num_gpus_per_node", num_gpus_per_node, 1, "count the GPUs (ranks) per node")
    nodes = check_whole("num_nodes", num_nodes, 1, "a job runs on at least one node")
    gas = check_whole(
        "gradient_accumulation_steps",
        gradient_accumulation_steps,
        1,
        "use 1 when every micro-batch is followed by an optimizer step",
    )
    check_choice("precision", precision, tuple(PRECISIONS))
    return Job(
        total_params=total,
        stage=stage,
        num_gpus_per_node=gpus,
        num_nodes=nodes,
        precision=precision,
        gradient_accumulation_steps=gas,
    )


_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def parse_count(text: str) -> int:
    """A parameter count as people write it: ``7e9``, ``7B``, ``1.3b``, ``350M``,
    ``125k``, ``7_000_000_000``. Decimal arithmetic, so ``1.3B`` is exactly 1300000000."""
    cleaned = text.strip().replace("_", "").replace(",", "")
    suffix = cleaned[-1:].upper() if cleaned[-1:].isalpha() else ""
    if suffix == "E":  # "7e" is not a count
        suffix = "?"
    digits = cleaned[: len(cleaned) - len(suffix)] if suffix else cleaned
    try:
        value = Decimal(digits) * _SUFFIXES[suffix]
    except (InvalidOperation, KeyError):
        raise ValueError(
            f"cannot read {text!r} as a parameter count; write e.g. 7e9, 7B, 1.3B, 350M or 125k"
        ) from None
    if not value.is_finite() or value != value.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number of parameters")
    return int(value)

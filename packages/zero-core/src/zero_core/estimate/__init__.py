"""How much memory and communication a ZeRO job needs, before running it.

``estimate_model_states`` and ``estimate_communication`` cover stages 0-3, fp16/bf16
(with fp32 master weights) or fp32, and CPU/NVMe offload; DeepSpeed's
``estimate_zero2_model_states_mem_needs*`` / ``estimate_zero3_model_states_mem_needs*``
keep their names and arguments. The formulas, and what they leave out, are in the notes
of ``_memory`` and ``_comm``; ``python -m zero_core estimate`` prints them for every stage.
"""

from ._comm import Collective, CommEstimate, estimate_communication
from ._common import parse_count
from ._deepspeed import (
    estimate_zero2_model_states_mem_needs,
    estimate_zero2_model_states_mem_needs_all_cold,
    estimate_zero2_model_states_mem_needs_all_live,
    estimate_zero3_model_states_mem_needs,
    estimate_zero3_model_states_mem_needs_all_cold,
    estimate_zero3_model_states_mem_needs_all_live,
    model_sizes,
)
from ._memory import ModelStatesEstimate, estimate_model_states

__all__ = [
    "Collective",
    "CommEstimate",
    "ModelStatesEstimate",
    "estimate_communication",
    "estimate_model_states",
    "estimate_zero2_model_states_mem_needs",
    "estimate_zero2_model_states_mem_needs_all_cold",
    "estimate_zero2_model_states_mem_needs_all_live",
    "estimate_zero3_model_states_mem_needs",
    "estimate_zero3_model_states_mem_needs_all_cold",
    "estimate_zero3_model_states_mem_needs_all_live",
    "model_sizes",
    "parse_count",
]

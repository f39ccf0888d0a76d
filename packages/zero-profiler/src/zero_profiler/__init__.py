"""zero-profiler: an exact flops profiler, a comms logger, training monitors and timers.

The flops profiler counts every ATen operator a model runs, forward and backward, and
charges it to the modules running at the time, with DeepSpeed's ``get_model_profile`` /
``FlopsProfiler`` API and report layout.
"""

from ._format import (
    duration_to_string,
    flops_to_string,
    macs_to_string,
    number_to_string,
    params_to_string,
)
from ._formulas import supported_operators
from ._model_profile import get_model_profile
from ._peak import PEAK_FLOPS, peak_flops_for
from ._profiler import FlopsProfiler, ProfilerState

__version__ = "0.1.0"

__all__ = [
    "PEAK_FLOPS",
    "FlopsProfiler",
    "ProfilerState",
    "__version__",
    "duration_to_string",
    "flops_to_string",
    "get_model_profile",
    "macs_to_string",
    "number_to_string",
    "params_to_string",
    "peak_flops_for",
    "supported_operators",
]

"""zero-profiler: an exact flops profiler, a comms logger, training monitors and timers.

The flops profiler counts every ATen operator a model runs, forward and backward, and
charges it to the modules running at the time, with DeepSpeed's ``get_model_profile`` /
``FlopsProfiler`` API and report layout.
"""

from ._comms import CommsLogger, CommsLoggerConfig, comms_logger_from_config
from ._comms_size import COLLECTIVES
from ._config import ConfigError
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
from ._step_profiler import FlopsProfilerConfig, StepFlopsProfiler, flops_profiler_from_config

__version__ = "0.1.0"

__all__ = [
    "COLLECTIVES",
    "PEAK_FLOPS",
    "CommsLogger",
    "CommsLoggerConfig",
    "ConfigError",
    "FlopsProfiler",
    "FlopsProfilerConfig",
    "ProfilerState",
    "StepFlopsProfiler",
    "__version__",
    "comms_logger_from_config",
    "duration_to_string",
    "flops_profiler_from_config",
    "flops_to_string",
    "get_model_profile",
    "macs_to_string",
    "number_to_string",
    "params_to_string",
    "peak_flops_for",
    "supported_operators",
]

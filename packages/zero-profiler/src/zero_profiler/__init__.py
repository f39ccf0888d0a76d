"""zero-profiler: an exact flops profiler, a comms logger, training monitors and timers.

* The flops profiler counts every ATen operator a model runs, forward and backward, and
  charges it to the modules running at the time, with DeepSpeed's ``get_model_profile`` /
  ``FlopsProfiler`` API and report layout.
* The comms logger times ``torch.distributed`` collectives per operation and message size.
* ``MonitorMaster`` writes training scalars to CSV, TensorBoard, W&B and Comet.
* ``WallClockTimers`` time the training loop's phases.

Each reads its DeepSpeed config block (``"flops_profiler"``, ``"comms_logger"``,
``"tensorboard"``/``"wandb"``/``"comet"``/``"csv_monitor"``) through a typed config class.
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
from ._monitor import (
    CometMonitor,
    CsvMonitor,
    Monitor,
    MonitorMaster,
    TensorBoardMonitor,
    WandbMonitor,
)
from ._monitor_config import CometConfig, CsvConfig, MonitorConfig, TensorBoardConfig, WandbConfig
from ._peak import PEAK_FLOPS, peak_flops_for
from ._profiler import FlopsProfiler, ProfilerState
from ._report import report
from ._step_profiler import FlopsProfilerConfig, StepFlopsProfiler, flops_profiler_from_config
from ._sync import synchronize
from ._timers import TRAINING_TIMERS, Timer, WallClockTimers

__version__ = "0.1.0"

__all__ = [
    "COLLECTIVES",
    "PEAK_FLOPS",
    "TRAINING_TIMERS",
    "CometConfig",
    "CometMonitor",
    "CommsLogger",
    "CommsLoggerConfig",
    "ConfigError",
    "CsvConfig",
    "CsvMonitor",
    "FlopsProfiler",
    "FlopsProfilerConfig",
    "Monitor",
    "MonitorConfig",
    "MonitorMaster",
    "ProfilerState",
    "StepFlopsProfiler",
    "TensorBoardConfig",
    "TensorBoardMonitor",
    "Timer",
    "WallClockTimers",
    "WandbConfig",
    "WandbMonitor",
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
    "report",
    "supported_operators",
    "synchronize",
]

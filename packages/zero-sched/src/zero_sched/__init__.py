"""zero-sched: DeepSpeed's learning-rate schedules as genuine PyTorch ``LRScheduler`` classes.

Every schedule takes DeepSpeed's constructor arguments and defaults, writes the same lr into
the optimizer at every step, and composes with ``SequentialLR``/``ChainedScheduler`` and
anything else that expects a ``torch.optim.lr_scheduler.LRScheduler``.
"""

from ._args import (
    add_tuning_arguments,
    get_config_from_args,
    get_lr_from_config,
    override_1cycle_params,
    override_lr_range_test_params,
    override_params,
    override_warmupCosineLR_params,
    override_warmupLR_params,
    parse_arguments,
)
from ._base import Schedule
from ._config import (
    SCHEDULES,
    VALID_LR_SCHEDULES,
    SchedulerConfigError,
    build_scheduler,
    schedule_parameters,
)
from ._lr_finder import LRRangeTestResult, lr_range_test
from ._one_cycle import OneCycle
from ._plot import ScheduleTrace, trace_schedule
from ._range_test import LRRangeTest
from ._report import report
from ._warmup import WarmupCosineLR, WarmupDecayLR, WarmupLR

__version__ = "0.1.0"

__all__ = [
    "SCHEDULES",
    "VALID_LR_SCHEDULES",
    "LRRangeTest",
    "LRRangeTestResult",
    "OneCycle",
    "Schedule",
    "ScheduleTrace",
    "SchedulerConfigError",
    "WarmupCosineLR",
    "WarmupDecayLR",
    "WarmupLR",
    "__version__",
    "add_tuning_arguments",
    "build_scheduler",
    "get_config_from_args",
    "get_lr_from_config",
    "lr_range_test",
    "override_1cycle_params",
    "override_lr_range_test_params",
    "override_params",
    "override_warmupCosineLR_params",
    "override_warmupLR_params",
    "parse_arguments",
    "report",
    "schedule_parameters",
    "trace_schedule",
]

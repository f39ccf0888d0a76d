"""zerospeed: DeepSpeed's training stack on plain PyTorch, one small package per concern.

This meta-package holds no logic of its own. It re-exports each installed sibling under one
roof (``zerospeed.sched`` *is* ``zero_sched``, ``zerospeed.optim`` is ``zero_optim``,
``zerospeed.aio`` is ``zero_aio``, ``zerospeed.profiler`` is ``zero_profiler``,
``zerospeed.core`` is ``zero_core``, ``zerospeed.moe`` is ``zero_moe``, and
``zerospeed.checkpointing`` is ``zero_core.checkpointing``, where DeepSpeed users look for
``deepspeed.checkpointing``), exposes
``zerospeed.initialize`` (zero-core's, with zero-optim's optimizers and zero-sched's
schedules found through their entry points) and provides the ``zerospeed`` command line.
"""

import sys

import zero_aio as aio
import zero_core as core
import zero_core.checkpointing as checkpointing
import zero_moe as moe
import zero_optim as optim
import zero_profiler as profiler
import zero_sched as sched
from zero_core import initialize

# Register the aliases so `import zerospeed.sched` and `from zerospeed.optim import X` work
# and give the very same module objects as `import zero_sched` / `import zero_optim`.
sys.modules[f"{__name__}.sched"] = sched
sys.modules[f"{__name__}.optim"] = optim
sys.modules[f"{__name__}.aio"] = aio
sys.modules[f"{__name__}.profiler"] = profiler
sys.modules[f"{__name__}.core"] = core
sys.modules[f"{__name__}.moe"] = moe
sys.modules[f"{__name__}.checkpointing"] = checkpointing

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "aio",
    "checkpointing",
    "core",
    "initialize",
    "moe",
    "optim",
    "profiler",
    "sched",
]

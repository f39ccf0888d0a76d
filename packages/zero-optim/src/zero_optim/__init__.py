"""zero-optim: DeepSpeed's optimizers on PyTorch, with a SIMD C++ CPU step that links no torch.

``CPUAdam``, ``CPUAdagrad`` and ``CPULion`` update CPU params with multi-threaded,
vectorized kernels chosen for the CPU at load time (``cpu_features()``); the ``Fused*``
classes accept CPU and CUDA params alike; ``FusedLamb`` is LAMB with DeepSpeed's trust-ratio
clamping; ``OnebitAdam``, ``ZeroOneAdam`` and ``OnebitLamb`` (also in ``zero_optim.onebit``
with their compressed collective) communicate 1 bit per element after a warm-up;
``build_optimizer`` builds any of them from a DeepSpeed ``"optimizer"`` block.
"""

from ._adagrad import CPUAdagrad
from ._adam import CPUAdam, FusedAdam
from ._build import OptimizerConfigError, build_optimizer, optimizer_types
from ._lamb import FusedLamb
from ._lion import CPULion, FusedLion
from ._native import cpu_features
from ._report import report
from ._threads import default_num_threads
from .onebit import CompressedAllreduce, OnebitAdam, OnebitLamb, ZeroOneAdam

__version__ = "0.1.0"

__all__ = [
    "CPUAdagrad",
    "CPUAdam",
    "CPULion",
    "CompressedAllreduce",
    "FusedAdam",
    "FusedLamb",
    "FusedLion",
    "OnebitAdam",
    "OnebitLamb",
    "OptimizerConfigError",
    "ZeroOneAdam",
    "__version__",
    "build_optimizer",
    "cpu_features",
    "default_num_threads",
    "optimizer_types",
    "report",
]

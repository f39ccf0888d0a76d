"""zero-core: DeepSpeed's ZeRO engine (stages 0-3) on plain ``torch.distributed``.

``initialize(model, config=...)`` wraps a model for data-parallel training configured by a
DeepSpeed JSON config: optimizer states (stage 1), gradients (stage 2) and parameters
(stage 3) partitioned across ranks, fp16 with dynamic loss scaling or bf16 with fp32 master
weights. Launch with ``torchrun``; world size 1 needs no launcher.
"""

from . import checkpointing, estimate
from ._consolidate import get_fp32_state_dict_from_zero_checkpoint, load_safetensors
from ._dist import CollectiveError, init_distributed
from ._engine import ZeroEngine
from ._initialize import initialize
from ._loss_scaler import LossScaler
from ._report import report
from ._stage3 import GatheredParameters, Init, is_partitioned, register_external_parameter
from .config import ConfigError, load_config

__version__ = "0.1.0"

__all__ = [
    "CollectiveError",
    "ConfigError",
    "GatheredParameters",
    "Init",
    "LossScaler",
    "ZeroEngine",
    "__version__",
    "checkpointing",
    "estimate",
    "get_fp32_state_dict_from_zero_checkpoint",
    "init_distributed",
    "initialize",
    "is_partitioned",
    "load_config",
    "load_safetensors",
    "register_external_parameter",
    "report",
]

"""DeepSpeed's activation-checkpointing API (``deepspeed.checkpointing``) on plain torch.

``checkpoint(function, *args)`` runs ``function`` without keeping its activations and runs
it again in backward, with the same random numbers. ``configure(mpu, deepspeed_config=...)``
(or ``zero_core.initialize`` with an ``"activation_checkpointing"`` block) decides how the
inputs are kept meanwhile: partitioned across model-parallel ranks, in CPU memory, in one
contiguous buffer; and whether checkpoint boundaries synchronize the device and are timed.
"""

from ._function import CheckpointFunction, checkpoint, non_reentrant_checkpoint
from ._profile import CheckpointTimes, profile_stats, reset_profile
from ._rng import MODEL_PARALLEL_RNG, RNGState, RNGStatesTracker, get_cuda_rng_tracker
from ._settings import configure, is_configured, model_parallel_cuda_manual_seed, settings
from ._storage import reset

#: DeepSpeed's name for the tracker class.
CudaRNGStatesTracker = RNGStatesTracker

__all__ = [
    "MODEL_PARALLEL_RNG",
    "CheckpointFunction",
    "CheckpointTimes",
    "CudaRNGStatesTracker",
    "RNGState",
    "RNGStatesTracker",
    "checkpoint",
    "configure",
    "get_cuda_rng_tracker",
    "is_configured",
    "model_parallel_cuda_manual_seed",
    "non_reentrant_checkpoint",
    "profile_stats",
    "reset",
    "reset_profile",
    "settings",
]

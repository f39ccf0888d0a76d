"""The zero-core section of ``zerospeed report``.

zero-core is the package that runs on ``torch.distributed``, so its section is where a user
looks when a job will not start: which torch build is installed, which accelerators and
process-group backends it can use (each missing one with the step that fixes it), which
DeepSpeed optimizer and scheduler names the installed siblings registered, and what the
engine does with the siblings it knows by their documented contracts. Siblings are found by
distribution metadata, never imported (zero-core runs with torch alone).
"""

from __future__ import annotations

import importlib.metadata
from importlib.metadata import entry_points

import torch
import torch.distributed as dist

from ._registry import _PROVIDERS, OPTIMIZER_GROUP, SCHEDULER_GROUP, registered_types
from .config._sections import SECTIONS

__all__ = ["report"]

_GET_TORCH = "install a CUDA build of torch"


def report() -> dict[str, str]:
    """What zero-core can run on in this environment, as label -> value pairs.

    Returns:
        The torch build, accelerators, one ``backend <name>`` entry per process-group
        backend (``available`` or why not and how to fix it), the optimizer and scheduler
        types registered through entry points, and one entry per sibling zero-core works
        with (installed or not, and what the engine does with it).
    """
    from . import __version__

    return {
        "version": __version__,
        **_torch_build(),
        **_accelerators(),
        **{f"backend {name}": state for name, state in _backends().items()},
        "optimizer types": _registered(OPTIMIZER_GROUP),
        "scheduler types": _registered(SCHEDULER_GROUP),
        **_integrations(),
    }


def _torch_build() -> dict[str, str]:
    if torch.version.cuda:
        build = f"CUDA {torch.version.cuda}"
    elif getattr(torch.version, "hip", None):
        build = f"ROCm/HIP {torch.version.hip}"
    else:
        build = "CPU-only"
    if torch.backends.cudnn.is_available():
        number = torch.backends.cudnn.version()
        cudnn = f"{number // 10000}.{number // 100 % 100}.{number % 100}" if number else "yes"
    else:
        cudnn = "not in this torch build"
    return {"torch build": f"{torch.__version__} ({build})", "cudnn": cudnn}


def _accelerators() -> dict[str, str]:
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        cuda = f"{len(names)}: {', '.join(names)}"
    elif torch.version.cuda or getattr(torch.version, "hip", None):
        cuda = (
            "none usable: this torch build has GPU support but finds no device; check the "
            "driver (nvidia-smi / rocm-smi) and CUDA_VISIBLE_DEVICES"
        )
    else:
        cuda = f"none: CPU-only torch build; {_GET_TORCH} to train on GPUs"
    if torch.backends.mps.is_available():
        mps = "available"
    elif torch.backends.mps.is_built():
        mps = "built, not available: needs macOS 12.3 or later on Apple silicon"
    else:
        mps = "not in this torch build (Apple silicon macOS wheels only)"
    return {"cuda devices": cuda, "mps": mps}


def _backends() -> dict[str, str]:
    """Each ``torch.distributed`` backend: ``available``, or why not and how to fix it."""
    if not dist.is_available():
        missing = "torch.distributed is not built into this torch; install an official wheel"
        return dict.fromkeys(("gloo", "nccl", "mpi", "ucc"), missing)
    gpu_build = torch.version.cuda or getattr(torch.version, "hip", None)
    if dist.is_nccl_available():
        nccl = "available (NCCL {})".format(".".join(map(str, torch.cuda.nccl.version())))
    elif gpu_build:
        nccl = (
            "not available in this torch build; NCCL ships with the Linux CUDA wheels of "
            "torch: install one to train on GPUs (gloo works on CPU tensors)"
        )
    else:
        nccl = f"not available in this torch build (CPU-only); {_GET_TORCH} to train on GPUs"
    return {
        "gloo": "available"
        if dist.is_gloo_available()
        else "not available in this torch build; CPU training and zerospeed's tests need "
        "gloo: install an official Linux or macOS wheel of torch",
        "nccl": nccl,
        "mpi": "available"
        if dist.is_mpi_available()
        else "not available: torch wheels are built without MPI; build torch from source "
        "against an MPI library to use backend='mpi' (gloo and nccl need no MPI)",
        "ucc": "available"
        if getattr(dist, "is_ucc_available", lambda: False)()
        else "not available: torch wheels are built without UCC; build torch from source "
        "with USE_UCC=1 to use backend='ucc'",
    }


def _registered(group: str) -> str:
    found = registered_types(group)
    package, _ = _PROVIDERS[group]
    if not found:
        return (
            f"none registered (torch classes by name only; pip install {package} for "
            f"DeepSpeed's types)"
        )
    by_dist: dict[str, list[str]] = {}
    for entry in found.values():
        owner = entry.dist.name if entry.dist is not None else "unknown distribution"
        by_dist.setdefault(owner, []).append(entry.name)
    return "; ".join(f"{', '.join(names)} ({owner})" for owner, names in by_dist.items())


def _installed(dist_name: str) -> str | None:
    try:
        return importlib.metadata.version(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None


#: Siblings the engine works with, without importing them: (distribution, entry-point group
#: zero-core looks them up in or None for an attribute contract, what the engine does with
#: it, what happens without it).
_SIBLINGS = (
    (
        "zero-moe",
        None,
        "expert params (allreduce=False, zs_dp_group) are sharded and averaged over their "
        "expert-data-parallel group",
        "only needed to build MoE layers",
    ),
    (
        "zero-aio",
        "zerospeed.aio",
        "NVMe offload and checkpoint files (checkpoint.writer 'auto' or 'zero_aio') go "
        "through its aio_handle and save/load",
        "offload to NVMe and checkpoint.writer 'zero_aio' stop with this install command; "
        "checkpoints are written with torch.save",
    ),
    (
        "zero-profiler",
        "zerospeed.profiler",
        "the engine runs the config blocks {blocks} and the wall_clock_breakdown timers "
        "through it when they are enabled",
        "configs that enable {blocks} or wall_clock_breakdown are refused",
    ),
)


def _integrations() -> dict[str, str]:
    """Each sibling zero-core works with: installed (and found where zero-core looks for it)
    or not, and what that means for a training run."""
    blocks = ", ".join(name for name, s in SECTIONS.items() if s.owner == "zero-profiler")
    out = {}
    for dist_name, group, used, without in _SIBLINGS:
        version = _installed(dist_name)
        if version is None:
            state = f"not installed (pip install {dist_name}); {without}"
        elif group is not None and not entry_points(group=group):
            state = (
                f"installed {version} but it registers no {group!r} entry points for zero-core "
                f"to find; upgrade it: pip install -U {dist_name}"
            )
        else:
            state = f"installed {version}; {used}"
        out[f"with {dist_name}"] = state.format(blocks=blocks)
    return out

"""Random-number states: a snapshot of the default generators, and named streams to fork into.

[Note: why recomputation needs the forward's random state]
A checkpointed function runs twice: once in forward (its activations thrown away) and again
in backward to rebuild them. Dropout draws its mask from the default generator of the
tensor's device, so the second run must start from the state the first one started from,
or the gradient belongs to another mask. Model-parallel code also draws from named streams
(``get_cuda_rng_tracker().fork()``: the same seed on every data-parallel rank, a different
one per model-parallel rank), so those states are saved and restored too. After the
recomputation the states are put back as backward found them, so the stream the training
loop sees is the one it would see without checkpointing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch

__all__ = [
    "MODEL_PARALLEL_RNG",
    "RNGState",
    "RNGStatesTracker",
    "capture",
    "get_cuda_rng_tracker",
    "restore",
    "seed_streams",
]

#: The stream model-parallel regions fork into (DeepSpeed's and Megatron's name).
MODEL_PARALLEL_RNG = "model-parallel-rng"

#: Added to the seed for the model-parallel stream, so it never equals the default stream's
#: seed (the offset DeepSpeed and Megatron use, kept so seeds mean the same thing).
_MODEL_PARALLEL_OFFSET = 2718


@dataclass(frozen=True)
class RNGState:
    """The state of the CPU generator and of some CUDA devices' default generators."""

    cpu: torch.Tensor
    """``torch.get_rng_state()``."""
    cuda: dict[int, torch.Tensor]
    """CUDA device index -> ``torch.cuda.get_rng_state(index)``; empty without CUDA."""


def cuda_devices(tensors: Iterable[object] = ()) -> list[int]:
    """The CUDA devices whose generators a computation on ``tensors`` may draw from: those of
    the CUDA tensors, and the current device once CUDA is initialized."""
    devices = {t.device.index for t in tensors if isinstance(t, torch.Tensor) and t.is_cuda}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        devices.add(torch.cuda.current_device())
    return sorted(d for d in devices if d is not None)


def capture(devices: Iterable[int] = ()) -> RNGState:
    """The current state of the CPU generator and of the given CUDA devices'."""
    return RNGState(torch.get_rng_state(), {d: torch.cuda.get_rng_state(d) for d in devices})


def restore(state: RNGState) -> None:
    """Put the generators back in ``state``."""
    torch.set_rng_state(state.cpu)
    for device, cuda_state in state.cuda.items():
        torch.cuda.set_rng_state(cuda_state, device)


def _default_devices() -> list[int]:
    return [torch.cuda.current_device()] if torch.cuda.is_available() else []


def _seed_defaults(seed: int, devices: list[int]) -> None:
    torch.random.default_generator.manual_seed(seed)
    for d in devices:
        with torch.cuda.device(d):
            torch.cuda.manual_seed(seed)


def _seeded(seed: int, devices: list[int]) -> RNGState:
    """The state every generator would have right after ``manual_seed(seed)``."""
    before = capture(devices)
    try:
        _seed_defaults(seed, devices)
        return capture(devices)
    finally:
        restore(before)


class RNGStatesTracker:
    """Named random streams that code can switch into (DeepSpeed's ``CudaRNGStatesTracker``).

    Each stream holds a state for the CPU generator and, when CUDA is available, for the
    current CUDA device, so the same model code draws the same numbers whether it runs on
    CPU or GPU. ``fork(name)`` swaps the stream in for the duration of a block and saves
    where it got to; the default generators continue afterwards as if the block had drawn
    nothing.
    """

    def __init__(self) -> None:
        self._states: dict[str, RNGState] = {}
        self._seeds: set[int] = set()

    def reset(self) -> None:
        """Forget every stream."""
        self._states.clear()
        self._seeds.clear()

    def get_states(self) -> dict[str, RNGState]:
        """The streams' current states, by name (to save, or to restore with
        :meth:`set_states`)."""
        return dict(self._states)

    def set_states(self, states: Mapping[str, RNGState]) -> None:
        """Replace every stream's state (the seeds already used are still remembered)."""
        for name, state in states.items():
            if not isinstance(state, RNGState):
                raise TypeError(
                    f"set_states: the state of {name!r} is a {type(state).__name__}; pass "
                    f"what get_states() returned"
                )
        self._states = dict(states)

    def add(self, name: str, seed: int) -> None:
        """Start a new stream ``name`` seeded with ``seed``.

        Raises:
            ValueError: ``name`` exists already, or another stream uses ``seed`` (two streams
                with one seed would draw the same numbers).
        """
        if name in self._states:
            raise ValueError(f"RNG stream {name!r} exists already; call reset() to start over")
        if seed in self._seeds:
            raise ValueError(f"seed {seed} is used by another RNG stream; pick another seed")
        self._seeds.add(seed)
        self._states[name] = _seeded(seed, _default_devices())

    @contextlib.contextmanager
    def fork(self, name: str = MODEL_PARALLEL_RNG) -> Iterator[None]:
        """Draw from stream ``name`` inside the block.

        Raises:
            KeyError: no stream ``name`` was added.
        """
        if name not in self._states:
            known = ", ".join(repr(n) for n in self._states) or "none"
            raise KeyError(
                f"RNG stream {name!r} was never added (streams: {known}); call "
                f"model_parallel_cuda_manual_seed(seed) or get_cuda_rng_tracker().add(name, "
                f"seed) first"
            )
        stream = self._states[name]
        outside = capture(stream.cuda)
        restore(stream)
        try:
            yield
        finally:
            self._states[name] = capture(stream.cuda)
            restore(outside)


_TRACKER = RNGStatesTracker()


def get_cuda_rng_tracker() -> RNGStatesTracker:
    """The process's stream tracker, whose states ``checkpoint`` saves and restores
    around recomputation (the name is DeepSpeed's; it tracks the CPU generator too)."""
    return _TRACKER


def seed_streams(seed: int, model_parallel_rank: int) -> None:
    """Seed the default generators with ``seed`` (the same on every model-parallel rank) and
    a fresh :data:`MODEL_PARALLEL_RNG` stream with ``seed + 2718 + model_parallel_rank``
    (different on each)."""
    _seed_defaults(seed, _default_devices())
    _TRACKER.reset()
    _TRACKER.add(MODEL_PARALLEL_RNG, seed + _MODEL_PARALLEL_OFFSET + model_parallel_rank)

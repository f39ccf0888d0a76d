"""``FlopsProfiler``: start, stop, read and print an exact profile of a model."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import ClassVar

import torch
from torch import nn

from ._counting import CountingMode
from ._format import duration_to_string, macs_to_string, number_to_string, params_to_string
from ._params import count_parameters
from ._peak import peak_flops_for
from ._printing import ProfileSnapshot, render_profile
from ._session import Session
from ._sync import accelerator_synchronizer

__all__ = ["FlopsProfiler", "ProfilerState"]


class ProfilerState(enum.Enum):
    """Where a :class:`FlopsProfiler` is in its life; every method checks the state it needs."""

    IDLE = "idle"
    """Nothing measured: just created, or cleaned up by ``end_profile()``."""
    RUNNING = "running"
    """Counting: between ``start_profile()`` and ``stop_profile()``."""
    STOPPED = "stopped"
    """Counts kept for reading and printing; nothing is being counted."""


class FlopsProfiler:
    """Exact flops, MACs, parameters and latency of a model and each of its modules.

    Counting happens per ATen operator (see the counting convention in the package docs),
    so functionals and tensor methods are counted wherever they are called, and backward
    flops are measured when a backward pass runs while profiling. Nothing is attached to
    the model: ``end_profile()`` leaves it exactly as it was.

    Typical use, as in DeepSpeed::

        prof = FlopsProfiler(model)
        prof.start_profile()
        loss = model(batch)
        prof.stop_profile()
        prof.print_model_profile(profile_step=step)
        prof.end_profile()

    Args:
        model: the model to profile.
        peak_flops: the hardware's peak FLOPS for the model's dtype, to report model FLOPS
            utilization. ``None`` looks the current CUDA device up in
            :data:`~zero_profiler.PEAK_FLOPS` and otherwise reports MFU as unavailable.
        batch_size: samples per forward pass, for samples/second. ``None`` uses the leading
            dimension of the first tensor the model was called with.
    """

    _profiling: ClassVar[set[int]] = set()  # id() of the models being profiled right now

    def __init__(
        self, model: nn.Module, *, peak_flops: float | None = None, batch_size: int | None = None
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"FlopsProfiler needs a torch.nn.Module, got {type(model).__name__}")
        if peak_flops is not None and not peak_flops > 0:
            raise ValueError(f"peak_flops must be positive, got {peak_flops!r}")
        self.model = model
        self.peak_flops = peak_flops
        self.batch_size = batch_size
        self.state = ProfilerState.IDLE
        self._session: Session | None = None
        self._mode: CountingMode | None = None
        self._bwd_latency: float | None = None
        self._step_latency: float | None = None

    # -- life cycle --------------------------------------------------------------------------

    def start_profile(self, ignore_list: Iterable[type[nn.Module]] | None = None) -> None:
        """Start counting (previous counts are discarded).

        Args:
            ignore_list: module classes whose work is not counted at all (it counts in no
                module and not in the totals), e.g. ``[nn.Dropout]``.

        Raises:
            RuntimeError: if this profiler is already running, or another profiler is
                running on the same model.
        """
        if self.state is ProfilerState.RUNNING:
            raise RuntimeError("start_profile() called twice; call stop_profile() first")
        if id(self.model) in FlopsProfiler._profiling:
            raise RuntimeError(
                "another FlopsProfiler is already profiling this model; stop it first"
            )
        ignore = tuple(ignore_list or ())
        for cls in ignore:
            if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
                raise TypeError(f"ignore_list must hold nn.Module subclasses, got {cls!r}")
        session = Session(self.model, accelerator_synchronizer(), ignore_types=ignore)
        mode = CountingMode(session)
        session.attach()
        try:
            mode.__enter__()
            # The first operator a dispatch mode sees pays one-off setup inside torch (lazy
            # imports, seconds on a cold process); pay it here, not inside the first module.
            torch.zeros(0).add_(0)
        except BaseException:
            session.detach()
            raise
        self._session, self._mode = session, mode
        self._bwd_latency = self._step_latency = None
        FlopsProfiler._profiling.add(id(self.model))
        self.state = ProfilerState.RUNNING

    def stop_profile(self) -> None:
        """Stop counting; the counts stay readable until ``reset_profile``/``end_profile``.

        Raises:
            RuntimeError: if the profiler is not running.
        """
        if self.state is not ProfilerState.RUNNING:
            raise RuntimeError("stop_profile() called without a running start_profile()")
        assert self._session is not None and self._mode is not None
        try:
            self._mode.__exit__(None, None, None)
        finally:
            self._session.detach()
            FlopsProfiler._profiling.discard(id(self.model))
            self.state = ProfilerState.STOPPED

    def reset_profile(self) -> None:
        """Zero every count and latency, keeping the current state (running or stopped)."""
        session = self._require_session()
        session.reset_counts()
        self._bwd_latency = self._step_latency = None

    def end_profile(self) -> None:
        """Stop if running and drop every count. Safe to call more than once.

        The model carries nothing of the profiler before, during or after profiling, so
        there is nothing to remove from it; this releases the profiler's own references.
        """
        if self.state is ProfilerState.RUNNING:
            self.stop_profile()
        self._session = self._mode = None
        self._bwd_latency = self._step_latency = None
        self.state = ProfilerState.IDLE

    def set_iteration_latencies(
        self, *, backward: float | None = None, step: float | None = None
    ) -> None:
        """Give the report the backward and optimizer-step latencies (seconds) of the
        profiled iteration, measured by the caller (the engine's timers, or
        ``get_model_profile(mode="train")``), so it can print bwd/iter latency, FLOPS and
        samples/second."""
        for name, value in (("backward", backward), ("step", step)):
            if value is not None and not value >= 0:
                raise ValueError(f"{name} latency must be >= 0 seconds, got {value!r}")
        if backward is not None:
            self._bwd_latency = float(backward)
        if step is not None:
            self._step_latency = float(step)

    # -- totals --------------------------------------------------------------------------------

    def _require_session(self) -> Session:
        if self._session is None:
            raise RuntimeError("nothing profiled: call start_profile() and run the model first")
        return self._session

    def get_total_flops(self, as_string: bool = False) -> int | str:
        """Forward flops of the whole model (``"26.85 G"`` with ``as_string``)."""
        flops = self._require_session().root().fwd_flops
        return number_to_string(flops) if as_string else flops

    def get_total_macs(self, as_string: bool = False) -> int | str:
        """Forward multiply-accumulates of the whole model."""
        macs = self._require_session().root().fwd_macs
        return macs_to_string(macs) if as_string else macs

    def get_total_backward_flops(self, as_string: bool = False) -> int | str:
        """Backward flops measured while profiling (0 if no backward pass ran)."""
        flops = self._require_session().root().bwd_flops
        return number_to_string(flops) if as_string else flops

    def get_total_backward_macs(self, as_string: bool = False) -> int | str:
        """Backward multiply-accumulates measured while profiling."""
        macs = self._require_session().root().bwd_macs
        return macs_to_string(macs) if as_string else macs

    def get_total_params(self, as_string: bool = False) -> int | str:
        """Parameters of the model (all of them, trainable or not; shared ones once)."""
        params = count_parameters(self.model)
        return params_to_string(params) if as_string else params

    def get_total_duration(self, as_string: bool = False) -> float | str:
        """Seconds spent in the model's forward while profiling (all calls summed)."""
        seconds = self._require_session().root().fwd_latency
        return duration_to_string(seconds) if as_string else seconds

    def unknown_operators(self) -> dict[str, int]:
        """Operators that ran with no counting rule (counted as 0 flops): name -> calls."""
        return dict(self._require_session().unknown)

    def flops_by_operator(self, backward: bool = False) -> dict[str, int]:
        """The model's flops split by ATen operator (``"aten.mm.default"``), forward or
        backward; the values sum to the model's total."""
        session = self._require_session()
        return dict(session.bwd_by_op if backward else session.fwd_by_op)

    # -- report -------------------------------------------------------------------------------

    def _peak(self) -> tuple[float | None, str]:
        if self.peak_flops is not None:
            return self.peak_flops, "given"
        param = next((p for p in self.model.parameters() if p.is_floating_point()), None)
        if param is None or param.device.type != "cuda":
            return None, "unknown for this device; pass peak_flops= to report MFU"
        name = torch.cuda.get_device_name(param.device)
        peak = peak_flops_for(name, param.dtype)
        if peak is None:
            return None, f"{name} with {param.dtype} is not in PEAK_FLOPS; pass peak_flops="
        return peak, f"{name}, {str(param.dtype).removeprefix('torch.')} (datasheet, dense)"

    def snapshot(self) -> ProfileSnapshot:
        """Everything a report needs, gathered now."""
        session = self._require_session()
        peak, peak_source = self._peak()
        return ProfileSnapshot(
            session=session,
            params=count_parameters(self.model),
            bwd_latency=self._bwd_latency,
            step_latency=self._step_latency,
            batch_size=self.batch_size if self.batch_size is not None else session.batch_size,
            peak_flops=peak,
            peak_source=peak_source,
        )

    def print_model_profile(
        self,
        profile_step: int = 1,
        module_depth: int = -1,
        top_modules: int = 1,
        detailed: bool = True,
        output_file: str | None = None,
    ) -> str:
        """Print the three-part report: summary, top modules per depth, per-module tree.

        Args:
            profile_step: the training step the profile was taken at (shown in the title).
            module_depth: deepest module level shown in the aggregated and detailed parts;
                -1 shows every level.
            top_modules: how many modules per depth the aggregated part lists.
            detailed: whether to print the per-module tree.
            output_file: write the report to this file (overwritten) instead of stdout.

        Returns:
            The report's text.
        """
        if module_depth < -1 or top_modules < 1:
            raise ValueError(
                f"module_depth must be -1 or >= 0 and top_modules >= 1, got {module_depth} "
                f"and {top_modules}"
            )
        text = render_profile(
            self.snapshot(),
            profile_step=profile_step,
            module_depth=module_depth,
            top_modules=top_modules,
            detailed=detailed,
        )
        if output_file is None:
            print(text)
        else:
            with open(output_file, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return text

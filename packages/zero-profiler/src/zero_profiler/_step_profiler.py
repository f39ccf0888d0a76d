"""The ``"flops_profiler"`` config block, and a profiler that follows it step by step."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from ._config import parse_block
from ._profiler import FlopsProfiler, ProfilerState

__all__ = ["FlopsProfilerConfig", "StepFlopsProfiler", "flops_profiler_from_config"]


@dataclass(kw_only=True, slots=True)
class FlopsProfilerConfig:
    """DeepSpeed's ``"flops_profiler"`` block, with its defaults."""

    enabled: bool = False
    """Profile one training step."""
    profile_step: int = 1
    """The global step to profile; earlier steps warm up caches and allocators."""
    module_depth: int = -1
    """Deepest module level in the report; -1 for all."""
    top_modules: int = 1
    """Modules per depth in the aggregated part of the report."""
    detailed: bool = True
    """Print the per-module tree."""
    output_file: str | None = None
    """Write the report to this file instead of stdout."""

    def __post_init__(self) -> None:
        if self.profile_step < 0 or self.module_depth < -1 or self.top_modules < 1:
            raise ValueError(
                '"flops_profiler" needs profile_step >= 0, module_depth >= -1 and '
                f"top_modules >= 1; got {self.profile_step}, {self.module_depth}, "
                f"{self.top_modules}"
            )

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | None) -> FlopsProfilerConfig:
        """From the block, or a whole DeepSpeed config holding it (unknown keys raise
        :class:`ConfigError`)."""
        return parse_block(cls, config, "flops_profiler")


class StepFlopsProfiler:
    """Profiles the configured step of a training loop; what the engine will drive.

    Call :meth:`begin_step` before a step's forward and :meth:`end_step` after its
    optimizer step. On ``profile_step`` the forward and backward are counted and the report
    is printed (or written to ``output_file``); every other step costs one comparison.
    With ``enabled: false`` nothing ever happens.

    Args:
        model: the model.
        config: the ``"flops_profiler"`` block (dict, whole DeepSpeed config or
            :class:`FlopsProfilerConfig`).
        peak_flops: passed to :class:`FlopsProfiler` for the MFU line.
    """

    def __init__(
        self,
        model: nn.Module,
        config: Mapping[str, Any] | FlopsProfilerConfig | None,
        *,
        peak_flops: float | None = None,
    ) -> None:
        self.config = FlopsProfilerConfig.from_dict(config)  # type: ignore[arg-type]
        self.profiler = FlopsProfiler(model, peak_flops=peak_flops)
        self.report: str | None = None  # the printed report, once taken

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def begin_step(self, step: int) -> None:
        """Start counting if ``step`` is the configured one."""
        if self.config.enabled and step == self.config.profile_step:
            self.profiler.start_profile()

    def end_step(
        self,
        step: int,
        *,
        backward_latency: float | None = None,
        step_latency: float | None = None,
    ) -> str | None:
        """Stop, print and clean up if ``step`` was profiled; return the report's text."""
        if self.profiler.state is not ProfilerState.RUNNING or step != self.config.profile_step:
            return None
        try:
            self.profiler.stop_profile()
            self.profiler.set_iteration_latencies(backward=backward_latency, step=step_latency)
            self.report = self.profiler.print_model_profile(
                profile_step=step,
                module_depth=self.config.module_depth,
                top_modules=self.config.top_modules,
                detailed=self.config.detailed,
                output_file=self.config.output_file,
            )
        finally:
            self.profiler.end_profile()
        return self.report


def flops_profiler_from_config(
    model: nn.Module,
    config: Mapping[str, Any] | FlopsProfilerConfig | None,
    *,
    peak_flops: float | None = None,
) -> StepFlopsProfiler:
    """A :class:`StepFlopsProfiler` for ``model`` following a ``"flops_profiler"`` block."""
    return StepFlopsProfiler(model, config, peak_flops=peak_flops)

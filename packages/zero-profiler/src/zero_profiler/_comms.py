"""The comms logger: latency and bandwidth of every ``torch.distributed`` collective.

[Note: wrapping torch.distributed]
While enabled, the logger replaces the profiled functions on ``torch.distributed`` (and on
``torch.distributed.distributed_c10d``, where they are defined) with timing wrappers, and
puts the originals back when disabled. Disabled, nothing is wrapped, so there is no
overhead at all. Code that bound a function *before* enabling
(``from torch.distributed import all_reduce``) keeps the unwrapped one; call collectives
through the module (``dist.all_reduce``), as torch's own FSDP and DDP helpers do.

Each call is timed between two accelerator synchronizations, and an ``async_op=True``
call is waited on before the clock stops: the logged time is the collective's, not its
launch's. That makes logged async collectives synchronous, as DeepSpeed documents for its
logger too; enable the logger for measurement runs, not production ones.

A wrapped collective that calls another wrapped one (torch 2.13's ``all_gather_into_tensor``
calls ``all_gather_single``) is logged once, under the name the caller used: a wrapper
called inside another passes straight through.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist

from ._comms_size import COLLECTIVES, bus_factor, message_bytes
from ._config import ConfigError, parse_block, suggest
from ._format import duration_to_string
from ._sync import accelerator_synchronizer

__all__ = ["CommsLogger", "CommsLoggerConfig", "comms_logger_from_config"]

_MODULES = (dist, dist.distributed_c10d)
_installed: list[CommsLogger] = []  # at most one logger owns the wrappers at a time
_lock = threading.Lock()
_inside = threading.local()  # .active: this thread is inside a logged collective


@dataclass(kw_only=True, slots=True)
class CommsLoggerConfig:
    """DeepSpeed's ``"comms_logger"`` block, with its defaults."""

    enabled: bool = False
    """Wrap and time the collectives."""
    verbose: bool = False
    """Print every operation as it completes."""
    prof_all: bool = True
    """Profile every supported collective; when false, only those in ``prof_ops``."""
    debug: bool = False
    """Append the calling function's name to each operation's log name."""
    prof_ops: list[str] = field(default_factory=list)
    """Collectives to profile when ``prof_all`` is false, e.g. ``["all_reduce"]``."""

    def __post_init__(self) -> None:
        for op in self.prof_ops:
            if op not in COLLECTIVES:
                raise ConfigError(
                    f'"comms_logger.prof_ops" names unknown collective {op!r}'
                    f"{suggest(op, list(COLLECTIVES))}; supported: {', '.join(COLLECTIVES)}"
                )

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | None) -> CommsLoggerConfig:
        """From the block, or a whole DeepSpeed config holding it."""
        return parse_block(cls, config, "comms_logger")

    def profiled_ops(self) -> list[str]:
        """The collectives this config wraps."""
        if not self.enabled:
            return []
        return list(COLLECTIVES) if self.prof_all else list(dict.fromkeys(self.prof_ops))


@dataclass(slots=True)
class _Record:
    count: int = 0
    total_seconds: float = 0.0
    algbw_sum: float = 0.0  # bytes/s, summed over calls (averaged in the summary)
    busbw_sum: float = 0.0


def _caller_name() -> str:
    """The first function up the stack that is neither ours nor torch.distributed's."""
    frame = sys._getframe(2)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not module.startswith(("torch.distributed", __name__, "functools")):
            return frame.f_code.co_name
        frame = frame.f_back
    return "<unknown>"


def _size_to_string(nbytes: int) -> str:
    for scale, unit in ((1 << 30, "GB"), (1 << 20, "MB"), (1 << 10, "KB")):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes} B"


class CommsLogger:
    """Times ``torch.distributed`` collectives per operation and message size.

    Use as a context manager or with :meth:`enable`/:meth:`disable`. See
    [Note: wrapping torch.distributed] for what is wrapped and how timings are taken, and
    [Note: bus bandwidth] in ``_comms_size`` for the bandwidth formulas.

    Args:
        config: the ``"comms_logger"`` block (dict, whole DeepSpeed config or
            :class:`CommsLoggerConfig`). Default: enabled, every collective.
    """

    def __init__(self, config: Mapping[str, Any] | CommsLoggerConfig | None = None) -> None:
        if config is None:
            config = CommsLoggerConfig(enabled=True)
        self.config = CommsLoggerConfig.from_dict(config)  # type: ignore[arg-type]
        # op log name -> message bytes -> record
        self._records: dict[str, dict[int, _Record]] = defaultdict(dict)
        self._originals: dict[str, Callable[..., Any]] = {}
        self._sync = accelerator_synchronizer()

    # -- wrapping ------------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """True while this logger's wrappers are installed."""
        return bool(self._originals)

    def enable(self) -> CommsLogger:
        """Install the wrappers for the configured collectives (none if disabled in config).

        Raises:
            RuntimeError: if another CommsLogger is enabled.
        """
        with _lock:
            if self.enabled:
                return self
            if _installed:
                raise RuntimeError("another CommsLogger is enabled; disable it first")
            for op in self.config.profiled_ops():
                original = getattr(dist, op)
                self._originals[op] = original
                wrapper = self._wrap(op, original)
                for module in _MODULES:
                    if getattr(module, op, None) is original:
                        setattr(module, op, wrapper)
            if self._originals:
                _installed.append(self)
        return self

    def disable(self) -> None:
        """Put the original functions back. Safe to call when not enabled."""
        with _lock:
            for op, original in self._originals.items():
                for module in _MODULES:
                    current = getattr(module, op, None)
                    if getattr(current, "_zero_profiler_original", None) is original:
                        setattr(module, op, original)
            self._originals = {}
            if self in _installed:
                _installed.remove(self)

    def __enter__(self) -> CommsLogger:
        return self.enable()

    def __exit__(self, *exc: object) -> None:
        self.disable()

    def _wrap(self, op: str, original: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(original)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if getattr(_inside, "active", False):
                return original(*args, **kwargs)  # logged by the outer wrapper
            self._sync()
            start = time.perf_counter()
            _inside.active = True
            try:
                result = original(*args, **kwargs)
            finally:
                _inside.active = False
            if result is not None and hasattr(result, "wait"):
                result.wait()  # async_op=True: time the collective, not its launch
            self._sync()
            seconds = time.perf_counter() - start
            self._record(op, signature, args, kwargs, seconds)
            return result

        timed._zero_profiler_original = original  # type: ignore[attr-defined]
        return timed

    def _record(
        self, op: str, signature: inspect.Signature, args: tuple, kwargs: dict, seconds: float
    ) -> None:
        nbytes = message_bytes(op, signature, args, kwargs)
        group = signature.bind_partial(*args, **kwargs).arguments.get("group")
        world = dist.get_world_size(group) if dist.is_initialized() else 1
        name = f"{op} | {_caller_name()}" if self.config.debug else op
        record = self._records[name].setdefault(nbytes, _Record())
        algbw = nbytes / seconds if seconds > 0 else 0.0
        busbw = algbw * bus_factor(op, world)
        record.count += 1
        record.total_seconds += seconds
        record.algbw_sum += algbw
        record.busbw_sum += busbw
        if self.config.verbose:
            rank = dist.get_rank() if dist.is_initialized() else 0
            print(
                f"[rank {rank}] comm op: {name} | time: {duration_to_string(seconds)} | "
                f"msg size: {_size_to_string(nbytes)} | algbw: {algbw / 1e9:.3f} GB/s | "
                f"busbw: {busbw / 1e9:.3f} GB/s",
                flush=True,
            )

    # -- results -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything recorded so far."""
        self._records.clear()

    def summary(self) -> dict[str, dict[int, dict[str, float]]]:
        """The records, machine-readable: ``{op: {message_bytes: {...}}}``.

        Each entry has ``count``, ``total_latency_ms``, ``avg_latency_ms``, and
        ``algbw_GBps``/``busbw_GBps`` (10^9 bytes per second, averaged over the calls).
        """
        out: dict[str, dict[int, dict[str, float]]] = {}
        for name in sorted(self._records):
            out[name] = {}
            for nbytes in sorted(self._records[name]):
                r = self._records[name][nbytes]
                out[name][nbytes] = {
                    "count": r.count,
                    "total_latency_ms": r.total_seconds * 1e3,
                    "avg_latency_ms": r.total_seconds / r.count * 1e3,
                    "algbw_GBps": r.algbw_sum / r.count / 1e9,
                    "busbw_GBps": r.busbw_sum / r.count / 1e9,
                }
        return out

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`summary` as JSON (message sizes become string keys)."""
        return json.dumps(self.summary(), **kwargs)

    def log_summary(
        self, print_fn: Callable[[str], Any] | None = print, show_straggler: bool = False
    ) -> str:
        """Print (and return) a table per operation and message size.

        Raises:
            NotImplementedError: for ``show_straggler=True`` (DeepSpeed's cross-rank
                min/max latency columns), which is not written yet.
        """
        if show_straggler:
            raise NotImplementedError(
                "log_summary(show_straggler=True) is not implemented yet: the table shows "
                "this rank's own timings; compare ranks' summary() dicts meanwhile"
            )
        header = (
            f"{'Comm. Op':<28}{'Message Size':>14}{'Count':>8}{'Total Latency(ms)':>20}"
            f"{'Avg Latency(ms)':>18}{'algbw (GB/s)':>15}{'busbw (GB/s)':>15}"
        )
        lines = [header]
        for name, sizes in self.summary().items():
            lines.append(name)
            for nbytes, row in sizes.items():
                lines.append(
                    f"{'':<28}{_size_to_string(nbytes):>14}{row['count']:>8}"
                    f"{row['total_latency_ms']:>20.3f}{row['avg_latency_ms']:>18.3f}"
                    f"{row['algbw_GBps']:>15.3f}{row['busbw_GBps']:>15.3f}"
                )
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text


def comms_logger_from_config(config: Mapping[str, Any] | CommsLoggerConfig | None) -> CommsLogger:
    """A :class:`CommsLogger` following a ``"comms_logger"`` block, already enabled when the
    block says ``"enabled": true`` (and wrapping nothing otherwise)."""
    logger = CommsLogger(CommsLoggerConfig.from_dict(config))  # type: ignore[arg-type]
    return logger.enable() if logger.config.enabled else logger

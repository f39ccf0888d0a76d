"""Training monitors: events ``(label, value, step)`` to CSV, TensorBoard, W&B and Comet.

Only global rank 0 writes (every rank holds the same scalars in data-parallel training, and
N copies of one curve help nobody). The optional backends import their package when they
are created, and a missing package is an ``ImportError`` naming the extra that installs it,
never a silently skipped backend.
"""

from __future__ import annotations

import abc
import csv
import importlib
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch.distributed as dist

from ._monitor_config import CometConfig, CsvConfig, MonitorConfig, TensorBoardConfig, WandbConfig

__all__ = [
    "CometMonitor",
    "CsvMonitor",
    "Event",
    "Monitor",
    "MonitorMaster",
    "TensorBoardMonitor",
    "WandbMonitor",
]

#: One event: ``(label, value, step)``; DeepSpeed uses the global sample count as the step.
Event = tuple[str, float, int]


def _require(module: str, backend: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f'the "{backend}" monitor is enabled but the {module.split(".")[0]} package is not '
            f'installed: pip install "zero-profiler[{extra}]"'
        ) from e


def _scalar(value: Any) -> float:
    return float(value.item() if hasattr(value, "item") else value)


def _is_writer_rank() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class Monitor(abc.ABC):
    """A monitor backend: ``write_events`` sends a batch of events; ``close`` flushes."""

    @abc.abstractmethod
    def write_events(self, events: Iterable[Event]) -> None:
        """Send ``[(label, value, step), ...]``."""

    def close(self) -> None:  # noqa: B027 - optional for subclasses; most hold nothing open
        """Flush and release the backend (no-op where nothing is held open)."""


class CsvMonitor(Monitor):
    """One CSV file per label, ``<output_path>/<job_name>/<label>.csv``, columns
    ``step,<label>``; slashes in labels become underscores in file names. Files are opened
    per batch of events and appended to, so a crashed run keeps everything written."""

    def __init__(self, config: CsvConfig) -> None:
        self.directory = os.path.join(config.output_path or os.getcwd(), config.job_name)
        os.makedirs(self.directory, exist_ok=True)

    def path_for(self, label: str) -> str:
        return os.path.join(self.directory, label.replace("/", "_") + ".csv")

    def write_events(self, events: Iterable[Event]) -> None:
        for label, value, step in events:
            path = self.path_for(label)
            new = not os.path.exists(path)
            with open(path, "a", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                if new:
                    writer.writerow(["step", label])
                writer.writerow([int(step), _scalar(value)])


class TensorBoardMonitor(Monitor):
    """Scalars through ``torch.utils.tensorboard.SummaryWriter`` (needs the
    ``tensorboard`` package), in ``<output_path>/<job_name>``."""

    def __init__(self, config: TensorBoardConfig) -> None:
        _require("tensorboard", "tensorboard", "tensorboard")
        board = _require("torch.utils.tensorboard", "tensorboard", "tensorboard")
        log_dir = os.path.join(config.output_path or os.getcwd(), config.job_name)
        self.writer = board.SummaryWriter(log_dir=log_dir)

    def write_events(self, events: Iterable[Event]) -> None:
        for label, value, step in events:
            self.writer.add_scalar(label, _scalar(value), int(step))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbMonitor(Monitor):
    """Scalars to Weights & Biases (``wandb.init(project, group, entity=team)``)."""

    def __init__(self, config: WandbConfig) -> None:
        self.wandb = _require("wandb", "wandb", "wandb")
        self.wandb.init(project=config.project, group=config.group, entity=config.team)

    def write_events(self, events: Iterable[Event]) -> None:
        for label, value, step in events:
            self.wandb.log({label: _scalar(value)}, step=int(step))

    def close(self) -> None:
        self.wandb.finish()


class CometMonitor(Monitor):
    """Scalars to Comet (``comet_ml.start``), at most one per label every
    ``samples_log_interval`` steps."""

    def __init__(self, config: CometConfig) -> None:
        comet_ml = _require("comet_ml", "comet", "comet")
        options = {
            "api_key": config.api_key,
            "workspace": config.workspace,
            "project": config.project,
            "experiment_key": config.experiment_key,
            "mode": config.mode,
            "online": config.online,
        }
        self.experiment = comet_ml.start(**{k: v for k, v in options.items() if v is not None})
        if config.experiment_name is not None:
            self.experiment.set_name(config.experiment_name)
        self.interval = config.samples_log_interval
        self._last: dict[str, int] = {}

    def write_events(self, events: Iterable[Event]) -> None:
        for label, value, step in events:
            last = self._last.get(label)
            if last is not None and step - last < self.interval:
                continue
            self._last[label] = int(step)
            self.experiment.log_metric(label, _scalar(value), step=int(step))

    def close(self) -> None:
        self.experiment.end()


class MonitorMaster(Monitor):
    """Every backend enabled in a DeepSpeed config, behind one ``write_events``.

    Args:
        config: a whole DeepSpeed config (its ``tensorboard``, ``wandb``, ``comet`` and
            ``csv_monitor`` blocks are read) or a :class:`MonitorConfig`.

    Raises:
        ImportError: when an enabled backend's package is missing (the message names the
            ``pip install`` that fixes it).
        ConfigError: for unknown keys or wrongly typed values in the blocks.
    """

    def __init__(self, config: Mapping[str, Any] | MonitorConfig | None) -> None:
        self.config = (
            config if isinstance(config, MonitorConfig) else MonitorConfig.from_dict(config)
        )
        self.monitors: list[Monitor] = []
        if not _is_writer_rank():
            return
        c = self.config
        makers = (
            (c.tensorboard, TensorBoardMonitor),
            (c.wandb, WandbMonitor),
            (c.comet, CometMonitor),
            (c.csv_monitor, CsvMonitor),
        )
        for block, maker in makers:
            if block.enabled:
                self.monitors.append(maker(block))  # type: ignore[arg-type]

    @property
    def enabled(self) -> bool:
        """True if any backend is enabled in the config (on every rank, writing or not)."""
        return self.config.enabled

    def write_events(self, events: Iterable[Event]) -> None:
        """Send ``[(label, value, step), ...]`` to every enabled backend (rank 0 only)."""
        events = list(events)
        for monitor in self.monitors:
            monitor.write_events(events)

    def close(self) -> None:
        for monitor in self.monitors:
            monitor.close()

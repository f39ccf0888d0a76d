"""The monitor config blocks: ``"tensorboard"``, ``"wandb"``, ``"comet"``, ``"csv_monitor"``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._config import parse_block

__all__ = ["CometConfig", "CsvConfig", "MonitorConfig", "TensorBoardConfig", "WandbConfig"]


@dataclass(kw_only=True, slots=True)
class _FilesConfig:
    """The keys shared by the two backends that write local files."""

    enabled: bool = False
    """Write events to this backend."""
    output_path: str | None = None
    """Directory for the logs; None means the current working directory."""
    job_name: str = "DeepSpeedJobName"
    """Subdirectory of ``output_path`` for this job."""


@dataclass(kw_only=True, slots=True)
class TensorBoardConfig(_FilesConfig):
    """DeepSpeed's ``"tensorboard"`` block: TensorBoard event files."""


@dataclass(kw_only=True, slots=True)
class CsvConfig(_FilesConfig):
    """DeepSpeed's ``"csv_monitor"`` block: one CSV file per label."""


@dataclass(kw_only=True, slots=True)
class WandbConfig:
    """DeepSpeed's ``"wandb"`` block."""

    enabled: bool = False
    """Log events to Weights & Biases."""
    group: str | None = None
    """W&B group, to gather related runs."""
    team: str | None = None
    """W&B team (entity)."""
    project: str = "deepspeed"
    """W&B project."""


@dataclass(kw_only=True, slots=True)
class CometConfig:
    """DeepSpeed's ``"comet"`` block."""

    enabled: bool = False
    """Log events to Comet."""
    workspace: str | None = None
    """Comet workspace."""
    project: str | None = None
    """Comet project."""
    samples_log_interval: int = 100
    """Send an event only when at least this many samples passed since the last one sent
    for the same label."""
    experiment_name: str | None = None
    """Name given to the experiment."""
    api_key: str | None = None
    """Comet API key (better left to the ``COMET_API_KEY`` environment variable)."""
    experiment_key: str | None = None
    """Key of an existing experiment to continue (32 to 50 alphanumeric characters)."""
    online: bool | None = None
    """Log to the Comet server (True) or to an offline archive (False); None: Comet's
    default."""
    mode: str | None = None
    """``"get"``, ``"create"`` or ``"get_or_create"`` (Comet's default)."""

    def __post_init__(self) -> None:
        if self.samples_log_interval < 1:
            raise ValueError('"comet.samples_log_interval" must be >= 1')
        if self.mode not in (None, "get", "create", "get_or_create"):
            raise ValueError(
                f'"comet.mode" must be "get", "create" or "get_or_create", got {self.mode!r}'
            )


@dataclass(kw_only=True, slots=True)
class MonitorConfig:
    """The four monitor blocks of a DeepSpeed config."""

    tensorboard: TensorBoardConfig = field(default_factory=TensorBoardConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    comet: CometConfig = field(default_factory=CometConfig)
    csv_monitor: CsvConfig = field(default_factory=CsvConfig)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | None) -> MonitorConfig:
        """From a whole DeepSpeed config; blocks that are absent keep their defaults (off)."""
        config = config or {}
        return cls(
            tensorboard=parse_block(TensorBoardConfig, config.get("tensorboard"), "tensorboard"),
            wandb=parse_block(WandbConfig, config.get("wandb"), "wandb"),
            comet=parse_block(CometConfig, config.get("comet"), "comet"),
            csv_monitor=parse_block(CsvConfig, config.get("csv_monitor"), "csv_monitor"),
        )

    @property
    def enabled(self) -> bool:
        """True if any backend is enabled."""
        return any(b.enabled for b in (self.tensorboard, self.wandb, self.comet, self.csv_monitor))

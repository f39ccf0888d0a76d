"""Timing file I/O through an ``aio_handle``: what ``zero-aio-bench`` and ``zero-nvme-tune`` run.

[Note: what a measurement means]
One measurement moves ``io_size`` bytes between a page-aligned, page-locked buffer and one
file with one handle call. A write is timed up to durability: the call plus ``fsync``. The
file is written once untimed first, so writes measure overwriting allocated blocks (what
swapping to NVMe does in steady state), and reads read what is on the device. With the
aligned buffer every request goes through O_DIRECT, so the page cache is bypassed in both
directions, unless the file system refuses O_DIRECT (tmpfs), which ``direct_io_supported``
tells and the tools print.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from dataclasses import dataclass

import torch

from ._format import _fsync_path
from ._handle import aio_handle

__all__ = ["HandleConfig", "Measurement", "direct_io_supported", "measure", "parse_size"]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """``"1G"``, ``"256M"``, ``"128K"``, ``"4096"`` or an int -> bytes (binary units)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _SIZE.match(str(text))
        if not match:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a size; write bytes or a number with K, M, G or T (e.g. 256M)"
            )
        value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a size must be positive, got {text!r}")
    return value


@dataclass(frozen=True)
class HandleConfig:
    """One point of the tuning space: the ``aio_handle`` arguments."""

    block_size: int = 1048576
    queue_depth: int = 128
    single_submit: bool = False
    overlap_events: bool = False
    intra_op_parallelism: int = 1
    backend: str | None = None

    def handle(self) -> aio_handle:
        return aio_handle(
            self.block_size,
            self.queue_depth,
            self.single_submit,
            self.overlap_events,
            self.intra_op_parallelism,
            backend=self.backend,
        )


@dataclass(frozen=True)
class Measurement:
    config: HandleConfig
    op: str  # "read" or "write"
    nbytes: int
    seconds: list[float]

    @property
    def gbps(self) -> float:
        """GB/s (10**9 bytes per second) of the median run."""
        return self.nbytes / statistics.median(self.seconds) / 1e9

    @property
    def best_gbps(self) -> float:
        return self.nbytes / min(self.seconds) / 1e9


def direct_io_supported(directory: str) -> bool:
    """Whether the file system under ``directory`` accepts O_DIRECT (tmpfs does not)."""
    probe = os.path.join(directory, f".zero-aio-odirect-probe-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    finally:
        if os.path.exists(probe):
            os.unlink(probe)
    os.close(fd)
    return True


def new_buffer(nbytes: int) -> torch.Tensor:
    """A page-aligned, page-locked byte buffer filled with a non-trivial pattern."""
    buf = aio_handle(backend="threads").new_cpu_locked_tensor(
        nbytes, torch.empty(0, dtype=torch.uint8)
    )
    buf.copy_(torch.arange(nbytes, dtype=torch.int64).remainder_(251).to(torch.uint8))
    return buf


def prepare_file(path: str, buffer: torch.Tensor) -> None:
    """Write the file once (untimed) so measurements overwrite allocated blocks."""
    aio_handle(backend="threads", intra_op_parallelism=2).sync_pwrite(buffer, path)
    _fsync_path(path, os.O_RDONLY)


def measure(
    config: HandleConfig, path: str, buffer: torch.Tensor, op: str, loops: int = 3
) -> Measurement:
    """Time ``loops`` reads or writes of the whole ``buffer`` from/to ``path`` (which
    ``prepare_file`` wrote). Raises the handle's ``OSError`` if any transfer fails."""
    if op not in ("read", "write"):
        raise ValueError(f"op must be 'read' or 'write', got {op!r}")
    handle = config.handle()
    seconds = []
    for _ in range(loops):
        start = time.perf_counter()
        if op == "read":
            handle.sync_pread(buffer, path)
        else:
            handle.sync_pwrite(buffer, path)
            _fsync_path(path, os.O_RDONLY)
        seconds.append(time.perf_counter() - start)
    return Measurement(config, op, buffer.numel(), seconds)

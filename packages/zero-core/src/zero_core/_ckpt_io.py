"""Where a checkpoint's tensors go: inside ``torch.save`` files, or zero-aio tensor files.

[Note: the two checkpoint writers]
``checkpoint.writer`` picks who writes the bulk of a checkpoint: the fp32 master shards and
the optimizer-state shards of every rank, and the full frozen parameters and buffers rank 0
saves. ``"torch"`` keeps them inside ``rank<r>.pt`` / ``meta.pt``. ``"zero_aio"`` moves each
into ``rank<r>.zaio`` / ``meta.zaio``, written by zero-aio at device speed with a CRC-32C
per tensor, and leaves ``None`` at its place in the ``.pt`` file, which keeps everything
else (names, shapes, scalars, RNG, sampler, client state) and is still loaded with
``torch.load(weights_only=True)``: neither format can run code. A tensor pulled out of
container ``c`` under key ``k`` is stored under the name ``<prefix><k>`` (for example
``shards/<param>/state/exp_avg``); a reader that finds ``None`` where a tensor is expected
takes it from the tensor file. ``"auto"`` (the default) is zero-aio when it is installed.

Reading a zero-aio file either loads it whole in one request (a rank resuming from its own
file needs all of it) or, through ``load_tensors``, only the tensors asked for, each read
whole so its checksum can be verified: a rank loading at another world size reads the saved
shards that overlap its new range, never whole files, and the converter holds one parameter
at a time. A corrupt tensor raises zero-aio's ``ChecksumError`` naming the file and tensor.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from . import _aio

__all__ = ["TORCH", "ZERO_AIO", "AioTensors", "choose_writer", "pull_tensors", "write_tensors"]

TORCH = "torch"
ZERO_AIO = "zero_aio"
SUFFIX = ".zaio"


def choose_writer(sections: Mapping[str, Any]) -> str:
    """``checkpoint.writer`` with ``"auto"`` decided (see the Note).

    Raises:
        ImportError: ``"zero_aio"`` is asked for and zero-aio is not installed.
    """
    writer = (sections.get("checkpoint") or {}).get("writer", "auto")
    if writer == "auto":
        return ZERO_AIO if _aio.installed() else TORCH
    if writer == ZERO_AIO and not _aio.installed():
        raise ImportError(f"checkpoint.writer is 'zero_aio' but zero-aio is not installed: "
                          f"{_aio.INSTALL}")  # fmt: skip
    return writer


def pull_tensors(
    container: dict[str, Any], keys: Iterable[str], prefix: str, out: dict[str, torch.Tensor]
) -> None:
    """Move the tensors ``container[k]`` (for ``k`` in ``keys``) into ``out`` under
    ``prefix + k``, leaving ``None`` in their place; other values stay."""
    for k in list(keys):
        value = container[k]
        if torch.is_tensor(value):
            out[prefix + k] = value
            container[k] = None


def write_tensors(
    tensors: dict[str, torch.Tensor], path: str, aio_section: Mapping[str, Any] | None
) -> None:
    """zero-aio's atomic, checksummed save, with a handle from the ``"aio"`` block if any."""
    _aio.aio("save")(tensors, path, handle=_aio.handle_from_config(aio_section))


class AioTensors:
    """A zero-aio tensor file: its index read now, tensors when asked."""

    def __init__(self, path: str) -> None:
        self.path = path
        entries, _ = _aio.aio("read_index")(path)
        self.entries = {e.name: e for e in entries}
        self._all: dict[str, torch.Tensor] | None = None

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def spec(self, name: str) -> tuple[torch.dtype, list[int]]:
        """dtype and shape of tensor ``name``, without reading it."""
        entry = self.entries[name]
        return entry.dtype, list(entry.shape)

    def read_all(self) -> None:
        """Read the whole file in one request; later ``get`` calls are served from memory."""
        if self._all is None:
            self._all = _aio.aio("load")(self.path)

    def get(self, name: str) -> torch.Tensor:
        """Tensor ``name`` (checksum verified): from memory after ``read_all``, else read
        alone, a fresh buffer each call (callers keep what they need)."""
        if self._all is not None:
            return self._all[name]
        return _aio.aio("load_tensors")(self.path, [name])[name]

    def resolve(self, value: Any, name: str) -> Any:
        """``value``, or the tensor ``name`` when ``value`` is the ``None`` left in its place."""
        return self.get(name) if value is None and name in self.entries else value


def open_tensors(directory: str, saved: Mapping[str, Any]) -> AioTensors | None:
    """The tensor file a loaded ``.pt`` structure names (``None``: a torch-written file)."""
    name = saved.get("tensor_file")
    return AioTensors(os.path.join(directory, name)) if name else None

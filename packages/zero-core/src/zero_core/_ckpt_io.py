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

Reading a zero-aio file goes one of three ways. A tensor wanted whole, in memory the caller
already has (a rank resuming at the same world size: its fp32 master shards and optimizer
states), is queued with ``read_into`` and read at ``finish`` by zero-aio's ``load_into``:
one pass over the file, straight into that memory (O_DIRECT when it lines up with the
file, else through a staging buffer with the copy behind the next read), every checksum
verified. A tensor wanted in part (a rank loading at another world size reads the saved
shards that overlap its new range, never whole files) is read alone through
``load_tensors``, whole so its checksum can be verified, then sliced; the converter holds
one parameter at a time that way. ``read_all`` loads a whole file (``meta.zaio``'s frozen
parameters and buffers). A corrupt tensor raises zero-aio's ``ChecksumError`` naming the
file and tensor.
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
        self._index, _ = _aio.aio("read_index")(path)
        self.entries = {e.name: e for e in self._index}
        self._all: dict[str, torch.Tensor] | None = None
        self._queued: dict[str, torch.Tensor] = {}  # name -> destination, read at finish()

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def spec(self, name: str) -> tuple[torch.dtype, list[int]]:
        """dtype and shape of tensor ``name``, without reading it."""
        entry = self.entries[name]
        return entry.dtype, list(entry.shape)

    def read_all(self) -> None:
        """Read the whole file in one pass; later ``get`` calls are served from memory."""
        if self._all is None:
            self._all = _aio.aio("load")(self.path)

    def get(self, name: str) -> torch.Tensor:
        """Tensor ``name`` (checksum verified): from memory after ``read_all``, else read
        alone, a fresh buffer each call (callers keep what they need)."""
        if self._all is not None:
            return self._all[name]
        self.finish()  # a queued read of it must land first (it is read again here)
        return _aio.aio("load_tensors")(self.path, [name], entries=self._index)[name]

    def read_into(self, name: str, start: int, out: torch.Tensor) -> None:
        """Elements ``[start, start + out.numel())`` of the flattened tensor ``name`` into
        ``out``. When ``out`` is exactly the whole tensor's memory (a contiguous CPU tensor
        of its dtype and size) the read is only queued: the bytes land at ``finish()``, so
        ``out`` must not be used before then. Anything else is read now and copied
        (converting dtype and device as ``copy_`` does)."""
        entry = self.entries[name]
        whole = (
            start == 0
            and self._all is None
            and name not in self._queued
            and out.device.type == "cpu"
            and out.dtype == entry.dtype
            and out.is_contiguous()
            and out.numel() * out.element_size() == entry.nbytes
        )
        if whole:
            self._queued[name] = out.view(entry.shape)
        else:
            out.copy_(self.get(name).reshape(-1)[start : start + out.numel()])

    def finish(self) -> None:
        """Carry out the reads ``read_into`` queued, in one pass over the file.

        Raises:
            zero_aio.ChecksumError: a queued tensor is corrupt (its destination then holds
                the bytes as they are on disk).
        """
        if self._queued:
            queued, self._queued = self._queued, {}
            _aio.aio("load_into")(self.path, queued, entries=self._index)

    def resolve(self, value: Any, name: str) -> Any:
        """``value``, or the tensor ``name`` when ``value`` is the ``None`` left in its place."""
        return self.get(name) if value is None and name in self.entries else value


def open_tensors(directory: str, saved: Mapping[str, Any]) -> AioTensors | None:
    """The tensor file a loaded ``.pt`` structure names (``None``: a torch-written file)."""
    name = saved.get("tensor_file")
    return AioTensors(os.path.join(directory, name)) if name else None

"""One full fp32 state dict from any stage's checkpoint, without a process group.

[Note: bounded memory]
``iter_fp32_state_dict`` yields one parameter at a time, assembled from the memory-mapped
``.pt`` rank files, or from its saved shards read alone from ``.zaio`` files (either
writer's checkpoints convert the same way); ``write_safetensors`` writes the header (every
name, dtype and shape is known from ``meta.pt`` and ``meta.zaio``'s index up front) and then
each tensor as it is produced, so converting holds one full tensor (plus the pages being
copied) at a time, not the model. A ``.pt`` output (``torch.save``) needs the whole dict in
memory, as torch's format requires.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import struct
from collections.abc import Iterator

import torch

from ._checkpoint import EXTRA, META, SavedShards, _write_atomic, load_meta, resolve_tag
from ._ckpt_io import AioTensors, open_tensors

__all__ = [
    "get_fp32_state_dict_from_zero_checkpoint",
    "iter_fp32_state_dict",
    "load_safetensors",
    "write_safetensors",
]

_ST_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _checkpoint_path(checkpoint_dir: str | os.PathLike, tag: str | None) -> str:
    checkpoint_dir = os.fspath(checkpoint_dir)
    if os.path.exists(os.path.join(checkpoint_dir, META)):
        return checkpoint_dir  # the tag directory itself
    tag = resolve_tag(checkpoint_dir, tag)
    if tag is None:
        raise FileNotFoundError(
            f"{checkpoint_dir} has no 'latest' file; pass the tag (or the tag directory)"
        )
    return os.path.join(checkpoint_dir, tag)


def _extra_spec(meta: dict, store: AioTensors | None, name: str) -> tuple[torch.dtype, list]:
    value = meta["extra"][name]
    if value is None and store is not None:
        return store.spec(EXTRA + name)
    return value.dtype, list(value.shape)


def _entries(
    meta: dict, store: AioTensors | None
) -> list[tuple[str, torch.dtype, list[int], str | None]]:
    """(name, dtype, shape, source) of every output tensor, in order; source is the saved
    name for tied aliases and buffers/frozen params (None: an optimizer-owned param).
    ``store``: ``meta.zaio`` when the checkpoint has one."""
    out: list[tuple[str, torch.dtype, list[int], str | None]] = []
    for name, shape in meta["params"].items():
        out.append((name, torch.float32, shape, None))
    for name in meta["extra"]:
        dtype, shape = _extra_spec(meta, store, name)
        out.append((name, torch.float32 if dtype.is_floating_point else dtype, shape, name))
    for alias, name in meta.get("aliases", {}).items():
        shape = meta["params"].get(name) or _extra_spec(meta, store, name)[1]
        out.append((alias, torch.float32, shape, name))
    return out


def iter_fp32_state_dict(
    checkpoint_dir: str | os.PathLike, tag: str | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every entry of the model's ``state_dict``, one at a time."""
    path = _checkpoint_path(checkpoint_dir, tag)
    meta = load_meta(path)
    store = open_tensors(path, meta)
    saved = SavedShards(path, meta["world_size"], meta.get("node_local", False))
    first = saved.rank(0)["shards"]
    if any(record["expert"] for record in first.values()):
        raise NotImplementedError(
            f"{path} holds expert parameters (one set per rank); consolidating experts into "
            f"one state dict is not implemented"
        )
    for name, _, shape, source in _entries(meta, store):
        if source is None:
            numel = math.prod(shape)
            yield name, saved.element_range(name, "master", 0, numel).view(shape)
        elif source in meta["extra"]:
            value = meta["extra"][source]
            value = store.resolve(value, EXTRA + source) if store is not None else value
            yield name, value.float() if value.is_floating_point() else value.clone()
        else:
            numel = math.prod(shape)
            yield name, saved.element_range(source, "master", 0, numel).view(shape)


def get_fp32_state_dict_from_zero_checkpoint(
    checkpoint_dir: str | os.PathLike, tag: str | None = None
) -> dict[str, torch.Tensor]:
    """The full model in fp32 from a checkpoint of any stage and world size, loadable with
    ``model.load_state_dict(..., strict=True)``; needs no process group (DeepSpeed's
    function of the same name)."""
    return dict(iter_fp32_state_dict(checkpoint_dir, tag))


def write_safetensors(
    checkpoint_dir: str | os.PathLike, output: str | os.PathLike, tag: str | None = None
) -> None:
    """Stream a checkpoint's fp32 state dict into a safetensors file (see the Note)."""
    path = _checkpoint_path(checkpoint_dir, tag)
    meta = load_meta(path)
    header: dict[str, object] = {}
    offset = 0
    for name, dtype, shape, _ in _entries(meta, open_tensors(path, meta)):
        nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        header[name] = {
            "dtype": _ST_DTYPES[dtype],
            "shape": shape,
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    output = os.fspath(output)
    tmp = f"{output}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for _, tensor in iter_fp32_state_dict(path):
                raw = tensor.contiguous().reshape(-1).view(torch.uint8)
                f.write(ctypes.string_at(raw.data_ptr(), raw.numel()) if raw.numel() else b"")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file (the subset ``write_safetensors`` writes) without the
    ``safetensors`` package."""
    inverse = {v: k for k, v in _ST_DTYPES.items()}
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        data = bytearray(f.read())
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        lo, hi = entry["data_offsets"]
        raw = (
            torch.frombuffer(data, dtype=torch.uint8, offset=lo, count=hi - lo)
            if hi > lo
            else torch.empty(0, dtype=torch.uint8)
        )
        out[name] = raw.view(inverse[entry["dtype"]]).reshape(entry["shape"]).clone()
    return out


def convert(checkpoint_dir: str, output: str, tag: str | None, safetensors: bool) -> None:
    """What ``zerospeed convert`` runs."""
    if safetensors:
        write_safetensors(checkpoint_dir, output, tag)
    else:
        _write_atomic(get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag), output)

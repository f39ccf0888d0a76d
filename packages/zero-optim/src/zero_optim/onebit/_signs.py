"""1-bit compression of a float tensor: its signs, 8 to a byte, and one scale per chunk.

[Note: sign compression]
A chunk ``x`` of ``n`` floats is sent as ``n / 8`` bytes of signs plus one fp32 scale and
decoded as ``scale * sign(x)``, with ``sign(0) = +1``. The scale is ``||x|| / sqrt(n)`` (the
root mean square), so the decoded chunk has the norm of ``x``. ``mean(|x|)`` would be the
closer single-step fit in L2, but it sends less magnitude than there is on every step, and
error feedback then never catches up: fed the same vector over and over, its error buffer
grows like ``sqrt(t)`` (measured: 21x the input's norm after 400 calls) where the
norm-keeping scale's stays bounded (3.7x), and the running mean of the outputs converges
like ``1/t`` instead of ``1/sqrt(t)``. Bit ``k`` of byte ``j`` holds the sign of element
``8 * j + k`` (1 for ``>= 0``).

[Note: packing and unpacking without a loop]
Both directions run a handful of whole-tensor torch ops on any device, with no Python loop
over elements or chunks. For 4M floats on one thread of this project's loaded 2-vCPU VM,
packing takes ~3 ms and decoding ~7 ms, against ~18 ms and ~45 ms for the shift, sum and
``where`` version they replaced:

* Packing reads the 8 sign bytes (0 or 1) of a group as one int64 word and folds them into
  its low byte with three shift-or steps: after ``w |= w >> 7`` byte ``i`` holds the signs
  of elements ``i, i+1`` in bits 0-1; after ``w |= w >> 14`` bits 0-3 hold ``i .. i+3``;
  after ``w |= w >> 28`` bits 0-7 hold ``i .. i+7``, so the low byte of the word is the
  packed byte of its group. No bits of neighbouring words mix in (shifts are within the
  word) and the top bit is never set, so the arithmetic shift of int64 is exact. On a
  big-endian host element 0 sits in the word's high byte; the fold then yields the byte
  bit-reversed, which one lookup in a 256-entry table puts right.
* Unpacking looks each byte up in a 256 x 8 table of its 8 decoded values (``+-1.0``, or
  bools for :func:`unpack_signs`): one ``index_select`` writes the whole result, which
  decoding then scales block by block in place, or which one ``addcmul_`` subtracts,
  scaled, from the tensor whose compression error is wanted.
"""

from __future__ import annotations

import sys

import torch

__all__ = [
    "compress",
    "decompress",
    "pack_signs",
    "sign_values",
    "subtract_decompressed",
    "unpack_signs",
]

_BIG_ENDIAN = sys.byteorder == "big"
_TABLES: dict[tuple[str, torch.device], torch.Tensor] = {}


def _byte_bits() -> torch.Tensor:
    """``[256, 8]`` bools: row ``b`` is bit ``k`` of byte ``b`` in column ``k``."""
    weights = torch.tensor([1 << k for k in range(8)], dtype=torch.int32)
    return torch.arange(256, dtype=torch.int32).view(-1, 1).bitwise_and(weights).ne(0)


def _table(kind: str, device: torch.device) -> torch.Tensor:
    """A lookup table made once per device: ``"bool"`` and ``"sign"`` are ``[256, 8]``
    (each byte's signs as bools, or as ``+-1.0``); ``"reverse"`` maps a byte to the byte
    with its bit order reversed."""
    key = (kind, device)
    if key not in _TABLES:
        bits = _byte_bits()
        if kind == "bool":
            table = bits
        elif kind == "sign":
            table = torch.where(bits, 1.0, -1.0)
        else:
            weights = torch.tensor([1 << (7 - k) for k in range(8)], dtype=torch.int32)
            table = (bits.int() * weights).sum(dim=1).to(torch.uint8)
        _TABLES[key] = table.to(device)
    return _TABLES[key]


def _fold_words(words: torch.Tensor) -> torch.Tensor:
    """The low byte of each int64 word after the fold of [Note: packing and unpacking
    without a loop], as uint8."""
    folded = words >> 7
    folded.bitwise_or_(words)
    words = folded >> 14
    words.bitwise_or_(folded)
    folded = words >> 28
    folded.bitwise_or_(words)
    return folded.bitwise_and_(0xFF).to(torch.uint8)


def pack_signs(positive: torch.Tensor) -> torch.Tensor:
    """Pack a 1D bool tensor (``True`` for ``>= 0``) into bytes, 8 signs a byte.

    Args:
        positive: 1D bool tensor whose length is a multiple of 8.

    Returns:
        1D uint8 tensor of ``len(positive) // 8`` bytes.

    Raises:
        ValueError: not 1D bool, or a length that is not a multiple of 8.
    """
    if positive.dtype != torch.bool or positive.dim() != 1 or positive.numel() % 8:
        raise ValueError(
            f"pack_signs takes a 1D bool tensor whose length is a multiple of 8, got "
            f"dtype {positive.dtype}, shape {tuple(positive.shape)}"
        )
    if not positive.is_contiguous() or positive.storage_offset() % 8:
        positive = positive.clone()  # reading 8 bools as one int64 needs aligned memory
    packed = _fold_words(positive.view(torch.uint8).view(torch.int64))
    if _BIG_ENDIAN:
        packed = _table("reverse", packed.device)[packed.int()]
    return packed


def unpack_signs(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_signs`: a 1D bool tensor of ``8 * len(packed)`` signs."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_signs takes uint8 bytes, got {packed.dtype}")
    flat = packed.reshape(-1).int()
    return torch.index_select(_table("bool", packed.device), 0, flat).view(-1)


def compress(chunks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Signs and scales of each row of a 2D float tensor (see [Note: sign compression]).

    Args:
        chunks: ``[num_chunks, chunk_len]`` float tensor, ``chunk_len`` a multiple of 8.

    Returns:
        ``(packed, scales)``: uint8 ``[num_chunks * chunk_len // 8]`` (row after row) and
        fp32 ``[num_chunks]``.
    """
    scales = torch.linalg.vector_norm(chunks, dim=1, dtype=torch.float32) / chunks.shape[1] ** 0.5
    return pack_signs((chunks >= 0).view(-1)), scales


def sign_values(packed: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The signs of :func:`pack_signs` as fp32 ``+-1.0``, 1D (into ``out`` when given)."""
    if out is not None:
        out = out.view(-1, 8)
    return torch.index_select(_table("sign", packed.device), 0, packed.reshape(-1).int(), out=out)


def decompress(
    packed: torch.Tensor, scales: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``scale * sign`` per row: fp32 ``[len(scales), 8 * len(packed) // len(scales)]``.

    Args:
        packed: uint8 signs, as :func:`compress` returns them.
        scales: fp32 scale of each row.
        out: optional fp32 buffer of ``8 * len(packed)`` elements to decode into (it is
            returned, viewed as rows), so a caller decoding the same size over and over
            allocates nothing.
    """
    signs = sign_values(packed, out)
    return signs.view(scales.numel(), -1).mul_(scales.view(-1, 1))


def subtract_decompressed(
    x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, scratch: torch.Tensor
) -> torch.Tensor:
    """``x -= decompress(packed, scales)`` in place (``x`` 1D), in one pass over ``x`` after
    the sign lookup (into ``scratch``, as many floats as ``x``): the error compression
    leaves. Bit for bit the same as subtracting the decoded tensor, since ``scale * +-1``
    is exact."""
    signs = sign_values(packed, scratch).view(scales.numel(), -1)
    x.view(scales.numel(), -1).addcmul_(signs, scales.view(-1, 1), value=-1)
    return x

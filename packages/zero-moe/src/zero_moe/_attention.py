"""Block-sparse self-attention that computes only the layout's nonzero blocks.

[Note: block-gather attention]
For a ``[H, n, n]`` layout, query-block rows are taken ``g`` consecutive rows at a time
(a *row group*); a group attends to the union of its rows' key blocks, and layout zeros
inside that union become a -inf bias. ``g`` (a power of two dividing ``n``, at most 256
query rows) minimizes ``sum over groups of |union| * (g * block + c)``: a larger group
gathers each key block once for more queries (gathering is memory-bound), a smaller one
wastes less work on zeros inside the union (``c`` is the relative cost of gathering a
block). A Fixed layout's window rows share their columns, so ``g`` grows to the window
at no waste; BigBird's random blocks keep ``g`` small.

Groups are then bucketed by union size (rounded up a ~1.25x geometric ladder, padded to
the widest member of the bucket), and each bucket is one dense computation:

1. ``index_select`` the bucket's query rows ``[B, R, g*block, D]`` and, per group, its
   ``m`` key and value blocks ``[B, R, m*block, D]``;
2. when every gathered block is in the layout and there are no masks or ``rpe``:
   PyTorch's fused ``scaled_dot_product_attention`` on those (with an additive mask it
   falls back to an unfused path on CPU that was slower than ours); otherwise explicit
   scores ``[B, R, g*block, m*block]``, plus the -inf bias of layout zeros, the gathered
   blocks of ``rpe`` and the masks, and a softmax that outputs zeros for a query whose
   every key is masked (dense: NaN);
3. ``index_copy`` the groups' outputs back into ``[B, H, L, D]``.

Work and memory are proportional to the padded, grouped number of nonzero blocks, never
to ``L**2``; a layout with a few dense rows (BigBird's global blocks) puts them in their
own bucket instead of padding every row to their width. Everything is differentiable
through ordinary torch indexing, matmuls and SDPA.

Against PyTorch's FlexAttention with a block mask of the same layout (compiled), this was
faster on CPU for Fixed layouts from 4k tokens and slower for scattered (BigBird) ones;
it needs no compilation at run time, so it is the implementation (numbers in the package
README).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own spelling
from torch import Tensor, nn

from ._sparsity import SparsityConfig

_MASK_MODES = ("add", "mul")
#: Ratio between consecutive bucket widths (see [Note: block-gather attention]).
_BUCKET_GROWTH = 1.25
#: Most query rows (row-group size x block) computed against one gathered key set.
_MAX_GROUP_ROWS = 256
#: Cost of gathering one key+value block, in units of one query row's work on it.
_GATHER_COST = 48


@dataclass(frozen=True)
class _Bucket:
    groups: Tensor  # [R] flat (head * n/g + row group) ids of the query-block row groups
    heads: Tensor  # [R] head of each row group
    qblocks: Tensor  # [R, g] query-block indices of each group's rows
    cols: Tensor  # [R, m] key-block indices of the group's column union, padded with 0
    keys: Tensor  # [R, m] flat (head * n + col) ids of those key blocks
    bias: Tensor  # [R, g, m] -inf where (row, col) is not in the layout (or is padding)
    exact: bool  # no -inf in ``bias``: every gathered block is in the layout
    alive: bool  # every query-block row of every group has at least one layout block


def _bucket_width(count: int) -> int:
    width = 1
    while width < count:
        width = max(width + 1, math.ceil(width * _BUCKET_GROWTH))
    return width


def _group_size(layout: Tensor, block: int) -> int:
    """Query-block rows computed together (see [Note: block-gather attention])."""
    h, n, _ = layout.shape
    best, best_cost = 1, None
    g = 1
    while g <= n and g * block <= _MAX_GROUP_ROWS:
        if n % g == 0:
            unions = layout.reshape(h, n // g, g, n).any(dim=2).sum()
            cost = int(unions) * (g * block + _GATHER_COST)
            if best_cost is None or cost < best_cost:
                best, best_cost = g, cost
        g *= 2
    return best


def _plan(layout: Tensor, block: int) -> tuple[int, list[_Bucket]]:
    """The row-group size and the buckets of row groups for a ``[H, n, n]`` layout."""
    h, n, _ = layout.shape
    g = _group_size(layout, block)
    rows = layout.bool().reshape(h * (n // g), g, n)
    union = rows.any(dim=1)  # [groups, n]
    counts = union.sum(dim=1)
    widths = torch.tensor([_bucket_width(int(c)) for c in counts.tolist()])
    buckets = []
    for width in sorted(set(widths[counts > 0].tolist())):
        ids = torch.nonzero((widths == width) & (counts > 0)).flatten()
        sub = union[ids]
        width = int(counts[ids].max())  # the ladder groups rows; pad only to the widest
        # column ids of the union first (stable), padded to ``width`` with zeros
        order = torch.argsort((~sub).to(torch.int8), dim=1, stable=True)[:, :width]
        pad = ~sub.gather(1, order)
        cols = torch.where(pad, 0, order)
        heads = ids // (n // g)
        qblocks = (ids % (n // g))[:, None] * g + torch.arange(g)
        inside = rows[ids].gather(2, cols[:, None, :].expand(-1, g, -1)) & ~pad[:, None, :]
        bias = torch.zeros(inside.shape).masked_fill(~inside, float("-inf"))
        keys = heads[:, None] * n + cols
        exact, alive = bool(inside.all()), bool(inside.any(dim=2).all())
        buckets.append(_Bucket(ids, heads, qblocks, cols, keys, bias, exact, alive))
    return g, buckets


def _block_view(mask: Tensor, n: int, block: int) -> Tensor:
    """``[..., L, L]`` -> ``[..., n, n, block, block]`` (a view when possible)."""
    lead = mask.shape[:-2]
    return mask.reshape(*lead, n, block, n, block).transpose(-3, -2)


class SparseSelfAttention(nn.Module):
    """Self-attention restricted to a block-sparse layout (DeepSpeed's
    ``SparseSelfAttention``), equal to dense softmax attention masked by the layout.

    The layout is built once for ``max_seq_length`` by ``sparsity_config.make_layout``;
    a shorter sequence uses its top-left corner. Scores are ``q @ k^T / sqrt(head_dim)``,
    plus ``rpe``, plus the key-padding mask, plus the attention mask, restricted to the
    layout's nonzero blocks. Causality inside a diagonal block comes from ``attn_mask``,
    not from a unidirectional layout (which is causal at block granularity only).

    Args:
        sparsity_config: The layout (one of the ``SparsityConfig`` classes).
        key_padding_mask_mode: ``"add"``: the key-padding mask's values are added to the
            scores (0 keeps, a large negative value or -inf drops); ``"mul"``: the mask is
            0/1 and 0 drops the key.
        attn_mask_mode: The same choice for ``attn_mask`` (``"mul"`` by default).
        max_seq_length: Longest sequence the module accepts.

    Raises:
        ValueError: An unknown mask mode.
    """

    def __init__(
        self,
        sparsity_config: SparsityConfig | None = None,
        key_padding_mask_mode: str = "add",
        attn_mask_mode: str = "mul",
        max_seq_length: int = 2048,
    ) -> None:
        super().__init__()
        for name, mode in (
            ("key_padding_mask_mode", key_padding_mask_mode),
            ("attn_mask_mode", attn_mask_mode),
        ):
            if mode not in _MASK_MODES:
                raise ValueError(f"{name}={mode!r} must be 'add' or 'mul'")
        self.sparsity_config = sparsity_config or SparsityConfig(num_heads=4)
        self.key_padding_mask_mode = key_padding_mask_mode
        self.attn_mask_mode = attn_mask_mode
        self.max_seq_length = max_seq_length
        self.register_buffer(
            "master_layout", self.sparsity_config.make_layout(max_seq_length), persistent=False
        )
        self._plans: dict[tuple[int, torch.device], tuple[int, list[_Bucket]]] = {}

    def get_layout(self, seq_len: int) -> Tensor:
        """The ``[num_heads, seq_len/block, seq_len/block]`` layout used for ``seq_len``.

        Raises:
            ValueError: ``seq_len`` is not a multiple of the block size or exceeds
                ``max_seq_length``.
        """
        block = self.sparsity_config.block
        if seq_len % block:
            raise ValueError(
                f"sequence length {seq_len} must be a multiple of the block size {block}"
            )
        if seq_len > self.max_seq_length:
            raise ValueError(
                f"sequence length {seq_len} exceeds max_seq_length={self.max_seq_length}"
            )
        n = seq_len // block
        return self.master_layout[..., :n, :n]

    def _buckets(self, seq_len: int, device: torch.device) -> tuple[int, list[_Bucket]]:
        key = (seq_len, device)
        if key not in self._plans:
            g, plan = _plan(self.get_layout(seq_len).cpu(), self.sparsity_config.block)
            self._plans[key] = (
                g,
                [
                    _Bucket(
                        *(t.to(device) if isinstance(t, Tensor) else t for t in vars(b).values())
                    )
                    for b in plan
                ],
            )
        return self._plans[key]

    def _additive(self, mask: Tensor, mode: str, dtype: torch.dtype) -> Tensor:
        if mode == "mul":
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                mask == 0, float("-inf")
            )
        return mask.to(dtype)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        rpe: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """Attention output ``[batch, heads, seq_len, head_dim]``.

        Args:
            query: ``[batch, heads, seq_len, head_dim]``.
            key: Same shape as ``query``.
            value: Same shape as ``query``.
            rpe: Relative position scores added to the scaled scores, broadcastable to
                ``[batch, heads, seq_len, seq_len]`` (e.g. ``[seq_len, seq_len]``).
            key_padding_mask: ``[batch, seq_len]`` (singleton middle dims allowed), per
                ``key_padding_mask_mode``.
            attn_mask: ``[seq_len, seq_len]``, per ``attn_mask_mode``.

        Raises:
            NotImplementedError: ``key``/``value`` shaped unlike ``query``
                (cross-attention).
            ValueError: Wrong head count or sequence length.
        """
        if query.shape != key.shape or key.shape != value.shape:
            raise NotImplementedError(
                "only self-attention is supported: query, key and value must share a shape"
            )
        b, h, seq_len, d = query.shape
        if h != self.sparsity_config.num_heads:
            raise ValueError(
                f"query has {h} heads, the sparsity config {self.sparsity_config.num_heads}"
            )
        block = self.sparsity_config.block
        n = seq_len // block
        g, buckets = self._buckets(seq_len, query.device)
        scale = d**-0.5
        dtype = query.dtype

        kpm = None
        if key_padding_mask is not None:
            kpm = self._additive(
                key_padding_mask.reshape(b, seq_len), self.key_padding_mask_mode, dtype
            ).view(b, n, block)
        am = None
        if attn_mask is not None:
            am = self._additive(attn_mask.reshape(seq_len, seq_len), self.attn_mask_mode, dtype)
            am = _block_view(am, n, block)  # [n, n, bq, bk]
        rp = None
        if rpe is not None:
            rp = _block_view(rpe.to(dtype).expand(b, h, seq_len, seq_len), n, block)

        masked = rp is not None or kpm is not None or am is not None
        qf = query.reshape(b, h * n // g, g * block * d)
        kf = key.reshape(b, h * n, block * d)
        vf = value.reshape(b, h * n, block * d)
        outs, groups = [], []
        for bucket in buckets:
            r, m = bucket.cols.shape
            q = qf.index_select(1, bucket.groups).view(b, r, g * block, d)
            k = kf.index_select(1, bucket.keys.flatten()).view(b, r, m * block, d)
            v = vf.index_select(1, bucket.keys.flatten()).view(b, r, m * block, d)
            if not masked and bucket.exact:
                # Every gathered block is in the layout: PyTorch's fused kernel as is.
                out = F.scaled_dot_product_attention(q, k, v, scale=scale)
                outs.append(out.reshape(b, r, g * block * d))
                groups.append(bucket.groups)
                continue
            scores = (q * scale) @ k.transpose(-1, -2)  # [B, R, g*bq, m*bk]
            blocked = scores.view(b, r, g, block, m, block)
            if not bucket.exact:
                blocked.add_(bucket.bias.to(dtype)[:, :, None, :, None])
            if rp is not None:  # [B, R, g, m, bq, bk] -> [B, R, g, bq, m, bk]
                blocks = rp[
                    :,
                    bucket.heads[:, None, None],
                    bucket.qblocks[:, :, None],
                    bucket.cols[:, None, :],
                ]
                blocked.add_(blocks.permute(0, 1, 2, 4, 3, 5))
            if kpm is not None:
                blocked.add_(kpm[:, bucket.cols][:, :, None, None])  # [B, R, 1, 1, m, bk]
            if am is not None:  # [R, g, m, bq, bk] -> [R, g, bq, m, bk]
                blocks = am[bucket.qblocks[:, :, None], bucket.cols[:, None, :]]
                blocked.add_(blocks.permute(0, 1, 3, 2, 4))
            if masked or not bucket.alive:
                # A query whose every key is masked outputs zeros (dense softmax: NaN).
                dead = torch.isneginf(scores.amax(dim=-1, keepdim=True))
                weights = scores.masked_fill(dead, 0.0).softmax(dim=-1).masked_fill(dead, 0.0)
            else:
                weights = scores.softmax(dim=-1)
            outs.append((weights @ v).reshape(b, r, g * block * d))
            groups.append(bucket.groups)
        out = query.new_zeros(b, h * n // g, g * block * d)
        if outs:
            out = out.index_copy(1, torch.cat(groups), torch.cat(outs, dim=1))
        return out.view(b, h, seq_len, d)

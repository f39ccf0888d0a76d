"""Block-sparse attention layouts: which key blocks each query block attends to.

A layout is a ``[num_heads, n, n]`` int64 0/1 tensor over ``n = seq_len / block`` blocks:
``layout[h, i, j] == 1`` when queries of block ``i`` attend to keys of block ``j`` in head
``h``. The classes keep DeepSpeed's names, arguments and defaults. Unless
``different_layout_per_head`` is set, head 0's layout is copied to every head.

Random blocks come from Python's ``random`` module (seed it with ``random.seed``) or, when
a config is given ``seed=...``, from a private generator so the layout is reproducible.
"""

from __future__ import annotations

import random

import torch
from torch import Tensor

_ATTENTIONS = ("unidirectional", "bidirectional")


def _check_attention(attention: str) -> None:
    if attention not in _ATTENTIONS:
        raise NotImplementedError(
            f"attention={attention!r}: only 'unidirectional' and 'bidirectional' are supported"
        )


def _check_global_indices(starts: list[int], ends: list[int] | None) -> None:
    if ends is None:
        return
    if len(starts) != len(ends):
        raise ValueError(
            f"global_block_indices ({len(starts)} entries) and global_block_end_indices "
            f"({len(ends)} entries) must have the same length"
        )
    for start, end in zip(starts, ends):
        if start >= end:
            raise ValueError(
                f"global block start index {start} must be smaller than its end index {end}"
            )


class SparsityConfig:
    """Base of the layout configs: block size, head count and the empty layout.

    Args:
        num_heads: Attention heads.
        block: Block size (tokens per block side).
        different_layout_per_head: Give each head its own layout (when the pattern has
            per-head variation); otherwise all heads share head 0's.
        seed: Seed of the random blocks (None: Python's global ``random``).
    """

    def __init__(
        self,
        num_heads: int,
        block: int = 16,
        different_layout_per_head: bool = False,
        *,
        seed: int | None = None,
    ) -> None:
        if num_heads < 1 or block < 1:
            raise ValueError(f"num_heads={num_heads} and block={block} must be positive")
        self.num_heads = num_heads
        self.block = block
        self.different_layout_per_head = different_layout_per_head
        self.num_layout_heads = num_heads if different_layout_per_head else 1
        self.seed = seed

    def setup_layout(self, seq_len: int) -> Tensor:
        """An all-zero ``[num_heads, seq_len/block, seq_len/block]`` layout.

        Raises:
            ValueError: ``seq_len`` is not a multiple of ``block``.
        """
        if seq_len % self.block:
            raise ValueError(
                f"sequence length {seq_len} must be a multiple of the block size {self.block}"
            )
        n = seq_len // self.block
        return torch.zeros(self.num_heads, n, n, dtype=torch.int64)

    def check_and_propagate_first_head_layout(self, layout: Tensor) -> Tensor:
        """Copy head 0's layout to every head unless heads have their own layouts."""
        if not self.different_layout_per_head:
            layout[1:] = layout[0]
        return layout

    def make_layout(self, seq_len: int) -> Tensor:
        """The ``[num_heads, seq_len/block, seq_len/block]`` 0/1 layout."""
        raise NotImplementedError(f"{type(self).__name__} does not define make_layout")

    def _rng(self) -> random.Random:
        return random.Random(self.seed) if self.seed is not None else random._inst  # type: ignore[attr-defined]

    def _random_blocks(
        self, layout: Tensor, h: int, count: int, rng: random.Random, causal: bool
    ) -> None:
        n = layout.shape[1]
        if n < count:
            raise ValueError(f"num_random_blocks={count} must not exceed the {n} blocks in a row")
        for row in range(n):
            choices = range(row + 1) if causal else range(n)
            layout[h, row, rng.sample(choices, min(count, len(choices)))] = 1

    def _global_windows(
        self, starts: list[int], ends: list[int] | None, n: int
    ) -> list[tuple[int, int]]:
        """``(first, last)`` block ranges of global blocks/windows that start inside ``n``."""
        ends = ends or [i + 1 for i in starts]
        return [(first, min(last, n)) for first, last in zip(starts, ends) if first < n]

    def _sliding_window(self, layout: Tensor, h: int, width: int, causal: bool) -> None:
        n = layout.shape[1]
        if n < width:
            raise ValueError(
                f"num_sliding_window_blocks={width} must not exceed the {n} blocks in a row"
            )
        half = width // 2
        for row in range(n):
            end = row + 1 if causal else min(row + half + 1, n)
            layout[h, row, max(0, row - half) : end] = 1


class DenseSparsityConfig(SparsityConfig):
    """Every block attends to every block (dense attention through the sparse path)."""

    def make_layout(self, seq_len: int) -> Tensor:
        """All ones."""
        layout = self.setup_layout(seq_len)
        layout[:] = 1
        return layout


class FixedSparsityConfig(SparsityConfig):
    """The "fixed" pattern of Sparse Transformers: local windows plus global blocks.

    Blocks are cut into windows of ``num_local_blocks``; each block attends within its
    window (causally when unidirectional). The last ``num_global_blocks`` of each window
    (shifted left by ``num_global_blocks`` per head pattern when
    ``num_different_global_patterns > 1``) are global: every block attends to them (every
    later block when unidirectional), and with ``horizontal_global_attention`` they attend
    to everything.

    Args:
        num_heads: Attention heads.
        block: Block size.
        different_layout_per_head: Per-head layouts (needed for several global patterns).
        num_local_blocks: Blocks per local window.
        num_global_blocks: Global blocks per window; must divide ``num_local_blocks``.
        attention: ``"unidirectional"`` or ``"bidirectional"``.
        horizontal_global_attention: Global blocks also attend to all blocks
            (bidirectional only).
        num_different_global_patterns: Distinct global-block positions across heads, at
            most ``num_local_blocks / num_global_blocks``.
        seed: Unused (no random blocks); accepted for a uniform signature.

    Raises:
        ValueError: An invalid combination of the above.
        NotImplementedError: An unknown ``attention``.
    """

    def __init__(
        self,
        num_heads: int,
        block: int = 16,
        different_layout_per_head: bool = False,
        num_local_blocks: int = 4,
        num_global_blocks: int = 1,
        attention: str = "bidirectional",
        horizontal_global_attention: bool = False,
        num_different_global_patterns: int = 1,
        *,
        seed: int | None = None,
    ) -> None:
        super().__init__(num_heads, block, different_layout_per_head, seed=seed)
        if num_global_blocks < 1 or num_local_blocks % num_global_blocks:
            raise ValueError(
                f"num_local_blocks={num_local_blocks} must be a multiple of "
                f"num_global_blocks={num_global_blocks}"
            )
        _check_attention(attention)
        if attention != "bidirectional" and horizontal_global_attention:
            raise ValueError("horizontal_global_attention needs attention='bidirectional'")
        if num_different_global_patterns > 1 and not different_layout_per_head:
            raise ValueError(
                f"num_different_global_patterns={num_different_global_patterns} needs "
                f"different_layout_per_head=True (one layout cannot hold several patterns)"
            )
        if num_different_global_patterns > num_local_blocks // num_global_blocks:
            raise ValueError(
                f"num_different_global_patterns={num_different_global_patterns} must not "
                f"exceed num_local_blocks/num_global_blocks = "
                f"{num_local_blocks // num_global_blocks}"
            )
        self.num_local_blocks = num_local_blocks
        self.num_global_blocks = num_global_blocks
        self.attention = attention
        self.horizontal_global_attention = horizontal_global_attention
        self.num_different_global_patterns = num_different_global_patterns

    def set_local_layout(self, h: int, layout: Tensor) -> Tensor:
        """Full (or causal) attention inside each window of ``num_local_blocks``."""
        n = layout.shape[1]
        for start in range(0, n, self.num_local_blocks):
            end = min(start + self.num_local_blocks, n)
            for row in range(start, end):
                stop = row + 1 if self.attention == "unidirectional" else end
                layout[h, row, start:stop] = 1
        return layout

    def _global_columns(self, layout: Tensor, h: int, first: int, last: int) -> None:
        top = 0 if self.attention == "bidirectional" else first
        layout[h, top:, first:last] = 1
        if self.horizontal_global_attention:
            layout[h, first:last, :] = 1

    def set_global_layout(self, h: int, layout: Tensor) -> Tensor:
        """Global columns (and rows, when horizontal) of head ``h``'s pattern."""
        n = layout.shape[1]
        size = self.num_global_blocks
        pattern = h % self.num_different_global_patterns
        offset = self.num_local_blocks - (1 + pattern) * size  # first global block in window
        full_windows_end = n - n % self.num_local_blocks
        for first in range(offset, full_windows_end, self.num_local_blocks):
            self._global_columns(layout, h, first, first + size)
        if full_windows_end < n:  # a last, shorter window still gets its global blocks
            first = min(full_windows_end + offset, n - size)
            self._global_columns(layout, h, first, first + size)
        return layout

    def make_layout(self, seq_len: int) -> Tensor:
        """Local windows plus global blocks, per head pattern."""
        layout = self.setup_layout(seq_len)
        for h in range(self.num_layout_heads):
            self.set_local_layout(h, layout)
            self.set_global_layout(h, layout)
        return self.check_and_propagate_first_head_layout(layout)


class VariableSparsityConfig(SparsityConfig):
    """Local windows of varying sizes, global blocks by index, and random blocks.

    Args:
        num_heads: Attention heads.
        block: Block size.
        different_layout_per_head: Per-head layouts (different random blocks per head).
        num_random_blocks: Random blocks per block row.
        local_window_blocks: Sizes of the first local windows; the last size repeats to
            the end of the sequence.
        global_block_indices: Global blocks (or global window starts, with end indices).
        global_block_end_indices: Exclusive ends of global windows, or None.
        attention: ``"unidirectional"`` or ``"bidirectional"``.
        horizontal_global_attention: Global blocks also attend to all blocks
            (bidirectional only).
        seed: Seed of the random blocks.

    Raises:
        ValueError: Mismatched or reversed global indices, horizontal global attention
            with unidirectional attention, more random blocks than blocks in a row.
        NotImplementedError: An unknown ``attention``.
    """

    def __init__(
        self,
        num_heads: int,
        block: int = 16,
        different_layout_per_head: bool = False,
        num_random_blocks: int = 0,
        local_window_blocks: list[int] | None = None,
        global_block_indices: list[int] | None = None,
        global_block_end_indices: list[int] | None = None,
        attention: str = "bidirectional",
        horizontal_global_attention: bool = False,
        *,
        seed: int | None = None,
    ) -> None:
        super().__init__(num_heads, block, different_layout_per_head, seed=seed)
        self.num_random_blocks = num_random_blocks
        self.local_window_blocks = list(local_window_blocks or [4])
        self.global_block_indices = list(global_block_indices or [0])
        self.global_block_end_indices = (
            None if global_block_end_indices is None else list(global_block_end_indices)
        )
        _check_global_indices(self.global_block_indices, self.global_block_end_indices)
        _check_attention(attention)
        if attention != "bidirectional" and horizontal_global_attention:
            raise ValueError("horizontal_global_attention needs attention='bidirectional'")
        self.attention = attention
        self.horizontal_global_attention = horizontal_global_attention

    def set_random_layout(self, h: int, layout: Tensor, rng: random.Random) -> Tensor:
        """``num_random_blocks`` distinct random key blocks in every row."""
        self._random_blocks(layout, h, self.num_random_blocks, rng, causal=False)
        return layout

    def set_local_layout(self, h: int, layout: Tensor) -> Tensor:
        """Windows of the listed sizes, the last size repeated to the end."""
        n = layout.shape[1]
        starts, start = [], 0
        for size in self.local_window_blocks:
            starts.append((start, size))
            start += size
        size = self.local_window_blocks[-1]
        starts += [(s, size) for s in range(start, n, size)]
        for start, size in starts:
            end = min(start + size, n)
            for row in range(start, end):
                stop = row + 1 if self.attention == "unidirectional" else end
                layout[h, row, start:stop] = 1
        return layout

    def set_global_layout(self, h: int, layout: Tensor) -> Tensor:
        """Global columns (and rows, when horizontal) at the listed indices or windows."""
        windows = self._global_windows(
            self.global_block_indices, self.global_block_end_indices, layout.shape[1]
        )
        for first, last in windows:
            top = 0 if self.attention == "bidirectional" else first
            layout[h, top:, first:last] = 1
            if self.horizontal_global_attention:
                layout[h, first:last, :] = 1
        return layout

    def make_layout(self, seq_len: int) -> Tensor:
        """Random, local and global blocks."""
        layout = self.setup_layout(seq_len)
        rng = self._rng()
        for h in range(self.num_layout_heads):
            self.set_random_layout(h, layout, rng)
            self.set_local_layout(h, layout)
            self.set_global_layout(h, layout)
        return self.check_and_propagate_first_head_layout(layout)


class BigBirdSparsityConfig(SparsityConfig):
    """BigBird: random blocks, a sliding window and the first blocks as global.

    Args:
        num_heads: Attention heads.
        block: Block size.
        different_layout_per_head: Per-head layouts (different random blocks per head).
        num_random_blocks: Random blocks per row (among earlier blocks when
            unidirectional).
        num_sliding_window_blocks: Width of the sliding window, in blocks.
        num_global_blocks: The first blocks, attended by and attending to all.
        attention: ``"unidirectional"`` or ``"bidirectional"``.
        seed: Seed of the random blocks.

    Raises:
        ValueError: A count larger than the blocks in a row.
        NotImplementedError: An unknown ``attention``.
    """

    def __init__(
        self,
        num_heads: int,
        block: int = 16,
        different_layout_per_head: bool = False,
        num_random_blocks: int = 1,
        num_sliding_window_blocks: int = 3,
        num_global_blocks: int = 1,
        attention: str = "bidirectional",
        *,
        seed: int | None = None,
    ) -> None:
        super().__init__(num_heads, block, different_layout_per_head, seed=seed)
        _check_attention(attention)
        self.num_random_blocks = num_random_blocks
        self.num_sliding_window_blocks = num_sliding_window_blocks
        self.num_global_blocks = num_global_blocks
        self.attention = attention

    def set_random_layout(self, h: int, layout: Tensor, rng: random.Random) -> Tensor:
        """Random key blocks per row (causal rows sample among blocks up to themselves)."""
        causal = self.attention == "unidirectional"
        self._random_blocks(layout, h, self.num_random_blocks, rng, causal=causal)
        return layout

    def set_sliding_window_layout(self, h: int, layout: Tensor) -> Tensor:
        """Each block attends to ``num_sliding_window_blocks // 2`` blocks on each side."""
        self._sliding_window(layout, h, self.num_sliding_window_blocks, causal=False)
        return layout

    def set_global_layout_itc(self, h: int, layout: Tensor) -> Tensor:
        """The first ``num_global_blocks`` rows and columns (BigBird's internal global)."""
        n = layout.shape[1]
        if n < self.num_global_blocks:
            raise ValueError(
                f"num_global_blocks={self.num_global_blocks} must not exceed the {n} blocks "
                f"in a row"
            )
        layout[h, : self.num_global_blocks, :] = 1
        layout[h, :, : self.num_global_blocks] = 1
        return layout

    def make_layout(self, seq_len: int) -> Tensor:
        """Random, sliding-window and global blocks (lower triangle when unidirectional)."""
        layout = self.setup_layout(seq_len)
        rng = self._rng()
        for h in range(self.num_layout_heads):
            self.set_random_layout(h, layout, rng)
            self.set_sliding_window_layout(h, layout)
            self.set_global_layout_itc(h, layout)
            if self.attention == "unidirectional":
                layout[h] = layout[h].tril()
        return self.check_and_propagate_first_head_layout(layout)


class BSLongformerSparsityConfig(SparsityConfig):
    """Block-sparse Longformer: a sliding window plus global blocks by index.

    Args:
        num_heads: Attention heads.
        block: Block size.
        different_layout_per_head: Per-head layouts.
        num_sliding_window_blocks: Width of the sliding window, in blocks.
        global_block_indices: Global blocks (or global window starts, with end indices).
        global_block_end_indices: Exclusive ends of global windows, or None.
        attention: ``"unidirectional"`` or ``"bidirectional"``.
        seed: Unused (no random blocks); accepted for a uniform signature.

    Raises:
        ValueError: Mismatched or reversed global indices, a window wider than a row.
        NotImplementedError: An unknown ``attention``.
    """

    def __init__(
        self,
        num_heads: int,
        block: int = 16,
        different_layout_per_head: bool = False,
        num_sliding_window_blocks: int = 3,
        global_block_indices: list[int] | None = None,
        global_block_end_indices: list[int] | None = None,
        attention: str = "bidirectional",
        *,
        seed: int | None = None,
    ) -> None:
        super().__init__(num_heads, block, different_layout_per_head, seed=seed)
        self.num_sliding_window_blocks = num_sliding_window_blocks
        self.global_block_indices = list(global_block_indices or [0])
        self.global_block_end_indices = (
            None if global_block_end_indices is None else list(global_block_end_indices)
        )
        _check_global_indices(self.global_block_indices, self.global_block_end_indices)
        _check_attention(attention)
        self.attention = attention

    def set_sliding_window_layout(self, h: int, layout: Tensor) -> Tensor:
        """Each block attends to ``num_sliding_window_blocks // 2`` blocks on each side."""
        self._sliding_window(layout, h, self.num_sliding_window_blocks, causal=False)
        return layout

    def set_global_layout(self, h: int, layout: Tensor) -> Tensor:
        """Global blocks attend to, and are attended by, every block."""
        windows = self._global_windows(
            self.global_block_indices, self.global_block_end_indices, layout.shape[1]
        )
        for first, last in windows:
            layout[h, first:last, :] = 1
            layout[h, :, first:last] = 1
        return layout

    def make_layout(self, seq_len: int) -> Tensor:
        """Sliding window and global blocks (lower triangle when unidirectional)."""
        layout = self.setup_layout(seq_len)
        for h in range(self.num_layout_heads):
            self.set_sliding_window_layout(h, layout)
            self.set_global_layout(h, layout)
            if self.attention == "unidirectional":
                layout[h] = layout[h].tril()
        return self.check_and_propagate_first_head_layout(layout)


class LocalSlidingWindowSparsityConfig(SparsityConfig):
    """Only a sliding window (causal by default), the same for every head.

    Args:
        num_heads: Attention heads.
        block: Block size.
        num_sliding_window_blocks: Window width in blocks (``width // 2`` on each side when
            bidirectional; the ``width // 2`` previous blocks and itself when causal).
        attention: ``"unidirectional"`` or ``"bidirectional"``.
        seed: Unused (no random blocks); accepted for a uniform signature.

    Raises:
        ValueError: A window wider than a row.
        NotImplementedError: An unknown ``attention``.
    """

    def __init__(
        self,
        num_heads: int,
        block: int = 16,
        num_sliding_window_blocks: int = 3,
        attention: str = "unidirectional",
        *,
        seed: int | None = None,
    ) -> None:
        super().__init__(num_heads, block, False, seed=seed)
        _check_attention(attention)
        self.num_sliding_window_blocks = num_sliding_window_blocks
        self.attention = attention

    def set_sliding_window_layout(self, h: int, layout: Tensor) -> Tensor:
        """The window of every block row."""
        causal = self.attention == "unidirectional"
        self._sliding_window(layout, h, self.num_sliding_window_blocks, causal=causal)
        return layout

    def make_layout(self, seq_len: int) -> Tensor:
        """The sliding window."""
        layout = self.setup_layout(seq_len)
        self.set_sliding_window_layout(0, layout)
        return self.check_and_propagate_first_head_layout(layout)

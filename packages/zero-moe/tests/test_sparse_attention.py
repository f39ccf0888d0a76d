"""SparseSelfAttention against dense softmax attention masked by the expanded layout."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from zero_moe import (
    BigBirdSparsityConfig,
    BSLongformerSparsityConfig,
    DenseSparsityConfig,
    FixedSparsityConfig,
    LocalSlidingWindowSparsityConfig,
    SparseSelfAttention,
    SparsityConfig,
    VariableSparsityConfig,
)

H, D, B = 4, 8, 2

CONFIGS = {
    "dense": lambda: DenseSparsityConfig(H, block=16),
    "fixed": lambda: FixedSparsityConfig(H, block=16, num_local_blocks=2),
    "fixed-unidirectional": lambda: FixedSparsityConfig(
        H, block=16, num_local_blocks=4, attention="unidirectional"
    ),
    "fixed-patterns-horizontal": lambda: FixedSparsityConfig(
        H,
        block=8,
        different_layout_per_head=True,
        num_local_blocks=4,
        num_different_global_patterns=4,
        horizontal_global_attention=True,
    ),
    "variable-random": lambda: VariableSparsityConfig(
        H,
        block=16,
        different_layout_per_head=True,
        num_random_blocks=2,
        local_window_blocks=[1, 2, 3],
        global_block_indices=[2],
        seed=0,
    ),
    "bigbird": lambda: BigBirdSparsityConfig(
        H, block=8, different_layout_per_head=True, num_random_blocks=2, seed=1
    ),
    "bslongformer": lambda: BSLongformerSparsityConfig(
        H, block=16, global_block_indices=[0, 5], global_block_end_indices=[1, 7]
    ),
    "local": lambda: LocalSlidingWindowSparsityConfig(H, block=16),
}


def dense_reference(q, k, v, layout, block, rpe=None, kpm=None, am=None):
    """Dense softmax attention, layout expanded to tokens; masks given as additive."""
    full = layout.repeat_interleave(block, 1).repeat_interleave(block, 2).bool()
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if rpe is not None:
        scores = scores + rpe
    if kpm is not None:
        scores = scores + kpm[:, None, None, :]
    if am is not None:
        scores = scores + am
    scores = scores.masked_fill(~full, float("-inf"))
    return scores.softmax(dim=-1) @ v


def _qkv(seq_len, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, seq_len, D, generator=g).requires_grad_(grad) for _ in range(3)]


def _check(att, seq_len, ref_kw=None, **kw):
    q, k, v = _qkv(seq_len)
    out = att(q, k, v, **kw)
    ref = dense_reference(
        q, k, v, att.get_layout(seq_len), att.sparsity_config.block, **(ref_kw or {})
    )
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_equals_dense_masked_attention(name):
    att = SparseSelfAttention(CONFIGS[name](), max_seq_length=128)
    _check(att, 128)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_equals_dense_with_masks_and_rpe(name):
    att = SparseSelfAttention(CONFIGS[name](), max_seq_length=128)
    g = torch.Generator().manual_seed(3)
    kpm = torch.zeros(B, 128)
    kpm[0, -5:] = -10000.0  # "add" mode: large negative drops padding keys
    causal = torch.ones(128, 128).tril()  # "mul" mode: 0 drops
    rpe = torch.randn(128, 128, generator=g)
    ref = {"rpe": rpe, "kpm": kpm, "am": torch.zeros(128, 128).masked_fill(causal == 0, -1e30)}
    _check(att, 128, ref, rpe=rpe, key_padding_mask=kpm, attn_mask=causal)


def test_mask_modes_swapped():
    att = SparseSelfAttention(
        FixedSparsityConfig(H, block=16),
        key_padding_mask_mode="mul",
        attn_mask_mode="add",
        max_seq_length=128,
    )
    keep = torch.ones(B, 1, 1, 128)  # singleton dims are accepted
    keep[1, ..., 100:] = 0
    additive = torch.randn(128, 128, generator=torch.Generator().manual_seed(4))
    kpm = torch.zeros(B, 128).masked_fill(keep.reshape(B, 128) == 0, float("-inf"))
    _check(att, 128, {"kpm": kpm, "am": additive}, key_padding_mask=keep, attn_mask=additive)


def test_per_head_rpe():
    att = SparseSelfAttention(CONFIGS["bigbird"](), max_seq_length=64)
    rpe = torch.randn(H, 64, 64, generator=torch.Generator().manual_seed(2))
    _check(att, 64, {"rpe": rpe}, rpe=rpe)


def test_shorter_sequence_uses_top_left_of_the_layout():
    att = SparseSelfAttention(CONFIGS["fixed"](), max_seq_length=256)
    assert torch.equal(att.get_layout(96), att.master_layout[:, :6, :6])
    _check(att, 96)


def test_fully_masked_queries_output_zero_with_finite_gradients():
    att = SparseSelfAttention(CONFIGS["fixed"](), key_padding_mask_mode="mul", max_seq_length=64)
    q, k, v = _qkv(64)
    keep = torch.ones(B, 64)
    keep[0] = 0
    out = att(q, k, v, key_padding_mask=keep)
    assert (out[0] == 0).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_work_is_proportional_to_nonzero_blocks():
    def flops(fn):
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    q, k, v = _qkv(1024, grad=False)
    dense = 4 * B * H * 1024 * 1024 * D  # q @ k^T and p @ v
    rpe = torch.zeros(1024, 1024)  # takes the unfused path, whose matmuls are counted
    for config in (
        FixedSparsityConfig(H, block=16, num_local_blocks=8),
        BigBirdSparsityConfig(H, block=16, num_random_blocks=1, seed=0),
        LocalSlidingWindowSparsityConfig(H, block=16),
    ):
        att = SparseSelfAttention(config, max_seq_length=1024)
        density = att.get_layout(1024).float().mean().item()
        ratio = flops(lambda att=att: att(q, k, v, rpe=rpe)) / dense
        assert density < 0.25
        assert density <= ratio <= 2.5 * density, (type(config).__name__, density, ratio)


ERRORS = [
    (lambda a, q: a(q, q[:, :, :64], q[:, :, :64]), NotImplementedError, "only self-attention"),
    (lambda a, q: a(q[:, :, :40], q[:, :, :40], q[:, :, :40]), ValueError, "multiple of the block"),
    (lambda a, q: a(q[:, :2], q[:, :2], q[:, :2]), ValueError, "query has 2 heads"),
]


@pytest.mark.parametrize(("call", "error", "message"), ERRORS, ids=["cross", "length", "heads"])
def test_forward_errors(call, error, message):
    att = SparseSelfAttention(CONFIGS["fixed"](), max_seq_length=128)
    with pytest.raises(error, match=message):
        call(att, _qkv(128, grad=False)[0])


def test_constructor_errors_and_defaults():
    with pytest.raises(ValueError, match="attn_mask_mode='max' must be 'add' or 'mul'"):
        SparseSelfAttention(DenseSparsityConfig(H), attn_mask_mode="max")
    with pytest.raises(ValueError, match="exceeds max_seq_length=64"):
        SparseSelfAttention(DenseSparsityConfig(H), max_seq_length=64).get_layout(128)
    default = SparseSelfAttention(DenseSparsityConfig(H))
    assert (default.key_padding_mask_mode, default.attn_mask_mode) == ("add", "mul")
    assert default.max_seq_length == 2048
    with pytest.raises(NotImplementedError, match="does not define make_layout"):
        SparseSelfAttention()  # DeepSpeed's default: the abstract base config
    assert isinstance(SparsityConfig(4), SparsityConfig)

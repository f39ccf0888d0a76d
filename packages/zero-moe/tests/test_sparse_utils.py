"""SparseAttentionUtils on a BERT-shaped model (same attribute layout as Hugging Face's)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from zero_moe import (
    BertSparseSelfAttention,
    DenseSparsityConfig,
    FixedSparsityConfig,
    SparseAttentionUtils,
)


class SelfAttention(nn.Module):
    """Dense BERT self-attention: extended additive mask [B, 1, 1, L]."""

    def __init__(self, config, layout=None):
        super().__init__()
        self.heads = config.num_attention_heads
        self.query, self.key, self.value = (
            nn.Linear(config.hidden_size, config.hidden_size) for _ in range(3)
        )
        self.layout = layout

    def forward(self, x, attention_mask=None):
        b, t, d = x.shape
        q, k, v = (
            f(x).view(b, t, self.heads, -1).transpose(1, 2)
            for f in (self.query, self.key, self.value)
        )
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        if attention_mask is not None:
            scores = scores + attention_mask
        if self.layout is not None:
            scores = scores.masked_fill(~self.layout[:, :t, :t], float("-inf"))
        return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d), None


class Layer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = nn.Module()
        self.attention.self = SelfAttention(config)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x, mask):
        return x + self.out(self.attention.self(x, mask)[0])


class TinyBert(nn.Module):
    def __init__(self, config, attr="bert"):
        super().__init__()
        self.config = config
        encoder = nn.Module()
        encoder.embeddings = nn.Module()
        encoder.embeddings.word_embeddings = nn.Embedding(50, config.hidden_size)
        encoder.embeddings.position_embeddings = nn.Embedding(
            config.max_position_embeddings, config.hidden_size
        )
        encoder.embeddings.register_buffer(
            "position_ids", torch.arange(config.max_position_embeddings).expand(1, -1)
        )
        encoder.encoder = nn.Module()
        encoder.encoder.layer = nn.ModuleList(Layer(config) for _ in range(2))
        setattr(self, attr, encoder)
        self.attr = attr

    def forward(self, ids, attention_mask):
        enc = getattr(self, self.attr)
        t = ids.shape[1]
        x = enc.embeddings.word_embeddings(ids) + enc.embeddings.position_embeddings(
            enc.embeddings.position_ids[:, :t]
        )
        mask = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        for layer in enc.encoder.layer:
            x = layer(x, mask)
        return x


def _config():
    return SimpleNamespace(hidden_size=32, num_attention_heads=4, max_position_embeddings=64)


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (2, 64), generator=g)
    mask = torch.ones(2, 64, dtype=torch.long)
    mask[1, 50:] = 0
    return ids, mask


@pytest.mark.parametrize("sparse", [False, True], ids=["dense-layout", "fixed-layout"])
def test_replaced_model_equals_dense_masked_model(sparse):
    torch.manual_seed(0)
    model = TinyBert(_config())
    ids, mask = _batch()
    config = (
        FixedSparsityConfig(4, block=16, num_local_blocks=2)
        if sparse
        else DenseSparsityConfig(4, block=16)
    )
    layout = config.make_layout(64).repeat_interleave(16, 1).repeat_interleave(16, 2).bool()
    for layer in model.bert.encoder.layer:
        layer.attention.self.layout = layout
    expected = model(ids, mask)
    SparseAttentionUtils.replace_model_self_attention_with_sparse_self_attention(model, 64, config)
    assert all(
        isinstance(layer.attention.self, BertSparseSelfAttention)
        for layer in model.bert.encoder.layer
    )
    torch.testing.assert_close(model(ids, mask), expected, rtol=1e-5, atol=1e-5)


def test_pad_and_unpad_to_block_size():
    embed = nn.Embedding(50, 8)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    pad_len, ids_p, mask_p, types_p, pos_p, emb_p = SparseAttentionUtils.pad_to_block_size(
        4,
        ids,
        torch.ones(1, 5, dtype=torch.long),
        torch.ones(1, 5, dtype=torch.long),
        torch.arange(5)[None],
        None,
        0,
        embed,
    )
    assert pad_len == 3
    assert ids_p.tolist() == [[5, 6, 7, 8, 9, 0, 0, 0]]
    assert mask_p.tolist() == [[1, 1, 1, 1, 1, 0, 0, 0]]
    assert types_p.tolist() == [[1, 1, 1, 1, 1, 0, 0, 0]]
    assert pos_p.tolist() == [[0, 1, 2, 3, 4, 0, 0, 0]] and emb_p is None
    embeds = embed(ids)
    pad_len, none_ids, _, _, _, emb_p = SparseAttentionUtils.pad_to_block_size(
        4, None, None, None, None, embeds, 1, embed
    )
    assert none_ids is None and emb_p.shape == (1, 8, 8)
    torch.testing.assert_close(emb_p[0, 5:], embed.weight[1].expand(3, 8))
    torch.testing.assert_close(SparseAttentionUtils.unpad_sequence_output(pad_len, emb_p), embeds)
    same = SparseAttentionUtils.pad_to_block_size(5, ids, None, None, None, None, 0, embed)
    assert same[0] == 0 and same[1] is ids
    assert SparseAttentionUtils.unpad_sequence_output(0, embeds) is embeds


@pytest.mark.parametrize(("attr", "reserved"), [("bert", 0), ("roberta", 2)])
def test_extend_position_embedding_tiles_trained_rows(attr, reserved):
    model = TinyBert(_config(), attr=attr)
    old = getattr(model, attr).embeddings.position_embeddings.weight.detach().clone()
    SparseAttentionUtils.extend_position_embedding(model, 150)
    new = getattr(model, attr).embeddings.position_embeddings.weight
    assert new.shape == (150 + reserved, 32)
    assert model.config.max_position_embeddings == 150 + reserved
    body = old[reserved:]
    n = body.shape[0]
    torch.testing.assert_close(new[:reserved], old[:reserved])
    for i in range(150):
        torch.testing.assert_close(new[reserved + i], body[i % n])
    assert getattr(model, attr).embeddings.position_ids.shape == (1, 150 + reserved)
    with pytest.raises(ValueError, match="must exceed the current"):
        SparseAttentionUtils.extend_position_embedding(model, 10)


def test_utils_errors_and_tokenizer():
    with pytest.raises(ValueError, match="'bert' or 'roberta'"):
        SparseAttentionUtils.replace_model_self_attention_with_sparse_self_attention(
            nn.Linear(2, 2), 64
        )
    with pytest.raises(ValueError, match="the sparsity config has 2 heads, the model 4"):
        BertSparseSelfAttention(_config(), DenseSparsityConfig(2))
    tokenizer = SimpleNamespace(model_max_length=512, init_kwargs={})
    SparseAttentionUtils.update_tokenizer_model_max_length(tokenizer, 4096)
    assert tokenizer.model_max_length == 4096 == tokenizer.init_kwargs["model_max_length"]


def test_hugging_face_bert_when_transformers_is_installed():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config).eval()
    ids, mask = _batch()
    ids = ids % 100
    expected = model(ids, attention_mask=mask).logits
    SparseAttentionUtils.replace_model_self_attention_with_sparse_self_attention(
        model, 64, DenseSparsityConfig(4, block=16)
    )
    got = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(got[0], expected[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[1, :50], expected[1, :50], rtol=1e-4, atol=1e-4)
    # longer sequences: extend the positions first, then swap in sparse attention
    model = transformers.BertForMaskedLM(config).eval()
    SparseAttentionUtils.extend_position_embedding(model, 256)
    SparseAttentionUtils.replace_model_self_attention_with_sparse_self_attention(
        model, 256, FixedSparsityConfig(4, block=16)
    )
    assert model(torch.randint(0, 100, (1, 256))).logits.shape == (1, 256, 100)

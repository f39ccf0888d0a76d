"""Helpers to put SparseSelfAttention into Hugging Face BERT/RoBERTa-style models."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own spelling
from torch import Tensor, nn

from ._attention import SparseSelfAttention
from ._sparsity import SparsityConfig


class BertSparseSelfAttention(nn.Module):
    """A drop-in for a BERT layer's ``attention.self`` that attends through
    :class:`SparseSelfAttention`.

    Args:
        config: The model config (``hidden_size``, ``num_attention_heads``,
            ``max_position_embeddings``).
        sparsity_config: The layout; its ``num_heads`` must equal the model's heads.

    Raises:
        ValueError: The hidden size is not a multiple of the head count, or the head
            counts disagree.
    """

    def __init__(self, config, sparsity_config: SparsityConfig | None = None) -> None:
        super().__init__()
        heads = config.num_attention_heads
        if config.hidden_size % heads:
            raise ValueError(
                f"hidden size {config.hidden_size} is not a multiple of {heads} attention heads"
            )
        sparsity_config = sparsity_config or SparsityConfig(num_heads=heads)
        if sparsity_config.num_heads != heads:
            raise ValueError(
                f"the sparsity config has {sparsity_config.num_heads} heads, the model {heads}"
            )
        self.num_attention_heads = heads
        self.attention_head_size = config.hidden_size // heads
        self.all_head_size = config.hidden_size
        self.query = nn.Linear(config.hidden_size, self.all_head_size)
        self.key = nn.Linear(config.hidden_size, self.all_head_size)
        self.value = nn.Linear(config.hidden_size, self.all_head_size)
        self.sparse_self_attention = SparseSelfAttention(
            sparsity_config, max_seq_length=config.max_position_embeddings
        )

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_attention_heads, self.attention_head_size).transpose(1, 2)

    def forward(
        self, hidden_states: Tensor, attention_mask: Tensor | None = None, *args, **kwargs
    ) -> tuple[Tensor, None]:
        """``(context, None)``: the context ``[batch, seq, hidden]``; no attention probs.

        ``attention_mask`` is BERT's padding mask, extended to ``[batch, 1, 1, seq]`` or
        ``[batch, 1, seq, seq]`` (every query row alike), additive (0 keeps, a large
        negative number drops) or boolean (True keeps); it becomes the key-padding mask.

        Raises:
            NotImplementedError: A mask that differs between query rows.
        """
        q, k, v = (self._heads(f(hidden_states)) for f in (self.query, self.key, self.value))
        mask = None
        if attention_mask is not None:
            rows = attention_mask.reshape(q.shape[0], -1, attention_mask.shape[-1])
            if not (rows == rows[:, :1]).all():
                raise NotImplementedError(
                    "BertSparseSelfAttention takes padding masks only (the same for every "
                    "query); give other masks to SparseSelfAttention's attn_mask"
                )
            mask = rows[:, 0]
            if mask.dtype == torch.bool:
                mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(
                    ~mask, float("-inf")
                )
        context = self.sparse_self_attention(q, k, v, key_padding_mask=mask)
        b, _, t, _ = context.shape
        return context.transpose(1, 2).reshape(b, t, self.all_head_size), None


def _encoder_of(model: nn.Module) -> tuple[str, nn.Module]:
    for name in ("bert", "roberta"):
        if hasattr(model, name):
            return name, getattr(model, name)
    raise ValueError(
        "only models with a 'bert' or 'roberta' attribute (Hugging Face BERT/RoBERTa) are "
        f"supported, got {type(model).__name__}"
    )


class SparseAttentionUtils:
    """Static helpers to run BERT/RoBERTa-style models with sparse self-attention."""

    @staticmethod
    def extend_position_embedding(model: nn.Module, max_position: int) -> nn.Module:
        """Grow the position embeddings to ``max_position`` by tiling the trained ones.

        RoBERTa's two reserved leading rows stay in place (its table has
        ``max_position + 2`` rows). ``config.max_position_embeddings`` and the
        ``position_ids``/``token_type_ids`` buffers follow.

        Raises:
            ValueError: Not a BERT/RoBERTa model, or ``max_position`` not larger.
        """
        kind, encoder = _encoder_of(model)
        embeddings = encoder.embeddings
        old = embeddings.position_embeddings.weight.data
        reserved = 2 if kind == "roberta" else 0
        original = old.shape[0] - reserved
        if max_position <= original:
            raise ValueError(
                f"max_position={max_position} must exceed the current {original} positions"
            )
        reps = -(-max_position // original)
        body = old[reserved:].repeat(reps, 1)[:max_position]
        new = nn.Embedding(max_position + reserved, old.shape[1], device=old.device)
        new.weight.data = torch.cat([old[:reserved], body]).to(old.dtype)
        if embeddings.position_embeddings.padding_idx is not None:
            new.padding_idx = embeddings.position_embeddings.padding_idx
        embeddings.position_embeddings = new
        total = max_position + reserved
        if hasattr(embeddings, "position_ids"):
            embeddings.position_ids = torch.arange(total, device=old.device).expand(1, -1)
        if hasattr(embeddings, "token_type_ids"):
            embeddings.token_type_ids = torch.zeros(1, total, dtype=torch.long, device=old.device)
        model.config.max_position_embeddings = total
        return model

    @staticmethod
    def update_tokenizer_model_max_length(tokenizer, max_position: int):
        """Let a Hugging Face tokenizer produce sequences up to ``max_position`` tokens."""
        tokenizer.model_max_length = max_position
        tokenizer.init_kwargs["model_max_length"] = max_position
        return tokenizer

    @staticmethod
    def replace_model_self_attention_with_sparse_self_attention(
        model: nn.Module, max_position: int, sparsity_config: SparsityConfig | None = None
    ) -> nn.Module:
        """Replace every encoder layer's ``attention.self`` by a
        :class:`BertSparseSelfAttention` holding the same query/key/value weights.

        Raises:
            ValueError: Not a BERT/RoBERTa model.
        """
        _, encoder = _encoder_of(model)
        model.config.max_position_embeddings = max_position
        SparseAttentionUtils.replace_self_attention_layer_with_sparse_self_attention_layer(
            model.config, encoder.encoder.layer, sparsity_config
        )
        return model

    @staticmethod
    def replace_self_attention_layer_with_sparse_self_attention_layer(
        config, layers, sparsity_config: SparsityConfig | None = None
    ):
        """Swap ``layer.attention.self`` of each of ``layers`` for a sparse one."""
        for layer in layers:
            old = layer.attention.self
            new = BertSparseSelfAttention(config, sparsity_config)
            new.query, new.key, new.value = old.query, old.key, old.value
            layer.attention.self = new
        return layers

    @staticmethod
    def pad_to_block_size(
        block_size: int,
        input_ids: Tensor | None,
        attention_mask: Tensor | None,
        token_type_ids: Tensor | None,
        position_ids: Tensor | None,
        inputs_embeds: Tensor | None,
        pad_token_id: int,
        model_embeddings: nn.Module | None,
    ) -> tuple[int, Tensor | None, Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
        """Right-pad a batch so its length is a multiple of ``block_size``.

        ``input_ids`` get ``pad_token_id``, ``attention_mask`` and ``token_type_ids`` 0,
        ``position_ids`` ``pad_token_id`` (as BERT pads them), ``inputs_embeds`` the
        embedding of ``pad_token_id`` from ``model_embeddings``.

        Returns:
            ``(pad_len, input_ids, attention_mask, token_type_ids, position_ids,
            inputs_embeds)``; undo with :meth:`unpad_sequence_output`.
        """
        shaped = input_ids if input_ids is not None else inputs_embeds
        batch, seq_len = shaped.shape[:2]
        pad_len = (-seq_len) % block_size
        if pad_len == 0:
            return 0, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds

        def pad(t: Tensor | None, value: int) -> Tensor | None:
            return None if t is None else F.pad(t, (0, pad_len), value=value)

        if inputs_embeds is not None:
            ids = inputs_embeds.new_full((batch, pad_len), pad_token_id, dtype=torch.long)
            inputs_embeds = torch.cat([inputs_embeds, model_embeddings(ids)], dim=-2)
        return (
            pad_len,
            pad(input_ids, pad_token_id),
            pad(attention_mask, 0),
            pad(token_type_ids, 0),
            pad(position_ids, pad_token_id),
            inputs_embeds,
        )

    @staticmethod
    def unpad_sequence_output(pad_len: int, sequence_output: Tensor) -> Tensor:
        """Drop the ``pad_len`` positions :meth:`pad_to_block_size` added."""
        return sequence_output[:, :-pad_len] if pad_len > 0 else sequence_output

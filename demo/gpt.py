"""A small GPT: the demo's model, written so a plain PyTorch user can read it in one sitting.

Pre-norm transformer blocks, causal self-attention through ``scaled_dot_product_attention``,
learned positions, untied input and output embeddings. Nothing here knows about zerospeed:
the same class trains under the ZeRO engine and loads the converted fp32 state dict for
sampling, which is the point of the demo.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (PyTorch's own spelling)

_LOW_PRECISION = (torch.bfloat16, torch.float16)


class _LinearFunction(torch.autograd.Function):
    """``F.linear`` whose input gradient multiplies by a column-major copy of the weight.

    On x86 CPUs without native bf16 instructions (AVX2 only), torch's bf16 matrix product
    is fast when its right operand is column-major and falls to a slow kernel when it is
    row-major; the input gradient of ``nn.Linear`` (``grad @ weight``) is the slow case:
    1.76 s against 0.16 s for a 1024x1024 by 1024x256 product on one thread, measured on
    the demo machine. Copying the weight into the fast layout costs one small copy per
    backward and keeps the demo's bf16 run within minutes. The numbers are the same.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        flat = grad.reshape(-1, grad.shape[-1])
        grad_x = (flat @ weight.t().contiguous().t()).view(*grad.shape[:-1], weight.shape[1])
        grad_w = flat.t() @ x.reshape(-1, x.shape[-1])
        grad_b = flat.sum(0) if ctx.has_bias else None
        return grad_x, grad_w, grad_b


class Linear(nn.Linear):
    """``nn.Linear`` that takes the fast bf16/fp16 path on CPUs (see ``_LinearFunction``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype in _LOW_PRECISION and torch.is_grad_enabled():
            return _LinearFunction.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    context: int = 128
    layers: int = 4
    heads: int = 4
    width: int = 192
    dropout: float = 0.1

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)


class SelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        if cfg.width % cfg.heads:
            raise ValueError(f"width {cfg.width} is not divisible by heads {cfg.heads}")
        self.heads = cfg.heads
        self.qkv = Linear(cfg.width, 3 * cfg.width)
        self.out = Linear(cfg.width, cfg.width)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).unbind(2)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            is_causal=True,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width)
        self.attn = SelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width)
        self.mlp = nn.Sequential(
            Linear(cfg.width, 4 * cfg.width),
            nn.GELU(),
            Linear(4 * cfg.width, cfg.width),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positions = nn.Embedding(cfg.context, cfg.width)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)
        self.head = Linear(cfg.width, cfg.vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits, or the mean cross-entropy (in fp32) when ``targets`` is given."""
        t = idx.shape[1]
        if t > self.cfg.context:
            raise ValueError(f"{t} tokens do not fit the context of {self.cfg.context}")
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tokens(idx) + self.positions(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        new_tokens: int,
        temperature: float = 0.8,
        top_k: int | None = 20,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``new_tokens`` tokens after the prompt ``idx`` (batch, time)."""
        for _ in range(new_tokens):
            logits = self(idx[:, -self.cfg.context :])[:, -1].float() / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx

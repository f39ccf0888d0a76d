"""The demo's corpus as training examples: characters in, next characters out.

A character vocabulary keeps the demo free of tokenizer downloads and makes its samples
easy to judge by eye. The text is split once into a training part and a held-out tail;
training examples are the non-overlapping windows of the training part, so an epoch sees
every character once and the engine's distributed sampler can shuffle and resume them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CORPUS = Path(__file__).with_name("data") / "kjv.txt"


class Vocabulary:
    def __init__(self, chars: str) -> None:
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def of_text(cls, text: str) -> Vocabulary:
        return cls("".join(sorted(set(text))))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        return cls(json.loads(Path(path).read_text(encoding="utf-8"))["chars"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"chars": self.chars}), encoding="utf-8")

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        unknown = sorted(set(text) - self.index.keys())
        if unknown:
            raise ValueError(f"characters {unknown} are not in the vocabulary")
        return torch.tensor([self.index[c] for c in text], dtype=torch.long)

    def decode(self, ids: torch.Tensor) -> str:
        return "".join(self.chars[i] for i in ids.tolist())


class Windows(torch.utils.data.Dataset):
    """Window ``i`` is ``tokens[i*L : i*L+L]`` as input and the same shifted by one as target."""

    def __init__(self, tokens: torch.Tensor, length: int) -> None:
        self.tokens = tokens
        self.length = length

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.tokens[i * self.length : (i + 1) * self.length + 1]
        return chunk[:-1], chunk[1:]


def load_corpus(
    length: int, holdout: float = 0.05, path: Path = CORPUS
) -> tuple[Vocabulary, Windows, Windows]:
    """The vocabulary, the training windows and the held-out windows."""
    text = path.read_text(encoding="utf-8")
    vocab = Vocabulary.of_text(text)
    tokens = vocab.encode(text)
    cut = int(len(tokens) * (1 - holdout))
    return vocab, Windows(tokens[:cut], length), Windows(tokens[cut:], length)

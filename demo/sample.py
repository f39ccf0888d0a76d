"""Sample text from the demo model using only the converted fp32 state dict.

No process group, no zerospeed: the file ``zerospeed convert`` wrote loads into the plain
``GPT`` with ``load_state_dict(strict=True)``, which is how a trained model leaves the
training stack.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from corpus import Vocabulary
from gpt import GPT, GPTConfig

PROMPTS = ["In the beginning", "And the LORD said unto Moses,", "Blessed is the man", "A wise son"]


def load_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from zero_core import load_safetensors

        return load_safetensors(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights", type=Path, help="the converted .safetensors or .pt file")
    p.add_argument("--run", type=Path, help="the training output dir (default: the file's)")
    p.add_argument("--chars", type=int, default=160, help="characters to sample per prompt")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    run = args.run or args.weights.parent
    vocab = Vocabulary.load(run / "vocab.json")
    model = GPT(GPTConfig(**json.loads((run / "model.json").read_text())))
    model.load_state_dict(load_state(args.weights), strict=True)
    model.eval()
    generator = torch.Generator().manual_seed(args.seed)
    for prompt in PROMPTS:
        ids = vocab.encode(prompt).unsqueeze(0)
        ids = model.generate(ids, args.chars, args.temperature, generator=generator)
        text = vocab.decode(ids[0])
        print(f"--- {prompt!r}\n{text}\n")


if __name__ == "__main__":
    main()

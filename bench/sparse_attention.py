"""Sparse self-attention time and peak memory: zero_moe's SparseSelfAttention against dense
``F.scaled_dot_product_attention`` (and, with ``--flex``, PyTorch's FlexAttention).

What it measures
    Forward time (no grad) and peak extra memory of one attention call on
    ``[1, --heads, L, --head-dim]`` float32 inputs for L in ``--lengths``:

    * dense ``F.scaled_dot_product_attention`` (no mask);
    * ``SparseSelfAttention`` with a Fixed layout (block 16: ``num_local_blocks=16``, about
      9% of the blocks at 8k; block 64: ``num_local_blocks=8``) and a BigBird layout
      (1 random, 3 sliding-window and 1 global block per row), blocks of 16 and 64;
    * with ``--flex``: ``torch.compile(flex_attention)`` with a ``BlockMask`` of the same
      layout (``BLOCK_SIZE`` = the layout's block), the alternative kept out of zero_moe
      because it was slower on CPU; its compile time is printed apart.

    ``blocks`` is the number of nonzero (head, query block, key block) triples; ``us/block``
    the sparse time divided by it: flat across lengths when time grows with the nonzero
    blocks rather than with L**2. Targets: that, and at 8k with the ~9% Fixed layout
    (block 16) at least 3x faster than dense.

Method
    Each measurement runs in a fresh subprocess so that its peak resident memory is its
    own: the peak is ``ru_maxrss`` after the first call minus ``ru_maxrss`` before it (inputs
    and module already built). Times are the best of ``--repeats`` calls after that first
    call (on a shared machine interference only adds time).

Run
    python bench/sparse_attention.py [--lengths 1024,2048,4096,8192] [--heads 4]
                                     [--head-dim 64] [--repeats 3] [--threads 2] [--flex]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own spelling

from _machine import cpu_model  # bench/ is on sys.path when a script runs
from zero_moe import BigBirdSparsityConfig, FixedSparsityConfig, SparseSelfAttention

LAYOUTS = {
    ("fixed", 16): lambda h: FixedSparsityConfig(h, block=16, num_local_blocks=16),
    ("fixed", 64): lambda h: FixedSparsityConfig(h, block=64, num_local_blocks=8),
    ("bigbird", 16): lambda h: BigBirdSparsityConfig(h, block=16, num_random_blocks=1, seed=0),
    ("bigbird", 64): lambda h: BigBirdSparsityConfig(h, block=64, num_random_blocks=1, seed=0),
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    length, heads = spec["length"], spec["heads"]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, length, spec["head_dim"], generator=g) for _ in range(3))
    result: dict = {}
    if spec["impl"] == "dense":
        call = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
    else:
        config = LAYOUTS[(spec["layout"], spec["block"])](heads)
        layout = config.make_layout(length)
        result["blocks"] = int(layout.sum())
        result["density"] = float(layout.float().mean())
        if spec["impl"] == "sparse":
            att = SparseSelfAttention(config, max_seq_length=length)
            call = lambda: att(q, k, v)  # noqa: E731
        else:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            dense_layout = layout.bool()
            block = spec["block"]

            def mask_mod(b, h, qi, ki):
                return dense_layout[h, qi // block, ki // block]

            mask = create_block_mask(mask_mod, None, heads, length, length, device="cpu",
                                     BLOCK_SIZE=block)  # fmt: skip
            flex = torch.compile(flex_attention, dynamic=False)
            call = lambda: flex(q, k, v, block_mask=mask)  # noqa: E731
    with torch.no_grad():
        before = _rss_mb()
        start = time.perf_counter()
        call()
        result["first"] = time.perf_counter() - start
        result["peak_mb"] = _rss_mb() - before
        best = float("inf")
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            call()
            best = min(best, time.perf_counter() - start)
    result["time"] = best
    return result


def _run(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1024,2048,4096,8192")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--flex", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    base = {"heads": args.heads, "head_dim": args.head_dim, "repeats": args.repeats,
            "threads": args.threads}  # fmt: skip
    print(f"# Sparse self-attention forward, {' '.join(sys.argv[1:]) or 'defaults'}")
    print(
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), torch {torch.__version__}, "
        f"{args.threads} threads; q/k/v [1, {args.heads}, L, {args.head_dim}] float32"
    )
    print()
    head = "| L | layout | block | density | blocks | time ms | us/block | peak MB | vs dense |"
    if args.flex:
        head += " flex ms | flex compile s |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for length in (int(x) for x in args.lengths.split(",")):
        dense = _run({**base, "impl": "dense", "length": length})
        row = f"| {length} | dense SDPA | - | 100% | - | {dense['time'] * 1e3:.1f} | - | "
        row += f"{dense['peak_mb']:.0f} | 1.0x |"
        print(row + (" - | - |" if args.flex else ""), flush=True)
        for layout, block in LAYOUTS:
            spec = {**base, "impl": "sparse", "length": length, "layout": layout, "block": block}
            got = _run(spec)
            per_block = got["time"] / got["blocks"] * 1e6
            row = (f"| {length} | {layout} | {block} | {got['density']:.1%} | {got['blocks']} | "
                   f"{got['time'] * 1e3:.1f} | {per_block:.2f} | {got['peak_mb']:.0f} | "
                   f"{dense['time'] / got['time']:.1f}x |")  # fmt: skip
            if args.flex:
                flex = _run({**spec, "impl": "flex"})
                row += f" {flex['time'] * 1e3:.1f} | {flex['first']:.0f} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()

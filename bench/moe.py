"""MoE layer throughput: zero_moe's MoE against a loop over experts and a dense MLP.

What it measures
    Forward + backward tokens/s of one MoE layer (``--experts`` experts, each an MLP
    ``hidden -> ffn -> hidden`` with GELU; ``--tokens`` tokens per rank) for top-1 and
    top-2 gating, on 1 rank and on 2 gloo ranks with expert parallelism (``ep_size=2``, each
    rank holding half the experts and its own ``--tokens`` tokens), beside

    * a naive MoE: the same gate, then a Python loop over experts, each running its MLP on
      the tokens routed to it (``index_select`` / ``index_add``), no capacity buffer;
    * a dense MLP with the same *active* parameters per token (hidden ``k * ffn``);
    * the same MoE with ``grouped_experts=False`` (the experts in a loop over the same
      capacity buffer instead of one vmapped computation);
    * the share of the MoE step spent outside the experts (gating, dispatch, combine and,
      on 2 ranks, the two all-to-alls): ``1 - experts / total``, where ``experts`` is the
      forward + backward time of the grouped experts alone on a buffer of the same
      ``[experts, capacity, hidden]`` shape. Target: under 25%.

Method
    Capacity factor 1.0, min_capacity 4, tokens dropped on overflow, random token
    selection on (DeepSpeed's defaults). One intra-op thread per rank (``--threads``), so
    the 2-rank rows use the machine's two cores and the 1-rank rows one. Each number is the
    best of ``--repeats`` rounds after a warm-up; each round runs every variant once in a
    rotated order (on a shared machine interference only adds time, and rotation spreads
    drift over all variants); every step runs forward, ``(out.sum() + l_aux).backward()``
    and clears the gradients.

Run
    python bench/moe.py [--tokens 2048] [--hidden 256] [--ffn 1024] [--experts 8]
                        [--repeats 7] [--threads 1] [--no-2ranks]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from _machine import cpu_model  # bench/ is on sys.path when a script runs
from zero_moe import MoE, compute_capacity


def _mlp(hidden: int, ffn: int) -> nn.Module:
    return nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Linear(ffn, hidden))


def _train_step(module, x, moe: bool):
    def step():
        out = module(x)
        loss = out[0].sum() + out[1] if moe else out.sum()
        loss.backward()
        module.zero_grad(set_to_none=True)
        x.grad = None

    return step


class NaiveMoE(nn.Module):
    """The textbook MoE: the same gate, then a loop over experts."""

    def __init__(self, moe: MoE) -> None:
        super().__init__()
        self.gate = moe.deepspeed_moe.gate
        self.experts = moe.deepspeed_moe.experts.deepspeed_experts

    def forward(self, x):
        routing = self.gate(x)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            chosen = (routing.expert == e) & routing.kept
            tok, choice = chosen.nonzero(as_tuple=True)
            if tok.numel():
                y = expert(x.index_select(0, tok))
                out = out.index_add(0, tok, y * routing.weight[tok, choice][:, None])
        return out, routing.l_aux


def _measure(args, k: int, ep_size: int, sync=None) -> dict:
    torch.manual_seed(0)
    x = torch.randn(args.tokens, args.hidden, requires_grad=True)
    moe = MoE(args.hidden, _mlp(args.hidden, args.ffn), num_experts=args.experts,
              ep_size=ep_size, k=k)  # fmt: skip
    capacity = compute_capacity(args.tokens, args.experts, 1.0, k, 4)
    experts = moe.deepspeed_moe.experts
    buffer = torch.randn(moe.num_local_experts, capacity * ep_size, args.hidden,
                         requires_grad=True)  # fmt: skip

    def experts_step():
        experts(buffer).sum().backward()
        experts.zero_grad(set_to_none=True)
        buffer.grad = None

    moe_step = _train_step(moe, x, True)

    def looped_step():
        experts.grouped = False
        moe_step()
        experts.grouped = True

    steps = {"moe": moe_step, "experts": experts_step, "looped": looped_step}
    if ep_size == 1:
        steps["naive"] = _train_step(NaiveMoE(moe), x, True)
        steps["dense"] = _train_step(_mlp(args.hidden, k * args.ffn), x, False)
    return _interleaved(steps, args.repeats, sync)


def _interleaved(steps: dict, repeats: int, sync=None) -> dict:
    """Best time of each step over ``repeats`` rounds; each round runs every step once, in
    a rotated order, so drift on a shared machine hits them alike."""
    names = list(steps)
    for name in names:  # warm-up
        steps[name]()
    best = dict.fromkeys(names, float("inf"))
    for round_ in range(repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            if sync:
                sync()
            start = time.perf_counter()
            steps[name]()
            if sync:
                sync()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _rank(rank: int, store: str, args, out: str) -> None:
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=600))  # fmt: skip
    try:
        rows = {k: _measure(args, k, 2, sync=dist.barrier) for k in (1, 2)}
        if rank == 0:
            torch.save(rows, out)
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--ffn", type=int, default=1024)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-2ranks", dest="two_ranks", action="store_false")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"# MoE layer forward+backward, {' '.join(sys.argv[1:]) or 'defaults'}")
    print(f"- CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), torch {torch.__version__}, "
          f"{args.threads} thread(s) per rank")  # fmt: skip
    print(f"- {args.experts} experts of {args.hidden}->{args.ffn}->{args.hidden}, "
          f"{args.tokens} tokens per rank, capacity factor 1.0")  # fmt: skip
    results = {(1, k): _measure(args, k, 1) for k in (1, 2)}
    if args.two_ranks:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "rows.pt")
            mp.spawn(_rank, args=(os.path.join(tmp, "store"), args, out), nprocs=2)
            for k, row in torch.load(out).items():
                results[(2, k)] = row

    print()
    print("| ranks | k | zero_moe tokens/s | zero_moe, grouped_experts=False | naive loop "
          "tokens/s | dense MLP (same active params) tokens/s | outside-experts share "
          "(target < 25%) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for (ranks, k), row in sorted(results.items()):
        tps = ranks * args.tokens / row["moe"]
        naive = f"{args.tokens / row['naive']:,.0f}" if "naive" in row else "-"
        dense = f"{args.tokens / row['dense']:,.0f}" if "dense" in row else "-"
        share = max(0.0, 1 - row["experts"] / row["moe"])
        looped = ranks * args.tokens / row["looped"]
        print(f"| {ranks} | {k} | {tps:,.0f} | {looped:,.0f} | {naive} | {dense} | {share:.0%} |")


if __name__ == "__main__":
    main()

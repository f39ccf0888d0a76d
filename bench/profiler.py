"""Flop counts and profiling overhead: zero_profiler against a hand count, torch and DeepSpeed.

What it measures
    For a GPT-style model (pure torch, ~27M parameters, batch 4, sequence 256; attention
    written once as explicit matmuls and once with ``F.scaled_dot_product_attention``) and a
    small conv net:

    * the forward flops zero_profiler counts, split into product flops (2 x MACs: matmuls,
      convolutions, attention products) and the total with elementwise work;
    * the same two numbers computed by hand in this script from the layer sizes (the
      "analytic" columns), with zero_profiler's counting convention for elementwise work;
    * ``torch.utils.flop_counter.FlopCounterMode``'s total (it counts products only);
    * DeepSpeed's ``get_model_profile`` flops, when ``import deepspeed`` works in this
      interpreter (otherwise the column says it is not installed);
    * the measured backward flops (zero_profiler, ``mode="train"``) and their ratio to the
      forward, which DeepSpeed assumes to be 2;
    * forward latency without and with profiling, and the ratio (the overhead).

Why
    A flops profiler is only useful if its numbers are right and it does not distort the
    timings it reports. The product flops must equal the hand count exactly; the overhead
    target is at most 1.15x the plain forward on the GPT model.

Method
    Counts come from one forward (and one backward for the train column) after a warm-up.
    Timing: each configuration (plain forward; forward with zero_profiler's
    ``FlopsProfiler``; with DeepSpeed's ``FlopsProfiler`` when available; each profiled
    forward includes that profiler's ``start_profile``/``stop_profile``/``end_profile``) is
    timed in ``--repeats`` rounds (more for models whose forward takes under a second, up
    to about a second per configuration), each round running every configuration once in a
    rotated order so drift on a shared machine hits them alike. Best (minimum) and median
    times are reported; the overhead ratio is best / best of the plain forward, because on
    a shared machine interference only ever adds time, so the minimum is the steadiest
    estimate of a configuration's own cost (the median ratio is printed too). Forward passes
    run under ``torch.no_grad()``.
    The script aborts if zero_profiler's product flops differ from the hand count.

Run
    python bench/profiler.py [--repeats 9] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own spelling
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import zero_profiler
from _machine import cpu_model  # bench/ is on sys.path when a script runs
from zero_profiler import FlopsProfiler

# GPT-style model: 27.4M parameters
VOCAB, D, LAYERS, HEADS, SEQ, BATCH = 8192, 512, 6, 8, 256, 4
# conv net input
CONV_BATCH, CONV_HW = 8, 32


class Attention(nn.Module):
    def __init__(self, sdpa: bool) -> None:
        super().__init__()
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)
        self.sdpa = sdpa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (
            z.view(b, t, HEADS, c // HEADS).transpose(1, 2) for z in self.qkv(x).split(c, dim=2)
        )
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            y = F.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, sdpa: bool) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn = Attention(sdpa)
        self.fc, self.act, self.out = nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(self.act(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, sdpa: bool) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(VOCAB, D), nn.Embedding(SEQ, D)
        self.blocks = nn.ModuleList(Block(sdpa) for _ in range(LAYERS))
        self.ln = nn.LayerNorm(D)
        self.head = nn.Linear(D, VOCAB, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


class ConvNet(nn.Module):
    """conv 3x3 -> conv 3x3 stride 2 -> depthwise 3x3 -> pointwise 1x1 -> max pool ->
    global average pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1, groups=64),
            nn.ReLU(),
            nn.Conv2d(64, 128, 1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def gpt_analytic() -> tuple[int, int]:
    """(product flops, total flops) of one GPT forward, by hand.

    Products: per layer the qkv, proj, fc and out linears (12 d^2 MACs per token) and the
    two attention products (2 T d MACs per token); then the vocabulary head. Elementwise
    (zero_profiler's convention): embedding add 1; per layer two layer norms 7 (5 + weight
    + bias), the biases of qkv (3d), proj (d), fc (4d), out (d), GELU 4d and two residual
    adds; per score the scale 1 and softmax 5 (explicit and SDPA alike); a final layer norm.
    """
    tokens = BATCH * SEQ
    macs = LAYERS * (tokens * 12 * D * D + 2 * BATCH * SEQ * SEQ * D) + tokens * D * VOCAB
    per_layer = tokens * D * (7 + 7 + 3 + 1 + 4 + 1 + 4 + 2) + 6 * BATCH * HEADS * SEQ * SEQ
    elementwise = tokens * D + LAYERS * per_layer + 7 * tokens * D
    return 2 * macs, 2 * macs + elementwise


def conv_analytic() -> tuple[int, int]:
    """(product flops, total flops) of one ConvNet forward, by hand: MACs of a convolution
    are out_elements * (C_in / groups) * k * k; elementwise adds each bias (1 per output
    element) and ReLU (1), the 2x2 max pool (4 per output) and the global average (1 per
    input element)."""
    b, hw = CONV_BATCH, CONV_HW
    out1, out2 = b * 32 * hw * hw, b * 64 * (hw // 2) ** 2
    out3, out4 = b * 64 * (hw // 2) ** 2, b * 128 * (hw // 2) ** 2
    macs = out1 * 3 * 9 + out2 * 32 * 9 + out3 * 1 * 9 + out4 * 64 + b * 128 * 10
    pooled = b * 128 * (hw // 4) ** 2
    elementwise = 2 * (out1 + out2 + out3 + out4) + 4 * pooled + pooled + b * 10
    return 2 * macs, 2 * macs + elementwise


@dataclass
class Case:
    name: str
    model: nn.Module
    inputs: tuple[torch.Tensor, ...]
    analytic: tuple[int, int]


def load_deepspeed() -> tuple[object | None, str]:
    """DeepSpeed's flops_profiler module if ``import deepspeed`` works, else the reason."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            import deepspeed
            from deepspeed.profiling import flops_profiler
    except Exception as e:  # any failure means the column is n/a
        return None, f"not installed ({type(e).__name__}: {str(e)[:120]})"
    return flops_profiler, f"deepspeed {deepspeed.__version__}"


def fmt_g(flops: float | None) -> str:
    return "n/a" if flops is None else f"{flops / 1e9:.4f}"


def count_case(case: Case, ds: object | None) -> dict[str, object]:
    model, inputs = case.model, case.inputs
    with torch.no_grad():
        prof = FlopsProfiler(model)
        prof.start_profile()
        model(*inputs)
        prof.stop_profile()
        ours_total, ours_macs = prof.get_total_flops(), prof.get_total_macs()
        unknown = prof.unknown_operators()
        prof.end_profile()
        with FlopCounterMode(display=False) as counter:
            model(*inputs)
    train = FlopsProfiler(model)
    train.start_profile()
    model(*inputs).float().sum().backward()
    train.stop_profile()
    bwd = train.get_total_backward_flops()
    train.end_profile()
    model.zero_grad(set_to_none=True)
    ds_flops = None
    if ds is not None:
        with contextlib.redirect_stdout(sys.stderr), torch.no_grad():
            ds_flops, _, _ = ds.get_model_profile(
                model, args=list(inputs), print_profile=False, as_string=False, warm_up=1
            )
    products, total = 2 * ours_macs, ours_total
    if products != case.analytic[0]:
        sys.exit(
            f"ABORT: {case.name}: zero_profiler counts {products} product flops, the hand "
            f"count is {case.analytic[0]}"
        )
    return {
        "products": products,
        "total": total,
        "torch": counter.get_total_flops(),
        "ds": ds_flops,
        "bwd": bwd,
        "unknown": unknown,
    }


def time_case(case: Case, ds: object | None, repeats: int) -> dict[str, list[float]]:
    """Median-ready forward times of the plain model and under each profiler, interleaved."""
    model, inputs = case.model, case.inputs
    ours = FlopsProfiler(model)

    def plain() -> None:
        model(*inputs)

    def with_ours() -> None:
        ours.start_profile()
        try:
            model(*inputs)
        finally:
            ours.stop_profile()
            ours.end_profile()

    runs: dict[str, Callable[[], None]] = {"plain": plain, "zero_profiler": with_ours}
    if ds is not None:
        theirs = ds.FlopsProfiler(model)

        def with_deepspeed() -> None:
            with contextlib.redirect_stdout(sys.stderr):
                theirs.start_profile()
                try:
                    model(*inputs)
                finally:
                    theirs.stop_profile()
                    theirs.end_profile()

        runs["deepspeed"] = with_deepspeed
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.no_grad():
        for fn in runs.values():
            fn()  # warm-up
        start = time.perf_counter()
        plain()
        # small models get more rounds (about a second per configuration), so the median of
        # a few-millisecond forward is not one scheduler hiccup
        rounds = max(repeats, min(200, int(1.0 / (time.perf_counter() - start))))
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                start = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds per model (min)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be positive")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ds, ds_note = load_deepspeed()

    idx = torch.randint(0, VOCAB, (BATCH, SEQ))
    image = torch.randn(CONV_BATCH, 3, CONV_HW, CONV_HW)
    cases = [
        Case("GPT, explicit attention", GPT(sdpa=False), (idx,), gpt_analytic()),
        Case("GPT, SDPA", GPT(sdpa=True), (idx,), gpt_analytic()),
        Case("ConvNet", ConvNet(), (image,), conv_analytic()),
    ]
    params = sum(p.numel() for p in cases[0].model.parameters())

    print("# Flops profiler: accuracy and overhead")
    print()
    print(f"- command: `{shlex.join([sys.executable, *sys.argv])}`")
    print(f"- torch {torch.__version__}, Python {platform.python_version()}, {platform.system()}")
    print(f"- CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), threads: {args.threads}")
    print(f"- zero_profiler {zero_profiler.__version__}; DeepSpeed: {ds_note}")
    print(
        f"- GPT: {params / 1e6:.2f}M params, d={D}, {LAYERS} layers, {HEADS} heads, vocab "
        f"{VOCAB}, batch {BATCH}, seq {SEQ}; ConvNet: batch {CONV_BATCH}, 3x{CONV_HW}x{CONV_HW}"
    )
    print(
        f"- timing: best and median of >= {args.repeats} interleaved rounds, forward under "
        "no_grad; ratio = best / best of plain (median ratio in parentheses)"
    )
    print()
    print("## Forward flops (GFLOPs)")
    print()
    print(
        "| model | zero_profiler products (2 x MACs) | hand count, products | "
        "zero_profiler total | hand count, total | FlopCounterMode | DeepSpeed | "
        "measured bwd / fwd |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    results = []
    for case in cases:
        counts = count_case(case, ds)
        results.append(counts)
        exact = "= (exact)" if counts["total"] == case.analytic[1] else "(differs)"
        print(
            f"| {case.name} | {fmt_g(counts['products'])} | {fmt_g(case.analytic[0])} | "
            f"{fmt_g(counts['total'])} | {fmt_g(case.analytic[1])} {exact} | "
            f"{fmt_g(counts['torch'])} | {fmt_g(counts['ds'])} | "
            f"{counts['bwd'] / counts['total']:.3f} |"
        )
        sys.stdout.flush()
    unknown = {k: v for r in results for k, v in r["unknown"].items()}
    print()
    print(f"Operators zero_profiler could not count: {unknown or 'none'}")
    print()
    print("## Forward latency (ms: best / median) and profiling overhead")
    print()
    header = "| model | rounds | plain | zero_profiler | ratio |"
    rule = "|---|---:|---:|---:|---:|"
    if ds is not None:
        header += " DeepSpeed | ratio |"
        rule += "---:|---:|"
    print(header)
    print(rule)
    for case in cases:
        times = time_case(case, ds, args.repeats)
        best = {name: min(ts) * 1e3 for name, ts in times.items()}
        med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
        row = f"| {case.name} | {len(times['plain'])} | {best['plain']:.1f} / {med['plain']:.1f} |"
        for name in ("zero_profiler", "deepspeed") if ds is not None else ("zero_profiler",):
            row += (
                f" {best[name]:.1f} / {med[name]:.1f} | {best[name] / best['plain']:.3f}x "
                f"({med[name] / med['plain']:.2f}x) |"
            )
        print(row)
        sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Time of one CPU Adam step: zero_optim's CPUAdam against torch's Adam paths and DeepSpeed's.

What it measures
    The wall-clock time of one ``optimizer.step()`` over ``--sizes`` fp32 parameters (16M
    and 128M by default; K/M/G are binary, so 16M is 16 * 2**20 params), laid out (``--layouts``)
    as one flat tensor (what ZeRO-Offload steps: one flat partition per group) and as a GPT's
    list of tensors (what a user's ``model.parameters()`` gives: 39 tensors at 16M, 171 at
    128M, many of them a few hundred elements), for

    * zero_optim ``CPUAdam`` (fp32 params, grads and states);
    * ``torch.optim.Adam(foreach=True)`` (multi-tensor path);
    * ``torch.optim.AdamW(fused=True)`` (torch's fused CPU kernel);
    * ``torch.optim.Adam(foreach=False)`` (the default single-tensor for-loop path on CPU);
    * DeepSpeed's ``DeepSpeedCPUAdam`` when ``deepspeed`` imports and its ``cpu_adam`` op
      builds (a JIT C++ build on first use); its row reads "n/a" with the reason otherwise;

    and, as extra rows, zero_optim ``CPUAdam`` writing a bf16 copy of the updated params in
    the same sweep (``fp16_param_groups``), and ``CPUAdam`` on bf16 params and grads with fp32
    states. Every row uses lr=1e-3, betas=(0.9, 0.999), eps=1e-8 and weight_decay=0, so Adam
    and AdamW are the same update and every row does the same arithmetic.

Why
    With ZeRO-Offload the optimizer states live in CPU memory and the optimizer step runs on
    the CPU, so a training step can go no faster than the CPU Adam step over every parameter.
    That step does a handful of flops per parameter but moves 28 bytes (read param, grad,
    exp_avg, exp_avg_sq; write param, exp_avg, exp_avg_sq): it is bound by memory bandwidth,
    not by arithmetic. The meaningful yardstick is therefore the machine's streaming
    bandwidth, and the question is how close each implementation gets to it.

Method
    * Bandwidth: an in-place ``a.add_(b)`` over two fp32 buffers of the same element count,
      on the same number of threads, counted as 12 bytes per element (read a, read b, write
      a); the best of ``--repeats`` runs after 2 warm-ups. The fp32 Adam limit is then
      ``28 * n / bandwidth``. A plain ``dst.copy_(src)`` (8 bytes per element) is reported
      for information. Neither counts write-allocate traffic; Adam's 28 bytes do not either.
    * Correctness, before any timing and at every size: one step from identical inputs with
      CPUAdam and with ``torch.optim.AdamW`` (weight_decay 0 and 0.01) must agree to atol
      1e-6, and the bf16 copy must equal the updated fp32 params rounded to bf16; the script
      aborts otherwise.
    * Timing: each optimizer takes 2 warm-up steps (which also allocate and fault in its
      states). The fast ones (zero_optim, torch fused, DeepSpeed) are then timed in
      ``--repeats`` rounds, each round stepping every one of them once in a shuffled order, so
      bandwidth drift on a shared machine hits them alike. The fp32 ones step one shared set
      of params, grads and Adam moments (see [Note: one set of buffers for the interleaved
      rows]); the bf16-params row has its own. torch's foreach and single-tensor paths are
      timed afterwards, one at a time, on fresh buffers. Best and median per row are
      reported.
    * Model layout: a GPT of width 512 (768 from 64M params) with as many blocks (ln, qkv,
      proj, ln, fc, fc-proj weights and biases: 12 tensors) as fit in three quarters of the
      size, the rest in an embedding tensor. Same bytes as the flat layout; what differs is
      each implementation's per-tensor cost (checks, launches, step counters).
    * Threads: ``torch.set_num_threads(--threads)`` (torch's and DeepSpeed's OpenMP) and
      ``CPUAdam(num_threads=--threads)``.

Columns
    Mparams/s is 1e6 params per second of the best time. "% of add_-probe limit" is the
    row's bytes per param (28 for fp32 Adam, 30 with the bf16 copy, 22 for bf16 params with
    fp32 states) times n over the probe bandwidth, divided by the best time. "ratio" is the
    best time of the fastest non-zero_optim row (torch fused/foreach/single, DeepSpeed)
    divided by this row's best time: above 1, this row is faster than every alternative.
    "paired ratio" (rows timed interleaved only) compares within each round: the fastest
    interleaved alternative's time in that round over this row's time in the same round,
    median over rounds. Best times can each come from a different lucky moment; the paired
    ratio only compares steps taken seconds apart, so bandwidth drift cancels out of it.

[Note: one set of buffers for the interleaved rows]
    Where a buffer's pages land in physical memory changes how fast it streams: on this
    project's 2-core EPYC VM, the very same kernel stepping two separately allocated 16M
    buffer sets differed by 5-7% (paired median over 30 rounds, run twice), and by 0-1% when
    both stepped one set. That is as large as the differences this script exists to measure,
    and it would go to whichever optimizer happened to get the better pages. So the
    interleaved fp32 rows all step the same param, grad and exp_avg/exp_avg_sq tensors: after
    its warm-up each optimizer's moments are rebound to the first one's (``share_states``).
    The values they step from differ round to round, which does not change the work (no
    data-dependent paths; the values stay normal floats).

Run
    python bench/adam.py [--sizes 16M,128M] [--layouts flat,model] [--repeats 10] [--threads N]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from _machine import (  # bench/ is on sys.path when a script runs
    cpu_model,
    load_average,
    stdout_to_stderr,
)
from zero_optim._adam import CPUAdam
from zero_optim._native import cpu_features

HYPER = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
WARMUP = 2
ATOL = 1e-6
FP32_ADAM_BYTES = 28  # read param, grad, exp_avg, exp_avg_sq; write param, exp_avg, exp_avg_sq
ZERO = "zero_optim"


@dataclass
class Row:
    label: str
    bytes_per_param: int
    times: list[float] | None = None  # seconds per step; None when the row could not run
    note: str = ""
    interleaved: bool = False  # times[r] was taken in round r of time_interleaved

    @property
    def best(self) -> float:
        assert self.times
        return min(self.times)

    @property
    def median(self) -> float:
        assert self.times
        return statistics.median(self.times)


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in "KMG" else text
    value = int(float(digits) * scale)
    if value <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return value


def free() -> None:
    gc.collect()


def time_calls(fn: Callable[[], object], repeats: int) -> list[float]:
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def load_deepspeed() -> tuple[type | None, str]:
    """DeepSpeedCPUAdam if it imports, its op builds and a tiny step runs; else the reason."""
    try:
        with stdout_to_stderr():
            import deepspeed
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            p = torch.zeros(1024, requires_grad=True)
            p.grad = torch.ones(1024)
            opt = DeepSpeedCPUAdam([p], **HYPER)
            opt.step()
            del opt, p
    except Exception as e:  # any failure means the column is n/a
        reason = f"{type(e).__name__}: {e}"
        if e.__cause__ is not None:
            reason += f" (caused by {type(e.__cause__).__name__}: {e.__cause__})"
        return None, " ".join(reason.split())[:300]
    return DeepSpeedCPUAdam, f"deepspeed {deepspeed.__version__}, cpu_adam op built and loaded"


def _best_add(n: int, repeats: int) -> float:
    a = torch.rand(n)
    b = torch.rand(n)
    return min(time_calls(lambda: a.add_(b), repeats))


def _best_copy(n: int, repeats: int) -> float:
    src = torch.rand(n)
    dst = torch.empty(n)
    return min(time_calls(lambda: dst.copy_(src), repeats))


def probe_bandwidth(n: int, repeats: int) -> tuple[float, float]:
    """(add_ bandwidth, copy_ bandwidth) in bytes/s over n-element fp32 buffers."""
    add = _best_add(n, repeats)
    free()
    copy = _best_copy(n, repeats)
    free()
    return 12 * n / add, 8 * n / copy


def check_correctness(p0: torch.Tensor, grad: torch.Tensor, threads: int) -> str:
    """One step of CPUAdam vs torch.optim.AdamW from identical inputs; raise on a mismatch."""
    report = []
    for wd in (0.0, 0.01):
        hyper = {**HYPER, "weight_decay": wd}
        ref = p0.clone().requires_grad_()
        ref.grad = grad
        torch.optim.AdamW([ref], **hyper).step()
        ref = ref.detach()
        free()
        ours = p0.clone().requires_grad_()
        ours.grad = grad
        copy = torch.empty(p0.shape, dtype=torch.bfloat16)
        CPUAdam([ours], **hyper, num_threads=threads).step(fp16_param_groups=[[copy]])
        ours = ours.detach()
        free()
        diff = (ours - ref).abs().max().item()
        if not diff <= ATOL:
            sys.exit(
                f"ABORT: CPUAdam differs from torch.optim.AdamW (weight_decay={wd}) after one "
                f"step: max |diff| = {diff:.3g} > atol {ATOL:g}"
            )
        if not torch.equal(copy, ours.to(torch.bfloat16)):
            sys.exit(
                f"ABORT: CPUAdam's bf16 copy (weight_decay={wd}) is not its updated fp32 "
                f"params rounded to bf16"
            )
        report.append(f"weight_decay={wd}: max |diff| {diff:.2g}")
        del ref, ours, copy
        free()
    return "; ".join(report)


MakeOptimizer = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


def gpt_tensor_sizes(n: int) -> list[int]:
    """Element counts of a GPT's parameter tensors totalling ``n`` (see Method)."""
    d = 512 if n < 64 * (1 << 20) else 768
    block = [d, d, 3 * d * d, 3 * d, d * d, d, d, d, 4 * d * d, 4 * d, 4 * d * d, d]
    layers = max(1, int(0.75 * n) // sum(block))
    embedding = n - layers * sum(block) - 2 * d
    if embedding <= 0:
        raise ValueError(f"{n} params are too few for a model layout; use 1M or more")
    return [embedding, *block * layers, d, d]


def make_params(
    p0: torch.Tensor,
    grad: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    sizes: list[int] | None = None,
) -> list[torch.Tensor]:
    """A copy of ``p0`` split into separate tensors of ``sizes``, each with its ``grad``."""
    sizes = sizes or [p0.numel()]
    params = [t.to(dtype, copy=True).requires_grad_() for t in p0.split(sizes)]
    for p, g in zip(params, grad.split(sizes)):
        p.grad = g.to(dtype, copy=True)
    return params


ADAM_STATES = ("exp_avg", "exp_avg_sq")


def share_states(opt: torch.optim.Optimizer, shared: dict[torch.Tensor, dict]) -> None:
    """Point ``opt``'s Adam moments at the ones in ``shared`` (filled by the first caller).

    See [Note: one set of buffers for the interleaved rows]. Every implementation here reads
    ``state[p]["exp_avg"]``/``["exp_avg_sq"]`` afresh on each step, so rebinding them after
    the warm-up is all it takes; the step counters stay each optimizer's own.
    """
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state[p]
            if p not in shared:
                shared[p] = {k: state[k] for k in ADAM_STATES}
            else:
                state.update(shared[p])


def make_stepper(
    make: MakeOptimizer,
    params: list[torch.Tensor],
    *,
    with_copy: bool = False,
    shared: dict[torch.Tensor, dict] | None = None,
) -> Callable[[], object]:
    """A fresh optimizer over ``params``, as a zero-argument step, after 2 warm-up steps
    (which allocate its states; with ``shared``, they are then swapped for the shared ones)."""
    opt = make(params)
    if with_copy:
        copies = [[torch.empty(p.shape, dtype=torch.bfloat16) for p in params]]

        def step() -> object:
            return opt.step(fp16_param_groups=copies)
    else:
        step = opt.step
    step()
    step()
    if shared is not None:
        share_states(opt, shared)
    return step


def time_interleaved(
    steppers: dict[str, Callable[[], object]], repeats: int
) -> dict[str, list[float]]:
    """Time the steppers in rounds, each round stepping every one once in a shuffled order.

    Memory bandwidth on a shared VM drifts over seconds; timing one optimizer after another
    would hand that drift to whichever ran in a bad moment. Interleaving spreads it evenly.
    The order is shuffled (seeded) rather than rotated: in a rotation each stepper always
    follows the same neighbour, whose after-effects (cache contents, clocks) it would inherit.
    """
    names = list(steppers)
    times: dict[str, list[float]] = {name: [] for name in names}
    order = random.Random(0)
    for _ in range(repeats):
        for name in order.sample(names, len(names)):
            start = time.perf_counter()
            steppers[name]()
            times[name].append(time.perf_counter() - start)
    return times


def bench_size(
    n: int,
    repeats: int,
    threads: int,
    ds_adam: type | None,
    ds_reason: str,
    sizes: list[int] | None,
) -> tuple[list[Row], float, float, str]:
    """Check, probe bandwidth and time every optimizer at one size.

    The fast implementations (zero_optim, torch fused, DeepSpeed) are alive together and
    timed interleaved (see :func:`time_interleaved`); torch's slow foreach and single-tensor
    paths are timed afterwards, one at a time, to bound memory.
    """
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(n, generator=gen)
    grad = torch.randn(n, generator=gen).mul_(1e-2)
    check = check_correctness(p0, grad, threads)
    add_bw, copy_bw = probe_bandwidth(n, repeats)

    def zero(ps: list[torch.Tensor]) -> torch.optim.Optimizer:
        return CPUAdam(ps, **HYPER, num_threads=threads)

    plan: list[tuple[Row, MakeOptimizer | None, dict, bool]] = [
        (Row(f"{ZERO} CPUAdam (fp32)", 28), zero, {}, True),
        (
            Row("torch.optim.AdamW(fused=True)", 28),
            lambda ps: torch.optim.AdamW(ps, **HYPER, fused=True),
            {},
            True,
        ),
        (
            Row("torch.optim.Adam(foreach=True)", 28),
            lambda ps: torch.optim.Adam(ps, **HYPER, foreach=True),
            {},
            False,
        ),
        (
            Row("torch.optim.Adam(foreach=False) (default single-tensor)", 28),
            lambda ps: torch.optim.Adam(ps, **HYPER, foreach=False),
            {},
            False,
        ),
        (
            Row("DeepSpeed DeepSpeedCPUAdam", 28, note=ds_reason),
            None if ds_adam is None else (lambda ps: ds_adam(ps, **HYPER)),
            {},
            True,
        ),
        (
            Row(f"{ZERO} CPUAdam (fp32) + bf16 param copy in the same pass", 30),
            zero,
            {"with_copy": True},
            True,
        ),
        (
            Row(f"{ZERO} CPUAdam (bf16 params/grads, fp32 states)", 22),
            zero,
            {"dtype": torch.bfloat16},
            True,
        ),
    ]
    shared_params = make_params(p0, grad, sizes=sizes)
    shared_states: dict[torch.Tensor, dict] = {}
    with stdout_to_stderr():  # DeepSpeed prints its build and load chatter to stdout
        steppers = {}
        for row, make, kwargs, fast in plan:
            if not fast or make is None:
                continue
            if "dtype" in kwargs:  # bf16 params cannot share the fp32 buffers
                params = make_params(p0, grad, kwargs["dtype"], sizes)
                steppers[row.label] = make_stepper(make, params)
            else:
                steppers[row.label] = make_stepper(
                    make, shared_params, **kwargs, shared=shared_states
                )
            free()  # the warm-up's own states, now replaced by the shared ones
        times = time_interleaved(steppers, repeats)
    del steppers, shared_params, shared_states
    free()
    for row, make, kwargs, fast in plan:
        if make is None:
            continue
        if fast:
            row.times = times[row.label]
            row.interleaved = True
        else:
            params = make_params(p0, grad, sizes=sizes)
            row.times = time_calls(make_stepper(make, params, **kwargs), repeats)
            del params
            free()
    return [row for row, _, _, _ in plan], add_bw, copy_bw, check


def size_name(n: int) -> str:
    for suffix, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)


def print_table(
    n: int, layout: str, rows: list[Row], add_bw: float, copy_bw: float, check: str
) -> None:
    limit_ms = FP32_ADAM_BYTES * n / add_bw * 1e3
    print(f"## {size_name(n)} fp32 params ({n:,}), {layout}")
    print()
    print(
        f"- add_ probe (12 B/elem): {add_bw / 1e9:.2f} GB/s -> fp32 Adam limit (28 B/param): "
        f"{limit_ms:.2f} ms/step"
    )
    print(f"- copy_ (8 B/elem, for information): {copy_bw / 1e9:.2f} GB/s")
    print(
        f"- correctness vs torch.optim.AdamW, one step: {check} (atol {ATOL:g}); "
        f"bf16 copy == params.to(bf16): ok"
    )
    print()
    alternatives = [r for r in rows if r.times and not r.label.startswith(ZERO)]
    fastest_alt = min((r.best for r in alternatives), default=None)
    paired_alts = [r.times for r in alternatives if r.interleaved]
    per_round_alt = [min(ts) for ts in zip(*paired_alts)] if paired_alts else []
    print(
        "| optimizer | ms/step (best) | ms/step (median) | Mparams/s "
        "| % of add_-probe limit | ratio vs fastest alternative | paired ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if not r.times:
            print(f"| {r.label} | n/a | n/a | n/a | n/a | n/a ({r.note}) | n/a |")
            continue
        pct = r.bytes_per_param * n / add_bw / r.best * 100
        ratio = f"{fastest_alt / r.best:.2f}" if fastest_alt else "n/a"
        paired = "n/a"
        if r.interleaved and per_round_alt:
            paired = f"{statistics.median(a / t for a, t in zip(per_round_alt, r.times)):.2f}"
        print(
            f"| {r.label} | {r.best * 1e3:.2f} | {r.median * 1e3:.2f} | "
            f"{n / r.best / 1e6:.0f} | {pct:.0f}% | {ratio} | {paired} |"
        )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16M,128M", help="comma-separated param counts")
    parser.add_argument(
        "--layouts",
        default="flat,model",
        help="comma-separated: flat (one tensor) and/or model (a GPT's tensors)",
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per optimizer")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    try:
        sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError as e:
        parser.error(f"--sizes: {e}")
    layouts = [x.strip() for x in args.layouts.split(",") if x.strip()]
    if not layouts or set(layouts) - {"flat", "model"}:
        parser.error(f"--layouts: expected flat and/or model, got {args.layouts!r}")
    try:
        splits = {n: gpt_tensor_sizes(n) for n in sizes if "model" in layouts}
    except ValueError as e:
        parser.error(f"--sizes: {e}")
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be positive")
    torch.set_num_threads(args.threads)

    ds_adam, ds_reason = load_deepspeed()
    print("# CPU Adam step time")
    print()
    print(f"- command: `{shlex.join([sys.executable, *sys.argv])}`")
    print(f"- torch {torch.__version__}, Python {platform.python_version()}, {platform.system()}")
    print(f"- CPU: {cpu_model()} ({os.cpu_count()} logical CPUs)")
    print(f"- load average (1/5/15 min) at start: {load_average()} (other work skews timings)")
    print(f"- threads: {args.threads} (torch.get_num_threads() = {torch.get_num_threads()})")
    print(f"- zero_optim.cpu_features(): {cpu_features()}")
    print(f"- DeepSpeedCPUAdam: {'available' if ds_adam else 'n/a'} ({ds_reason})")
    print(f"- hyperparameters: {HYPER}; {WARMUP} warm-up steps, {args.repeats} timed steps")
    print("- bytes/param for the % column: 28 fp32 Adam, 30 with bf16 copy, 22 bf16 params")
    print("- ratio = fastest non-zero_optim best time / this row's best time (>1: faster)")
    print(
        "- paired ratio = median over rounds of (fastest interleaved alternative's time in "
        "the round / this row's time in the round)"
    )
    print()
    for n in sizes:
        for layout in layouts:
            split = splits[n] if layout == "model" else None
            name = "one flat tensor" if split is None else f"a GPT's {len(split)} tensors"
            rows, add_bw, copy_bw, check = bench_size(
                n, args.repeats, args.threads, ds_adam, ds_reason, split
            )
            print_table(n, name, rows, add_bw, copy_bw, check)
            sys.stdout.flush()
            del rows
            free()


if __name__ == "__main__":
    main()

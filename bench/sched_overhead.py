"""Per-call cost of ``scheduler.step()`` for zero_sched's schedules.

What it measures
    The wall-clock time of one ``scheduler.step()`` call, for each zero_sched schedule
    (WarmupLR, WarmupDecayLR, WarmupCosineLR, OneCycle with momentum cycling, LRRangeTest)
    on an Adam optimizer with 1 and with 64 param groups (one small parameter per group).
    The optimizer itself never steps: only the scheduler's own work is timed, which is
    computing the new values and writing them into every param group.

What it compares against
    * ``torch.optim.lr_scheduler.LambdaLR`` driven by a lambda that is the closed-form
      multiplier of the very same schedule. This is the cheapest general-purpose way to get
      the schedule out of stock PyTorch, so it is the baseline for what the closed-form
      ``LRScheduler`` subclasses cost. Before timing, the script checks that LambdaLR writes
      exactly the same lrs as zero_sched at every step and aborts if any differ. LambdaLR
      cannot cycle momentum, so in the OneCycle row it does strictly less work.
    * DeepSpeed's own scheduler class with the same arguments, when ``import deepspeed``
      works; that column reads "n/a" otherwise. It is what zero_sched replaces.

Why
    zero_sched schedules are ``LRScheduler`` subclasses that recompute the closed form on
    every step (so jumping, rewinding and resuming are exact). This shows what that design
    costs per training step next to the alternatives; a scheduler step runs once per
    optimizer step, so any number here should be negligible next to a forward/backward pass.

Method
    Each schedule is configured relative to ``--steps`` so that one timed run passes through
    every phase (warmup, decay, post-schedule floor, the whole cycle and its decay). Each
    repeat builds a fresh optimizer and scheduler (not timed), then times ``--steps`` calls
    of ``step()`` with ``time.perf_counter`` and the garbage collector off; the reported
    figure is the best of ``--repeats`` repeats divided by ``--steps``. It includes the
    Python loop overhead of one call, which is the same for every column. Ratio columns are
    zero_sched time divided by the other column's time (above 1: zero_sched is slower).

Run
    python bench/sched_overhead.py [--steps 20000] [--repeats 5] [--groups 1,64]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import itertools
import logging
import math
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from _machine import cpu_model  # bench/ is on sys.path when a script runs

try:
    import zero_sched
except ImportError:  # running from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packages/zero-sched/src"))
    import zero_sched


def _import_deepspeed() -> Any | None:
    """DeepSpeed's lr_schedules module, or None when deepspeed does not import."""
    try:
        # deepspeed logs its accelerator detection to stdout on import; keep the table clean.
        with contextlib.redirect_stdout(io.StringIO()):
            import deepspeed
            from deepspeed.runtime import lr_schedules
    except Exception:  # any failure just means "no DeepSpeed column"
        return None
    # Its warmup schedules log a warning on every construction; silence DeepSpeed's logger.
    deepspeed.utils.logger.setLevel(logging.ERROR)
    return lr_schedules


BASE_LR = 1e-3
# LambdaLR only prints a warning here: it is stepped without the optimizer ever stepping.
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")


@dataclass
class Case:
    """One schedule: its zero_sched kwargs and the same schedule as a LambdaLR multiplier."""

    name: str
    kwargs: dict[str, Any]
    #: closed-form lr multiplier of LambdaLR's ``last_epoch`` (= zero_sched position + 1)
    multiplier: Callable[[int], float]
    #: lr every param group starts with in the LambdaLR run (its ``base_lr``)
    lambda_base_lr: float | None = None


def _warmup_ramp(i: int, warmup: int, log_ramp: bool) -> float:
    if i >= warmup:
        return 1.0
    if log_ramp:
        return math.log(i + 1) / math.log(warmup)
    return i / warmup


def make_cases(steps: int) -> list[Case]:
    """Every schedule, sized so that ``steps`` calls pass through all of its phases."""
    warmup = max(2, steps // 10)
    total = steps - steps // 5  # ends before the run does, so the floor is timed too

    def warmup_lr(epoch: int) -> float:
        i = epoch - 1
        return 0.0 if i < 0 else _warmup_ramp(i, warmup, True)

    def warmup_decay_lr(epoch: int) -> float:
        i = epoch - 1
        if i < 0:
            return 0.0
        if i < warmup:
            return _warmup_ramp(i, warmup, True)
        return max(0.0, float(total - i) / float(max(1, total - warmup)))

    warmup_min_ratio, cos_min_ratio = 0.1, 1e-4

    def warmup_cosine_lr(epoch: int) -> float:
        i = epoch - 1
        if i < 0:
            return 0.0
        if i < warmup:
            ramp = _warmup_ramp(i, warmup, False)
            return warmup_min_ratio + ramp * (1.0 - warmup_min_ratio)
        progress = min(1.0, (i - warmup + 1) / max(1, total - warmup))
        cosine = (1.0 + math.cos(math.pi * progress)) / 2.0
        return max(0.0, cos_min_ratio + (1.0 - cos_min_ratio) * cosine)

    up = max(1, 2 * steps // 5)
    down = max(1, 2 * steps // 5)
    cycle = up + down
    min_lr, max_lr, decay_rate, decay_size = BASE_LR / 10, BASE_LR, 0.5, max(1, steps // 100)

    def one_cycle(epoch: int) -> float:  # the lr itself: LambdaLR's base lr is 1.0 here
        i = epoch - 1
        if i < cycle:
            ratio = up / cycle
            x = (i + 1) / cycle - math.floor((i + 1) / cycle)
            scale = x / ratio if x <= ratio else (x - 1.0) / (ratio - 1.0)
            return min_lr + (max_lr - min_lr) * scale
        return min_lr / (1.0 + decay_rate * ((i - cycle + 1) / decay_size))

    rate, size = 0.5, max(1, steps // 100)

    def range_test(epoch: int) -> float:
        return 1.0 + rate * (epoch / size)

    return [
        Case(
            "WarmupLR",
            {"warmup_min_lr": 0.0, "warmup_num_steps": warmup, "warmup_type": "log"},
            warmup_lr,
        ),
        Case(
            "WarmupDecayLR",
            {
                "total_num_steps": total,
                "warmup_min_lr": 0.0,
                "warmup_max_lr": BASE_LR,
                "warmup_num_steps": warmup,
                "warmup_type": "log",
            },
            warmup_decay_lr,
        ),
        Case(
            "WarmupCosineLR",
            {
                "total_num_steps": total,
                "warmup_min_ratio": warmup_min_ratio,
                "warmup_num_steps": warmup,
                "cos_min_ratio": cos_min_ratio,
                "warmup_type": "linear",
            },
            warmup_cosine_lr,
        ),
        Case(
            "OneCycle",
            {
                "cycle_min_lr": min_lr,
                "cycle_max_lr": max_lr,
                "decay_lr_rate": decay_rate,
                "cycle_first_step_size": up,
                "cycle_second_step_size": down,
                "decay_step_size": decay_size,
                "cycle_momentum": True,
                "cycle_min_mom": 0.85,
                "cycle_max_mom": 0.95,
            },
            one_cycle,
            lambda_base_lr=1.0,
        ),
        Case(
            "LRRangeTest",
            {
                "lr_range_test_min_lr": BASE_LR,
                "lr_range_test_step_size": size,
                "lr_range_test_step_rate": rate,
                "lr_range_test_staircase": False,
            },
            range_test,
        ),
    ]


def make_optimizer(groups: int, lr: float = BASE_LR) -> torch.optim.Optimizer:
    """Adam with ``groups`` param groups of one 4-element parameter each."""
    return torch.optim.Adam(
        [{"params": [torch.nn.Parameter(torch.zeros(4))]} for _ in range(groups)], lr=lr
    )


def lrs_of(optimizer: torch.optim.Optimizer) -> list[float]:
    return [float(group["lr"]) for group in optimizer.param_groups]


Builder = Callable[[], Any]


def builders(case: Case, groups: int, ds_module: Any | None) -> dict[str, Builder | None]:
    """Constructors of a fresh (optimizer-bound) scheduler for each column."""
    zs_cls = zero_sched.SCHEDULES[case.name]
    lambda_lr = BASE_LR if case.lambda_base_lr is None else case.lambda_base_lr
    out: dict[str, Builder | None] = {
        "zero_sched": lambda: zs_cls(make_optimizer(groups), **case.kwargs),
        "LambdaLR": lambda: LambdaLR(make_optimizer(groups, lambda_lr), case.multiplier),
        "DeepSpeed": None,
    }
    if ds_module is not None:
        ds_cls = getattr(ds_module, case.name)
        out["DeepSpeed"] = lambda: ds_cls(make_optimizer(groups), **case.kwargs)
    return out


def trajectory(scheduler: Any, steps: int) -> list[list[float]]:
    """Every group's lr after construction and after each of ``steps`` calls of step()."""
    optimizer = scheduler.optimizer
    out = [lrs_of(optimizer)]
    for _ in range(steps):
        scheduler.step()
        out.append(lrs_of(optimizer))
    return out


def verify(case: Case, groups: int, cols: dict[str, Builder | None], steps: int) -> None:
    """Abort unless LambdaLR sets exactly zero_sched's lrs; warn if DeepSpeed's are off."""
    ours = trajectory(cols["zero_sched"](), steps)
    theirs = trajectory(cols["LambdaLR"](), steps)
    for index, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            sys.exit(
                f"abort: {case.name}, groups={groups}: LambdaLR lr {b[:3]} differs from "
                f"zero_sched lr {a[:3]} after {index} step() calls; the lambda does not "
                f"compute the same schedule, so timing them side by side would be meaningless"
            )
    if cols["DeepSpeed"] is not None:
        deepspeed_lrs = trajectory(cols["DeepSpeed"](), steps)
        worst = max(
            abs(x - y) / max(abs(x), abs(y), 1e-300)
            for a, b in zip(ours, deepspeed_lrs)
            for x, y in zip(a, b)
        )
        if worst > 1e-12:
            print(
                f"note: DeepSpeed {case.name} lrs differ from zero_sched's by up to {worst:.2g}"
                f" (relative)",
                file=sys.stderr,
            )


def time_once(build: Builder, steps: int) -> float:
    """Seconds for ``steps`` calls of step() on a freshly built scheduler."""
    step = build().step
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in itertools.repeat(None, steps):
            step()
        return time.perf_counter() - start
    finally:
        gc.enable()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=int, default=20_000, help="step() calls per timed run (default 20000)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed runs per cell; the best is reported (default 5)",
    )
    parser.add_argument(
        "--groups", default="1,64", help="comma-separated param-group counts (default 1,64)"
    )
    args = parser.parse_args(argv)
    try:
        args.group_counts = [int(g) for g in args.groups.split(",") if g.strip()]
    except ValueError:
        parser.error(f"--groups must be comma-separated integers, got {args.groups!r}")
    if not args.group_counts or min(args.group_counts) < 1:
        parser.error("--groups needs at least one count, each >= 1")
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ds_module = _import_deepspeed()
    cases = make_cases(args.steps)

    columns = {
        (case.name, groups): builders(case, groups, ds_module)
        for case in cases
        for groups in args.group_counts
    }
    for case in cases:  # check every pair before timing anything
        for groups in args.group_counts:
            verify(case, groups, columns[case.name, groups], args.steps)

    ds_version = "not available"
    if ds_module is not None:
        ds_version = sys.modules["deepspeed"].__version__
    print(
        f"torch {torch.__version__} | Python {platform.python_version()} | CPU: {cpu_model()} | "
        f"zero_sched {zero_sched.__version__} | DeepSpeed {ds_version}"
    )
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"best of {args.repeats} runs of {args.steps} step() calls; Adam, one 4-element "
        f"parameter per group; ratio = zero_sched / other"
    )
    print()
    print(
        "| schedule | groups | zero_sched µs/step | LambdaLR µs/step | ratio "
        "| DeepSpeed µs/step | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for case in cases:
        for groups in args.group_counts:
            cols = columns[case.name, groups]
            best = {name: math.inf for name, build in cols.items() if build is not None}
            for _ in range(args.repeats):  # interleave columns so drift hits them alike
                for name in best:
                    best[name] = min(best[name], time_once(cols[name], args.steps))
            us = {name: seconds / args.steps * 1e6 for name, seconds in best.items()}
            ours, lam = us["zero_sched"], us["LambdaLR"]
            if "DeepSpeed" in us:
                ds_cells = f"{us['DeepSpeed']:.2f} | {ours / us['DeepSpeed']:.2f}x"
            else:
                ds_cells = "n/a | n/a"
            label = f"{case.name} (+momentum)" if case.name == "OneCycle" else case.name
            print(
                f"| {label} | {groups} | {ours:.2f} | {lam:.2f} | {ours / lam:.2f}x | {ds_cells} |"
            )
            sys.stdout.flush()
    print()
    print("OneCycle (+momentum): zero_sched and DeepSpeed also cycle Adam's beta1 on every step;")
    print("LambdaLR can only schedule the lr, so that row's LambdaLR column does less work.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

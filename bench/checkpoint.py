"""Checkpoint save and load time: ``torch.save`` against the zero-aio writer, same run.

One process builds an engine over ``--layers`` square linear layers (ZeRO stage 1, fp32,
Adam: every parameter has an fp32 master and two Adam states, so the checkpoint holds 12
bytes per parameter), takes one optimizer step, and then, for ``--rounds`` rounds, saves a
checkpoint with each writer (``checkpoint.writer`` = ``"torch"`` and ``"zero_aio"``, in a
freshly shuffled order each round) and loads it back into the engine.

Conditions
    * Save: ``engine.save_checkpoint`` end to end: the shard copies, the files, the fsyncs,
      the directory rename and ``latest``; each round saves under a new tag after deleting
      the previous round's, so every save allocates fresh files.
    * Load: ``engine.load_checkpoint`` end to end, after dropping the checkpoint's pages
      from the page cache (``fsync`` + ``posix_fadvise(DONTNEED)`` on every file), so the
      bytes come from the disk. One weight and its Adam state are compared with the values
      saved after every load.
    * GB/s = bytes of the checkpoint's files / seconds (1e9 bytes/s). Medians over the
      rounds, min-max in brackets. The disk is shared with other work: expect spreads.

    python bench/checkpoint.py [--layers 12] [--width 4096] [--rounds 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time

import torch
from aio import drop_file_cache

from _machine import cpu_model, load_average  # bench/ is on sys.path when a script runs

WRITERS = ("torch", "zero_aio")


def build(layers: int, width: int):
    import zero_core

    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(layers)))
    engine, *_ = zero_core.initialize(
        model=model,
        optimizer=lambda g: torch.optim.Adam(g, lr=1e-3),
        config={"train_batch_size": 2, "zero_optimization": {"stage": 1}},
    )
    engine.backward(engine(torch.randn(2, width)).square().mean())
    engine.step()
    return engine


def use_writer(engine, writer: str) -> None:
    """Point the engine's parsed config at ``writer`` (the only thing saving reads it from)."""
    sections = {**engine.config.sections, "checkpoint": {"writer": writer}}
    engine.config = dataclasses.replace(engine.config, sections=sections)


def directory_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def probe(engine) -> list[torch.Tensor]:
    """One parameter's weight and Adam state: what each load is checked against."""
    p = next(engine.module.parameters())
    state = engine.optimizer.inner.state
    key = next(k for k in state if k.numel() == p.numel())
    return [p.detach().clone(), *(v.clone() for v in state[key].values())]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summary(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:.2f}" if len(values) == 1 else f"{med:.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    import zero_aio

    work = tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.dir)
    dev = os.stat(work).st_dev
    engine = build(args.layers, args.width)
    params = sum(p.numel() for p in engine.module.parameters())
    expected = probe(engine)
    times: dict[str, dict[str, list[float]]] = {w: {"save": [], "load": []} for w in WRITERS}
    sizes: dict[str, int] = {}
    order = random.Random(0)
    try:
        for round_ in range(args.rounds):
            writers = list(WRITERS)
            order.shuffle(writers)
            for writer in writers:
                use_writer(engine, writer)
                save_dir = os.path.join(work, writer)
                shutil.rmtree(save_dir, ignore_errors=True)
                tag = f"round{round_}"
                times[writer]["save"].append(
                    timed(lambda: engine.save_checkpoint(save_dir, tag=tag))  # noqa: B023
                )
                path = os.path.join(save_dir, tag)
                sizes[writer] = directory_bytes(path)
                for name in os.listdir(path):
                    drop_file_cache(os.path.join(path, name), "fadvise")
                times[writer]["load"].append(timed(lambda: engine.load_checkpoint(save_dir)))  # noqa: B023
                if not all(torch.equal(a, b) for a, b in zip(probe(engine), expected)):
                    raise SystemExit(f"{writer}: the loaded values differ from the saved ones")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("# Checkpoint save and load: torch.save vs the zero-aio writer")
    print()
    print(f"- command: `{shlex.join([sys.executable, *sys.argv])}`")
    print(
        f"- torch {torch.__version__}, zero_aio {zero_aio.__version__} (backend "
        f"{zero_aio.default_backend()}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )
    print(f"- CPU: {cpu_model()} ({os.cpu_count()} logical CPUs)")
    print(f"- load average (1/5/15 min) at the end: {load_average()} (other work skews timings)")
    print(f"- files in {work} (device {os.major(dev)}:{os.minor(dev)}), 1 process, stage 1")
    print(
        f"- model: {args.layers} x Linear({args.width}, {args.width}) = {params / 1e6:.0f}M "
        f"params; checkpoint = fp32 masters + Adam exp_avg + exp_avg_sq"
    )
    print(f"- {args.rounds} rounds, writers in a shuffled order each round; median (min-max)")
    print()
    print("| writer | size GB | save s | save GB/s | load s | load GB/s |")
    print("|---|---:|---:|---:|---:|---:|")
    rate = {}
    for w in WRITERS:
        gb = sizes[w] / 1e9
        save_rate = [gb / t for t in times[w]["save"]]
        load_rate = [gb / t for t in times[w]["load"]]
        rate[w] = (statistics.median(save_rate), statistics.median(load_rate))
        print(
            f"| {w} | {gb:.2f} | {summary(times[w]['save'])} | {summary(save_rate)} | "
            f"{summary(times[w]['load'])} | {summary(load_rate)} |"
        )
    save_x = rate["zero_aio"][0] / rate["torch"][0]
    load_x = rate["zero_aio"][1] / rate["torch"][1]
    print(f"| **zero_aio / torch** | | | **{save_x:.2f}x** | | **{load_x:.2f}x** |")


if __name__ == "__main__":
    main()

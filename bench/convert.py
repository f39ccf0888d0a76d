"""Peak memory of converting a ZeRO checkpoint to one fp32 state dict.

Saves a checkpoint of a model made of ``--layers`` square linear layers (one process, ZeRO
stage 1, Adam), then runs ``python -m zero_core convert`` in fresh processes, once writing
safetensors (streamed tensor by tensor) and once writing a ``.pt`` (the whole dict in
memory). Memory is the peak of the process's anonymous resident memory (RssAnon, sampled
every 2 ms from /proc): the rank files are memory-mapped, and their clean file pages, which
the kernel can drop at any time, would otherwise count as resident. Printed next to the
model size, the largest tensor, and a process that only imports torch and zero_core.

    python bench/convert.py [--layers 16] [--width 2048] [--dir /tmp/convert-bench]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch

BASELINE = "import time, torch, zero_core; time.sleep(1)"


def _rss_anon_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def peak_of(argv: list[str]) -> float:
    """Peak anonymous resident memory (MiB) of a process running ``argv``."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _rss_anon_mib(proc.pid))
        time.sleep(0.002)
    if proc.returncode:
        raise SystemExit(f"{argv} failed with exit code {proc.returncode}")
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument(
        "--dir", default=None, help="where to put the checkpoint (default: a temp dir)"
    )
    args = parser.parse_args()
    import zero_core

    work = args.dir or tempfile.mkdtemp(prefix="convert-bench-")
    os.makedirs(work, exist_ok=True)
    try:
        model = torch.nn.Sequential(
            *(torch.nn.Linear(args.width, args.width) for _ in range(args.layers))
        )
        engine, *_ = zero_core.initialize(
            model=model,
            optimizer=lambda g: torch.optim.Adam(g, lr=1e-3),
            config={"train_batch_size": 2, "zero_optimization": {"stage": 1}},
        )
        engine.backward(engine(torch.randn(2, args.width)).square().mean())
        engine.step()
        engine.save_checkpoint(os.path.join(work, "ckpt"))
        params = sum(p.numel() for p in model.parameters())
        model_mib = params * 4 / 2**20
        largest_mib = max(p.numel() for p in model.parameters()) * 4 / 2**20
        del engine, model
        baseline = peak_of([sys.executable, "-c", BASELINE])
        convert = [sys.executable, "-m", "zero_core", "convert", os.path.join(work, "ckpt")]
        streamed = peak_of([*convert, os.path.join(work, "model.safetensors"), "--safetensors"])
        whole = peak_of([*convert, os.path.join(work, "model.pt")])
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"model: {params / 1e6:.1f}M params = {model_mib:.0f} MiB fp32; "
        f"largest tensor {largest_mib:.0f} MiB"
    )
    print(f"{'output':<28} {'peak anon MiB':>13} {'above import':>13} {'/ model size':>13}")
    print(f"{'(import torch, zero_core)':<28} {baseline:>13.0f} {'':>13} {'':>13}")
    for label, peak in (("safetensors (streamed)", streamed), (".pt (whole dict)", whole)):
        above = peak - baseline
        print(f"{label:<28} {peak:>13.0f} {above:>13.0f} {above / model_mib:>13.2f}")


if __name__ == "__main__":
    main()

"""Train the demo GPT with zerospeed: ZeRO stage 3, bf16, AdamW and WarmupCosineLR.

Launch on 2 CPU processes (``nox -s demo`` runs the whole story)::

    zerospeed launch --nproc-per-node 2 demo/train.py --out demo-out --stop-at 150
    zerospeed launch --nproc-per-node 2 demo/train.py --out demo-out --resume

The first command trains 150 of the schedule's steps and saves a checkpoint; the second
starts new processes, loads it and finishes the schedule. Everything a DeepSpeed user would
put in a JSON file is in :func:`ds_config`; the loop below is DeepSpeed's loop.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

import zerospeed
from corpus import Windows, load_corpus
from gpt import GPT, GPTConfig
from progress import Progress


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo-out", help="directory for checkpoints, logs, plots")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps in the schedule")
    p.add_argument(
        "--stop-at",
        help="save and stop after this many steps ('half': half the schedule), to resume later",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument(
        "--offload",
        default="none",
        choices=["none", "cpu", "nvme"],
        help="ZeRO-Offload: optimizer state in CPU memory; or ZeRO-Infinity: optimizer "
        "state and parameters on disk under OUT/nvme",
    )
    p.add_argument("--micro-batch", type=int, default=8, help="sequences per rank per step")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=20, help="warmup steps")
    p.add_argument("--eval-batches", type=int, default=16, help="held-out batches per rank")
    p.add_argument("--profile-step", type=int, default=3, help="step the flops profiler measures")
    p.add_argument("--seed", type=int, default=1234)
    return p.parse_args(argv)


def ds_config(args: argparse.Namespace) -> dict:
    """The DeepSpeed-style config: every key here means what it means in DeepSpeed."""
    logs = str(Path(args.out) / "logs")
    offload = {}
    if args.offload == "cpu":
        offload = {"offload_optimizer": {"device": "cpu"}}
    elif args.offload == "nvme":
        nvme = Path(args.out) / "nvme"
        nvme.mkdir(parents=True, exist_ok=True)
        offload = {
            "offload_optimizer": {"device": "nvme", "nvme_path": str(nvme)},
            "offload_param": {"device": "nvme", "nvme_path": str(nvme), "max_in_cpu": 0},
        }
    return {
        "train_micro_batch_size_per_gpu": args.micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "steps_per_print": args.steps,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": args.lr, "betas": [0.9, 0.95], "weight_decay": 0.1},
        },
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": args.steps,
                "warmup_num_steps": args.warmup,
                "cos_min_ratio": 0.1,
            },
        },
        "bf16": {"enabled": args.dtype == "bf16"},
        "fp16": {"enabled": args.dtype == "fp16"},
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0, **offload},
        "flops_profiler": {
            "enabled": not args.resume,
            "profile_step": args.profile_step,
            "module_depth": 2,
            "top_modules": 3,
            "detailed": False,
        },
        "csv_monitor": {"enabled": True, "output_path": logs, "job_name": "demo"},
    }


def mean_over_ranks(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


@torch.no_grad()
def held_out_loss(engine: torch.nn.Module, held: Windows, args: argparse.Namespace) -> float:
    """Mean loss over the first ``eval_batches`` held-out batches of each rank (dropout off)."""
    engine.eval()
    rank, world = dist.get_rank(), dist.get_world_size()
    total, count = 0.0, 0
    for b in range(args.eval_batches):
        first = (b * world + rank) * args.micro_batch
        rows = [held[i] for i in range(first, min(first + args.micro_batch, len(held)))]
        if not rows:
            break
        x = torch.stack([r[0] for r in rows]).to(args.device)
        y = torch.stack([r[1] for r in rows]).to(args.device)
        total += engine(x, y).item()
        count += 1
    engine.train()
    return mean_over_ranks(total / max(count, 1))


def plot_losses(log: Path, png: Path) -> None:
    """The loss curve of every step in ``log`` (both runs, if resumed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log, newline="") as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [float(r["loss"]) for r in rows], lw=1, label="training loss")
    held = [(int(r["step"]), float(r["held_out"])) for r in rows if r["held_out"]]
    if held:
        ax.plot(*zip(*held), "o", label="held-out loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/char)")
    ax.set_title("zerospeed demo: ZeRO-3, bf16, 2 ranks")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    torch.manual_seed(args.seed)
    if args.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    vocab, train, held = load_corpus(args.context)
    cfg = GPTConfig(
        vocab_size=len(vocab),
        context=args.context,
        layers=args.layers,
        heads=args.heads,
        width=args.width,
    )
    model = GPT(cfg).to(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    engine, _, loader, _ = zerospeed.initialize(
        model=model, model_parameters=model.parameters(), training_data=train,
        config=ds_config(args),
    )  # fmt: skip
    rank, world = dist.get_rank(), dist.get_world_size()
    say = print if rank == 0 else (lambda *a, **k: None)
    ckpt_dir = out / "checkpoints"
    log = out / "train_log.csv"
    if args.resume:
        path, client = engine.load_checkpoint(str(ckpt_dir))
        if path is None:
            raise SystemExit(f"--resume: no checkpoint in {ckpt_dir}; run without --resume")
        say(f"resumed from {path} at step {engine.global_steps}")
        resumed = held_out_loss(engine, held, args)
        say(f"held-out loss after loading {resumed:.4f} (saved run: {client['held_out']:.4f})")
    else:
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            vocab.save(out / "vocab.json")
            (out / "model.json").write_text(json.dumps(cfg.as_dict()))
            with open(log, "w", newline="") as f:
                csv.writer(f).writerow(["step", "loss", "lr", "tokens_per_s", "held_out"])
        say(
            f"{n_params / 1e6:.2f}M parameters, {len(train)} training windows of "
            f"{args.context} chars, {world} ranks x {args.micro_batch} sequences per step, "
            f"ZeRO stage {engine.zero_optimization_stage()}, {args.dtype}"
            + {
                "none": "",
                "cpu": ", optimizer in CPU memory",
                "nvme": ", optimizer and parameters on NVMe",
            }[args.offload]
        )
        say(f"held-out loss before training {held_out_loss(engine, held, args):.4f}")
    stop = args.steps
    if args.stop_at is not None:
        stop = args.steps // 2 if args.stop_at == "half" else min(int(args.stop_at), args.steps)
    tokens_per_step = engine.train_batch_size() * args.context
    progress = Progress(total=args.steps, start=engine.global_steps, enabled=rank == 0)
    epoch = loader.sampler.epoch
    while engine.global_steps < stop:
        for x, y in loader:
            started = time.perf_counter()
            loss = engine(x.to(args.device), y.to(args.device))
            engine.backward(loss)
            engine.step()
            loss_value = mean_over_ranks(loss.item())
            seconds = time.perf_counter() - started
            lr = engine.get_lr()[0]
            progress.update(
                engine.global_steps, loss=loss_value, lr=lr, tokens_s=tokens_per_step / seconds
            )
            held_value = ""
            if engine.global_steps == stop:
                held_value = f"{held_out_loss(engine, held, args):.5f}"
            if rank == 0:
                with open(log, "a", newline="") as f:
                    csv.writer(f).writerow(
                        [engine.global_steps, f"{loss_value:.5f}", f"{lr:.3e}",
                         f"{tokens_per_step / seconds:.0f}", held_value]
                    )  # fmt: skip
            if engine.global_steps >= stop:
                break
        else:
            epoch += 1
            loader.sampler.set_epoch(epoch)
    progress.close()
    final = held_out_loss(engine, held, args)
    say(f"step {engine.global_steps}: held-out loss {final:.4f}")
    path = engine.save_checkpoint(str(ckpt_dir), client_state={"held_out": final})
    say(f"saved checkpoint {path}")
    if rank == 0:
        plot_losses(log, out / "loss.png")
        say(f"loss curve: {out / 'loss.png'}, log: {log}")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""1-bit Adam, 0/1 Adam and 1-bit LAMB on 2 gloo ranks: bytes, time per step, convergence.

What it measures
    * Bytes per step per rank handed to collectives (each optimizer's ``comm_counter``,
      which counts the size of every tensor passed to a collective, and estimates what
      leaves the rank) for a model of ``--params`` parameters: full-precision warm-up (an
      fp32 all-reduce of the gradients, what data-parallel Adam sends) against each
      optimizer's compressed phase.
    * Time per step on 2 ranks (backward excluded: the step on given local gradients,
      including its communication), median of ``--steps`` after warm-up.
    * Convergence: held-out loss vs step for AdamW and FusedLamb (gradients all-reduced in
      fp32) and OnebitAdam, ZeroOneAdam, OnebitLamb, on one of two tasks (``--task``):
      ``gpt`` (default), the demo's GPT shrunk to 2 layers of width 128 on its character
      corpus, 1000 steps; or ``mlp``, an 8-32-1 tanh MLP fitting ``sin(x @ w)`` plus noise,
      1500 steps (see ``GPTTask`` and ``RegressionTask``). Final loss = mean of the
      evaluations in the last 50 (gpt) / 20 (mlp) steps. Writes a PNG when matplotlib
      imports.

Settings, all derived from the run length the way DeepSpeed's tutorials say to choose them:
    * Learning rate: linear warm-up to ``--lr`` (the Adam family) or ``--lamb-lr`` (the
      LAMB pair, whose trust ratio makes a step ``lr * |w|``) over the first
      ``--warmup`` steps (default 10% of the run), then exponential decay that halves it
      ``--halvings`` times by the last step (the shape of the BERT schedule the 0/1 Adam
      defaults were derived from).
    * OnebitAdam and OnebitLamb: ``freeze_step`` = ``--freeze`` (default 20% of the run;
      the 1-bit Adam and 1-bit LAMB tutorials: "15-25% of the total training steps").
    * ZeroOneAdam: ``var_freeze_step`` = the last warm-up step (tutorial: "usually the last
      step of the learning rate warmup"); ``local_step_scaler`` = the steps in which the
      learning rate halves, so the local-step interval doubles each time it does (the
      tutorial's learning-rate-based policy), up to the default ``local_step_clipper`` 16.

Run: ``python bench/onebit.py [--task gpt|mlp] [--png docs/packages/zero-optim-onebit.png]``.
Nothing here is a test; it prints markdown tables.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zero_optim import FusedLamb, OnebitAdam, OnebitLamb, ZeroOneAdam

GLOO = {"comm_backend_name": "gloo"}
# the demo's GPT and corpus (also in the spawned ranks, which run this module's top level)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demo"))


def _init(rank: int, store: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=300),
    )


def _comm_rank(rank: int, store: str, out: str, numel: int, steps: int) -> None:
    _init(rank, store)
    rows = {}
    makers = {
        "OnebitAdam": lambda ps: OnebitAdam(ps, freeze_step=2, **GLOO),
        "ZeroOneAdam (1-bit steps)": lambda ps: ZeroOneAdam(
            ps, var_freeze_step=10**6, var_update_scaler=1, **GLOO
        ),
        "ZeroOneAdam (local steps, H=4)": lambda ps: ZeroOneAdam(
            ps, var_freeze_step=2, local_step_scaler=1, local_step_clipper=4, **GLOO
        ),
        "OnebitLamb": lambda ps: OnebitLamb(ps, freeze_step=2, **GLOO),
    }
    for name, make in makers.items():
        p = torch.nn.Parameter(torch.randn(numel))
        opt = make([p])
        gen = torch.Generator().manual_seed(rank)
        warm, frozen, times = [], [], []
        for step in range(2 + 8 + steps):
            p.grad = torch.randn(numel, generator=gen)
            opt.comm_counter.reset()
            dist.barrier()
            start = time.perf_counter()
            opt.step()
            elapsed = time.perf_counter() - start
            counts = (opt.comm_counter.bytes_in, opt.comm_counter.bytes_sent)
            (warm if step < 2 else frozen).append(counts)
            if step == 0:
                rows.setdefault("fp32 all-reduce (warm-up step)", (counts, [], numel))
            if step >= 10:
                times.append(elapsed)
            if step == 0:
                rows["fp32 all-reduce (warm-up step)"][1].append(elapsed)
        if "local" in name:  # steps without communication count: average over intervals
            n = len(frozen)
            per_step = (sum(c[0] for c in frozen) / n, sum(c[1] for c in frozen) / n)
        else:  # the typical compressed step (0/1 Adam's rare variance steps are fp32)
            per_step = (
                statistics.median(c[0] for c in frozen),
                statistics.median(c[1] for c in frozen),
            )
        rows[name] = (per_step, times, numel)
    # fp32 all-reduce timing on its own, same size
    buf = torch.randn(numel)
    times = []
    for step in range(5 + steps):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(buf)
        if step >= 5:
            times.append(time.perf_counter() - start)
    rows["fp32 all-reduce (warm-up step)"] = (
        rows["fp32 all-reduce (warm-up step)"][0],
        times,
        numel,
    )
    torch.save(rows, os.path.join(out, f"comm{rank}.pt"))
    dist.destroy_process_group()


class RegressionTask:
    """An 8-32-1 tanh MLP fitting ``sin(x @ w)`` plus noise of std 0.3 (loss floor 0.09),
    batch 64 per rank; held-out MSE on 2048 fresh points after every step."""

    name = "MLP regression"
    metric = "held-out MSE"
    eval_every = 1
    final_window = 20  # steps averaged into the final loss
    steps = 1500
    lr = 1e-2
    lamb_lr = 1e-2

    def __init__(self) -> None:
        self.x_eval, self.y_eval = self._batch(99, 99, size=2048)

    def make_model(self) -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))

    @staticmethod
    def _batch(rank: int, step: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(1000 * step + rank)
        w = torch.randn(8, 1, generator=torch.Generator().manual_seed(7))
        x = torch.randn(size, 8, generator=gen)
        return x, torch.sin(x @ w) + 0.3 * torch.randn(size, 1, generator=gen)

    def loss(self, model: torch.nn.Module, rank: int, step: int) -> torch.Tensor:
        x, y = self._batch(rank, step)
        return torch.nn.functional.mse_loss(model(x), y)

    @torch.no_grad()
    def eval_loss(self, model: torch.nn.Module) -> float:
        return torch.nn.functional.mse_loss(model(self.x_eval), self.y_eval).item()


class GPTTask:
    """The demo's GPT (demo/gpt.py) on its character corpus, shrunk to train in minutes:
    2 layers, width 128, 4 heads, context 64, no dropout (about 0.4M parameters, tensors
    from 128 to 65,536 elements); 16 random training windows per rank per step; held-out
    cross-entropy on 64 fixed windows of the corpus's held-out tail every 10 steps."""

    name = "demo GPT"
    metric = "held-out cross-entropy"
    eval_every = 10
    final_window = 50
    steps = 1000
    lr = 3e-3
    lamb_lr = 1e-2

    def __init__(self) -> None:
        from corpus import load_corpus  # demo/, on sys.path (see the top of this file)

        vocab, self.train, held_out = load_corpus(64)
        self.vocab_size = len(vocab)
        windows = [held_out[i] for i in range(64)]
        self.x_eval = torch.stack([w[0] for w in windows])
        self.y_eval = torch.stack([w[1] for w in windows])

    def make_model(self) -> torch.nn.Module:
        from gpt import GPT, GPTConfig

        torch.manual_seed(0)
        cfg = GPTConfig(self.vocab_size, context=64, layers=2, heads=4, width=128, dropout=0)
        return GPT(cfg)

    def loss(self, model: torch.nn.Module, rank: int, step: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(1000 * step + rank)
        picks = torch.randint(len(self.train), (16,), generator=gen).tolist()
        x = torch.stack([self.train[i][0] for i in picks])
        y = torch.stack([self.train[i][1] for i in picks])
        return model(x, y)

    @torch.no_grad()
    def eval_loss(self, model: torch.nn.Module) -> float:
        return model(self.x_eval, self.y_eval).item()


TASKS = {"gpt": GPTTask, "mlp": RegressionTask}


def lr_factor(step: int, warmup: int, halving: float) -> float:
    """The learning rate of step ``step + 1`` as a fraction of the peak (see the docstring)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 ** ((step - warmup) / halving)


def _conv_rank(
    rank: int,
    store: str,
    out: str,
    task_name: str,
    train_steps: int,
    warmup: int,
    halving: int,
    freeze: int,
    lr: float,
    lamb_lr: float,
    only: list[str] | None,
) -> None:
    _init(rank, store)
    makers = {
        "AdamW": (lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=0.0), True),
        "OnebitAdam": (lambda ps: OnebitAdam(ps, lr=lr, freeze_step=freeze, **GLOO), False),
        "ZeroOneAdam": (
            lambda ps: ZeroOneAdam(
                ps, lr=lr, var_freeze_step=warmup, local_step_scaler=halving, **GLOO
            ),
            False,
        ),
        "FusedLamb": (lambda ps: FusedLamb(ps, lr=lamb_lr), True),
        "OnebitLamb": (
            lambda ps: OnebitLamb(ps, lr=lamb_lr, freeze_step=freeze, **GLOO),
            False,
        ),
    }
    task = TASKS[task_name]()
    curves = {}
    for name, (make, reference) in makers.items():
        if only and name not in only:
            continue
        model = task.make_model()
        opt = make(model.parameters())
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, warmup, halving)
        )
        losses = {}
        for step in range(train_steps):
            model.zero_grad(set_to_none=True)
            task.loss(model, rank, step).backward()
            if reference:
                for p in model.parameters():
                    dist.all_reduce(p.grad)
                    p.grad.div_(2)
            opt.step()
            schedule.step()
            if step % task.eval_every == 0 or step == train_steps - 1:
                losses[step] = task.eval_loss(model)
        curves[name] = losses
    torch.save(curves, os.path.join(out, f"conv{rank}.pt"))
    dist.destroy_process_group()


def _spawn(fn, *args) -> str:
    out = tempfile.mkdtemp()
    mp.start_processes(
        fn, args=(os.path.join(out, "store"), out, *args), nprocs=2, start_method="spawn"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=int, default=4 * 2**20)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--task", choices=sorted(TASKS), default="gpt", help="convergence task (see above)"
    )
    parser.add_argument(
        "--train-steps", type=int, default=None, help="default: the task's (gpt 1000, mlp 1500)"
    )
    parser.add_argument(
        "--skip-comm", action="store_true", help="only the convergence part (it is the slow one)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="LR warm-up steps (default: 10%% of the run)"
    )
    parser.add_argument("--halvings", type=int, default=4, help="LR halvings after warm-up")
    parser.add_argument(
        "--freeze", type=int, default=None, help="1-bit freeze_step (default: 20%% of the run)"
    )
    parser.add_argument(
        "--lr", type=float, default=None, help="peak lr of the Adam family (default: task's)"
    )
    parser.add_argument(
        "--lamb-lr", type=float, default=None, help="peak lr of the LAMB pair (default: task's)"
    )
    parser.add_argument(
        "--only", nargs="+", default=None, help="train only these optimizers (table names)"
    )
    parser.add_argument("--png", default=None)
    args = parser.parse_args()
    task = TASKS[args.task]
    args.train_steps = args.train_steps or task.steps
    args.lr = args.lr or task.lr
    args.lamb_lr = args.lamb_lr or task.lamb_lr

    print(f"- torch {torch.__version__}, Python {platform.python_version()}, {platform.system()}")
    print(f"- CPUs: {os.cpu_count()}; load average at start: {os.getloadavg()}")
    print("- 2 gloo ranks on this machine (1 thread each)\n")

    if not args.skip_comm:
        comm_table(args)
    convergence(args, task)


def comm_table(args: argparse.Namespace) -> None:
    out = _spawn(_comm_rank, args.params, args.steps)
    rows = torch.load(os.path.join(out, "comm0.pt"), weights_only=False)
    base_in, base_sent = rows["fp32 all-reduce (warm-up step)"][0]
    print(f"**Communication per step per rank, {args.params:,} fp32 params**\n")
    print(
        "| phase | bytes to collectives | vs fp32 | est. bytes sent | vs fp32 | ms/step (median) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, ((b_in, b_sent), times, _) in rows.items():
        ms = 1000 * statistics.median(times) if times else float("nan")
        print(
            f"| {name} | {b_in:,.0f} | {base_in / b_in:.1f}x | {b_sent:,.0f} | "
            f"{base_sent / b_sent:.1f}x | {ms:.1f} |"
        )
    print(
        "\nThe fp32 row times a bare `all_reduce` of the gradient; the others time the whole"
        " optimizer step (compression, collectives, update). ZeroOneAdam's local-steps row"
        " averages over its interval: 3 of 4 steps send nothing. The other rows show the"
        " median step (0/1 Adam's occasional variance steps are fp32 all-reduces).\n"
    )


def _at(curve: dict[int, float], step: int) -> float:
    """The last evaluation at or before ``step``."""
    return curve[max(s for s in curve if s <= step)]


def convergence(args: argparse.Namespace, task: type) -> None:
    warmup = args.warmup if args.warmup is not None else args.train_steps // 10
    freeze = args.freeze if args.freeze is not None else args.train_steps // 5
    halving = max(1, round((args.train_steps - warmup) / args.halvings))
    out = _spawn(
        _conv_rank,
        args.task,
        args.train_steps,
        warmup,
        halving,
        freeze,
        args.lr,
        args.lamb_lr,
        args.only,
    )
    curves = torch.load(os.path.join(out, "conv0.pt"), weights_only=False)
    last = args.train_steps - task.final_window
    final = {}
    for name, c in curves.items():
        tail = [v for s, v in c.items() if s >= last]
        final[name] = sum(tail) / len(tail)
    print(
        f"**Convergence on the {task.name}: {task.metric}, {args.train_steps} steps,"
        f" lr {args.lr} (LAMB pair {args.lamb_lr}) warmed up over"
        f" {warmup} steps then halved every {halving}; OnebitAdam/OnebitLamb freeze_step"
        f" {freeze}; ZeroOneAdam var_freeze_step {warmup}, local_step_scaler {halving}**\n"
    )
    marks = [0, warmup, freeze, args.train_steps // 2, args.train_steps - 1]
    print(
        "| optimizer | " + " | ".join(f"step {m + 1}" for m in marks) + " | final | vs baseline |"
    )
    print("|---|" + "---:|" * (len(marks) + 2))
    for name, c in curves.items():
        base = final.get("FusedLamb" if "Lamb" in name else "AdamW", final[name])
        print(
            f"| {name} | "
            + " | ".join(f"{_at(c, m):.4f}" for m in marks)
            + f" | {final[name]:.4f} | {100 * (final[name] / base - 1):+.1f}% |"
        )
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4), dpi=80)
        for name, c in curves.items():
            ax.plot([s + 1 for s in c], list(c.values()), label=name, linewidth=1)
        ax.axvline(warmup, color="gray", linestyle=":", linewidth=1, label="end of LR warm-up")
        ax.axvline(freeze, color="gray", linestyle="--", linewidth=1, label="freeze_step")
        ax.set(xlabel="step", ylabel=task.metric, yscale="log", title=f"{task.name}, 2 gloo ranks")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.png)
        print(f"\nplot: {args.png}")


if __name__ == "__main__":
    main()

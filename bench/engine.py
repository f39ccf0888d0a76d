"""Training-step time and memory per rank: zero_core's ZeRO stages 0-3 against DDP, FSDP2
and DeepSpeed, on a GPT-style model over 2 CPU ranks (gloo).

What it measures
    One optimizer step (forward, backward, gradient reduction, AdamW step, parameter
    gather where the method has one) of a GPT-style language model on 2 ranks of gloo on
    CPU, each rank with ``torch.set_num_threads(1)`` and its own micro-batch of random
    tokens. Methods (``--methods``):

    * ``zero``: ``zero_core.initialize`` with a DeepSpeed JSON config at ZeRO stage 0-3;
    * ``deepspeed``: ``deepspeed.initialize`` with the same JSON config, run with the
      interpreter ``--deepspeed-python`` (or env ``ZEROSPEED_DS_PYTHON``; default: this one),
      which must have ``deepspeed`` installed; its rows read n/a with the reason otherwise;
    * ``ddp``: ``torch.nn.parallel.DistributedDataParallel`` (the torch-native stage 0);
    * ``fsdp2``: ``torch.distributed.fsdp.fully_shard`` on every block and the root (the
      torch-native stage 3; params, grads and optimizer state sharded).

    Every method trains the same model from the same seed with ``torch.optim.AdamW``
    (lr 1e-4, betas (0.9, 0.95), eps 1e-8, weight_decay 0.01, torch's default CPU
    implementation), so the table compares engines, not optimizer kernels. The JSON of
    zero_core and DeepSpeed says ``"optimizer": {"type": "AdamW"}`` with ``"torch_adam":
    true`` (without it DeepSpeed would pick its own FusedAdam kernel and zero_core, with
    zero-optim installed, zero-optim's CPUAdam). DDP and FSDP2 build ``torch.optim.AdamW``
    directly.

    Precision (``--dtypes``): ``fp32``; ``bf16`` = the JSON's ``"bf16": {"enabled": true}``
    for zero_core and DeepSpeed (bf16 weights and compute, fp32 master weights and optimizer
    state), FSDP2's ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` (fp32
    sharded params are the masters) and, for DDP, fp32 params under
    ``torch.autocast("cpu", bf16)`` (closest native equivalent; not the same arithmetic).

Model
    GPT-style, pure torch: token + learned position embedding, ``--model-size`` blocks of
    pre-LayerNorm causal self-attention (``F.scaled_dot_product_attention``) and a 4x GELU
    MLP, final LayerNorm and an *untied* bias-free LM head (untied so that no method needs
    special handling of shared weights at stage 3). Cross-entropy loss on random tokens.

Method
    Every (method, stage, dtype) cell runs in fresh processes: ``torchrun --standalone
    --nproc_per_node 2`` (run as ``python -m torch.distributed.run`` with the interpreter of
    that method) re-enters this script with ``--worker``. So each cell's memory peak is its
    own. A worker builds the model (same seed on every rank), wraps it, runs ``--warmup``
    steps, then ``--steps`` timed steps, each started after a ``dist.barrier()``; a step's
    time is the slowest rank's. The cells are run ``--repeats`` rounds, each round in a
    rotated order, so the drift of a shared VM hits them alike; the table gives the median
    over all timed steps of all rounds and the spread (min-max) of the per-round medians.

Memory columns (per rank, the larger of the two ranks, the largest over the rounds)
    * peak RSS train: the process's peak resident set during warm-up and timed steps. The
      high-water mark is reset (``/proc/self/clear_refs`` = 5) after the engine is built,
      so construction (every method builds the full fp32 model on every rank first) does
      not count.
    * peak RSS all: ``getrusage(RUSAGE_SELF).ru_maxrss`` at the end of the process,
      construction included (torch's import alone is a few hundred MiB of it).
    * tensors: bytes of all live CPU tensor storages after the last step (found through
      ``gc``, each storage counted once): weights, gradients kept between steps, fp32
      masters, optimizer state, persistent buffers.
    * optim: bytes of the innermost ``torch.optim`` optimizer's state (Adam's two moments)
      plus its parameters when those are not the model's parameters (fp32 master copies).

Ratio
    "vs" is the reference row's median step time divided by this row's: above 1, this row
    is faster. The reference at each stage is DeepSpeed at the same stage when it ran, else
    the torch-native equivalent (DDP for stage 0, FSDP2 for stage 3); "vs native" compares
    stage 0 with DDP and stage 3 with FSDP2 always.

Run
    python bench/engine.py [--quick] [--stages 0,1,2,3] [--methods zero,deepspeed,ddp,fsdp2]
        [--dtypes fp32[,bf16]] [--model-size small|medium] [--steps N] [--warmup N]
        [--repeats N] [--deepspeed-python PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

# --------------------------------------------------------------------------------------------
# The model and the configs (shared by the driver, for the header, and by the workers)
# --------------------------------------------------------------------------------------------

#: name -> (d_model, layers, heads, vocab, seq_len, micro_batch)
SIZES = {
    "small": (576, 8, 9, 16384, 128, 1),
    "medium": (768, 10, 12, 16384, 128, 1),
}
ADAMW = {"lr": 1e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.01}
METHODS = ("zero", "deepspeed", "ddp", "fsdp2")
LABELS = {
    "zero": "zero_core",
    "deepspeed": "DeepSpeed",
    "ddp": "torch DDP",
    "fsdp2": "torch FSDP2",
}
NATIVE_STAGE = {"ddp": 0, "fsdp2": 3}  # the stage the torch-native method stands beside


def count_params(size: str) -> int:
    d, layers, _, vocab, seq, _ = SIZES[size]
    block = 4 * d * d + 4 * d + 8 * d * d + 5 * d + 4 * d  # qkv+proj, fc+out, 2 LayerNorms
    return vocab * d + seq * d + layers * block + 2 * d + vocab * d


def ds_config(stage: int, dtype: str, size: str) -> dict[str, Any]:
    """The DeepSpeed JSON config both engines get."""
    params: dict[str, Any] = {**ADAMW, "torch_adam": True}
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": SIZES[size][5],
        "gradient_accumulation_steps": 1,
        "steps_per_print": 1_000_000,
        "optimizer": {"type": "AdamW", "params": params},
        "zero_optimization": {"stage": stage},
    }
    if dtype == "bf16":
        cfg["bf16"] = {"enabled": True}
    return cfg


# --------------------------------------------------------------------------------------------
# Worker: one (method, stage, dtype) cell on one rank, run under torchrun
# --------------------------------------------------------------------------------------------


def build_model(size: str) -> Any:
    import torch
    import torch.nn.functional as F  # noqa: N812 - the usual spelling
    from torch import nn

    d, layers, heads, vocab, seq, _ = SIZES[size]

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(d)
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.ln2 = nn.LayerNorm(d)
            self.fc = nn.Linear(d, 4 * d)
            self.out = nn.Linear(4 * d, d)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, heads, d // heads).unbind(2)
            a = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
            )
            x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
            return x + self.out(F.gelu(self.fc(self.ln2(x))))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(vocab, d)
            self.pos = nn.Embedding(seq, d)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.ln_f = nn.LayerNorm(d)
            self.head = nn.Linear(d, vocab, bias=False)  # untied from self.tok

        def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            pos = torch.arange(idx.shape[1])
            x = self.tok(idx) + self.pos(pos)
            for block in self.blocks:
                x = block(x)
            logits = self.head(self.ln_f(x))
            return F.cross_entropy(logits.float().view(-1, vocab), targets.view(-1))

    torch.manual_seed(0)
    model = GPT()
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
    return model


def batch(size: str, rank: int, step: int) -> tuple[Any, Any]:
    import torch

    _, _, _, vocab, seq, micro = SIZES[size]
    g = torch.Generator().manual_seed(10_000 * step + rank)
    tokens = torch.randint(vocab, (micro, seq + 1), generator=g)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def tensor_bytes() -> int:
    """Bytes of every live CPU tensor storage reachable through gc (each storage once)."""
    import torch

    gc.collect()
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        try:
            if not isinstance(obj, torch.Tensor) or obj.device.type != "cpu":
                continue
            if hasattr(obj, "to_local") and type(obj).__name__ == "DTensor":
                obj = obj.to_local()
            st = obj.untyped_storage()
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        except Exception:  # meta/fake/functional tensors, storages without data
            continue
    return sum(seen.values())


def optim_bytes(opt: Any, model_params: set[int]) -> int:
    import torch

    total = 0
    seen: set[int] = set()

    def add(t: Any) -> None:
        nonlocal total
        if not torch.is_tensor(t):
            return
        if hasattr(t, "to_local"):
            t = t.to_local()
        st = t.untyped_storage()
        if st.data_ptr() in seen or st.nbytes() == 0:
            return
        seen.add(st.data_ptr())
        total += st.nbytes()

    for state in opt.state.values():
        for v in state.values():
            if torch.is_tensor(v) and v.numel() > 1:
                add(v)
    for g in opt.param_groups:
        for p in g["params"]:
            if id(p) not in model_params:
                add(p)
    return total


def innermost_optimizer(opt: Any) -> Any:
    import torch

    for _ in range(4):
        if isinstance(opt, torch.optim.Optimizer) and type(opt).__module__.startswith(
            "torch.optim"
        ):
            return opt
        inner = getattr(opt, "inner", None) or getattr(opt, "optimizer", None)
        if inner is None:
            break
        opt = inner
    return opt


def peak_kib() -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    method, stage, dtype, size = args.method, args.stage, args.dtype, args.model_size
    bf16 = dtype == "bf16"
    if method == "deepspeed":
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    else:
        dist.init_process_group("gloo")
    model = build_model(size)
    model_params = {id(p) for p in model.parameters()}
    autocast = False
    if method == "zero":
        import zero_core

        engine, opt, _, _ = zero_core.initialize(model=model, config=ds_config(stage, dtype, size))

        def step(x: Any, y: Any) -> float:
            loss = engine(x, y)
            engine.backward(loss)
            engine.step()
            return float(loss)

        inner = innermost_optimizer(opt)
    elif method == "deepspeed":
        engine, opt, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=model.parameters(),
            config=ds_config(stage, dtype, size),
        )

        def step(x: Any, y: Any) -> float:
            loss = engine(x, y)
            engine.backward(loss)
            engine.step()
            return float(loss)

        inner = innermost_optimizer(opt)
    elif method == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model)
        opt = torch.optim.AdamW(ddp.parameters(), **ADAMW)
        autocast = bf16

        def step(x: Any, y: Any) -> float:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = ddp(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(loss)

        inner = opt
    elif method == "fsdp2":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16 if bf16 else None,
            reduce_dtype=torch.float32 if bf16 else None,
        )
        for block in model.blocks:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        opt = torch.optim.AdamW(model.parameters(), **ADAMW)
        model_params = {id(p) for p in model.parameters()}

        def step(x: Any, y: Any) -> float:
            loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(loss)

        inner = opt
    else:
        raise SystemExit(f"unknown method {method!r}")

    gc.collect()
    setup_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reset = reset_peak()
    times = []
    losses = []
    for i in range(args.warmup + args.steps):
        x, y = batch(size, rank, i)
        dist.barrier()
        start = time.perf_counter()
        losses.append(step(x, y))
        elapsed = time.perf_counter() - start
        if i >= args.warmup:
            times.append(elapsed)
    dist.barrier()
    train_peak = peak_kib() if reset else None
    live = tensor_bytes()
    ob = optim_bytes(inner, model_params)
    all_peak = max(setup_peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    mine = {
        "times": times,
        "losses": losses,
        "train_peak_kib": train_peak,
        "all_peak_kib": all_peak,
        "tensor_bytes": live,
        "optim_bytes": ob,
        "inner": f"{type(inner).__module__}.{type(inner).__name__}",
    }
    with open(f"{args.out}.{rank}", "w", encoding="utf-8") as f:
        json.dump(mine, f)
    dist.barrier()
    dist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


@dataclass
class Cell:
    method: str
    stage: int
    dtype: str
    step_times: list[float] = field(default_factory=list)  # slowest rank, every timed step
    round_medians: list[float] = field(default_factory=list)
    train_peak_kib: int | None = None
    all_peak_kib: int = 0
    tensor_bytes: int = 0
    optim_bytes: int = 0
    losses: list[float] = field(default_factory=list)
    inner: str = ""
    error: str = ""

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.method, self.stage, self.dtype)

    @property
    def median(self) -> float | None:
        return statistics.median(self.step_times) if self.step_times else None


def run_cell(cell: Cell, args: argparse.Namespace, python: str, tmp: str) -> None:
    out = os.path.join(tmp, f"{cell.method}-{cell.stage}-{cell.dtype}.json")
    paths = [f"{out}.{r}" for r in range(2)]
    for path in paths:
        if os.path.exists(path):
            os.remove(path)
    cmd = [
        python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        os.path.abspath(__file__),
        "--worker",
        "--method",
        cell.method,
        "--stage",
        str(cell.stage),
        "--dtype",
        cell.dtype,
        "--model-size",
        args.model_size,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--out",
        out,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (os.path.dirname(os.path.abspath(__file__)), env.get("PYTHONPATH")) if p
    )
    proc = run_group(cmd, env, args.timeout)
    if proc.returncode != 0 or not all(os.path.exists(p) for p in paths):
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errs = [ln for ln in lines if "Error:" in ln and "ChildFailedError" not in ln]
        last = errs[0] if errs else (lines[-1] if lines else f"exit {proc.returncode}")
        cell.error = " ".join(last.split())[:200]
        if args.verbose:
            print(proc.stderr[-4000:], file=sys.stderr)
        return
    ranks = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            ranks.append(json.load(f))
    per_step = [max(ts) for ts in zip(*(r["times"] for r in ranks))]
    cell.step_times.extend(per_step)
    cell.round_medians.append(statistics.median(per_step))
    peaks = [r["train_peak_kib"] for r in ranks]
    if all(p is not None for p in peaks):
        cell.train_peak_kib = max(cell.train_peak_kib or 0, *peaks)
    cell.all_peak_kib = max(cell.all_peak_kib, *(r["all_peak_kib"] for r in ranks))
    cell.tensor_bytes = max(cell.tensor_bytes, *(r["tensor_bytes"] for r in ranks))
    cell.optim_bytes = max(cell.optim_bytes, *(r["optim_bytes"] for r in ranks))
    cell.losses = ranks[0]["losses"]
    cell.inner = ranks[0]["inner"]
    cell.error = ""


def run_group(cmd: list[str], env: dict[str, str], timeout: float) -> Any:
    """Run ``cmd`` in its own process group; on timeout or interrupt kill the whole group
    (torchrun and its workers), so no rank outlives the driver."""
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def zero_core_origin() -> str:
    """Where the workers' zero_core comes from, and its git revision (dirty or not)."""
    import importlib.util

    spec = importlib.util.find_spec("zero_core")
    if spec is None or not spec.origin:
        return "not importable"
    where = os.path.dirname(spec.origin)
    try:
        rev = subprocess.run(
            ["git", "-C", where, "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--", "."],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return where
    return f"{where} (git {rev}{', uncommitted changes' if dirty else ''})"


def deepspeed_version(python: str) -> tuple[str | None, str]:
    code = "import deepspeed, torch; print(deepspeed.__version__, torch.__version__)"
    try:
        proc = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{python}: {e}"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"deepspeed does not import with {python}: {last[:200]}"
    ds, torch_version = proc.stdout.split()[-2:]
    return ds, f"deepspeed {ds} (torch {torch_version}) via {python}"


def mib(kib_or_bytes: float | None, *, kib: bool = False) -> str:
    if kib_or_bytes is None:
        return "n/a"
    return f"{kib_or_bytes / (1024 if kib else 1 << 20):.0f}"


def reference_for(cell: Cell, cells: dict[tuple[str, int, str], Cell]) -> Cell | None:
    ds = cells.get(("deepspeed", cell.stage, cell.dtype))
    if cell.method != "deepspeed" and ds is not None and ds.median is not None:
        return ds
    return native_for(cell, cells)


def native_for(cell: Cell, cells: dict[tuple[str, int, str], Cell]) -> Cell | None:
    for method, stage in NATIVE_STAGE.items():
        other = cells.get((method, stage, cell.dtype))
        if stage == cell.stage and method != cell.method and other and other.median:
            return other
    return None


def print_table(cells: dict[tuple[str, int, str], Cell], dtypes: list[str]) -> None:
    print(
        "| method | stage | dtype | ms/step (median) | round medians (min-max) | vs ref "
        "| vs native | peak RSS train MiB | peak RSS all MiB | tensors MiB | optim MiB |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    order = {m: i for i, m in enumerate(METHODS)}
    for dtype in dtypes:
        rows = sorted(
            (c for c in cells.values() if c.dtype == dtype),
            key=lambda c: (c.stage, order[c.method]),
        )
        for c in rows:
            stage = str(c.stage) if c.method in ("zero", "deepspeed") else f"({c.stage})"
            name = LABELS[c.method]
            if c.median is None:
                why = c.error or "not run"
                print(f"| {name} | {stage} | {dtype} | n/a | | | | | | | ({why}) |")
                continue
            ref = reference_for(c, cells)
            nat = native_for(c, cells)
            vs = f"{ref.median / c.median:.2f} ({LABELS[ref.method]})" if ref else ""
            vn = f"{nat.median / c.median:.2f}" if nat else ""
            spread = f"{min(c.round_medians) * 1e3:.0f}-{max(c.round_medians) * 1e3:.0f}"
            print(
                f"| {name} | {stage} | {dtype} | {c.median * 1e3:.0f} | {spread} | {vs} | {vn} "
                f"| {mib(c.train_peak_kib, kib=True)} | {mib(c.all_peak_kib, kib=True)} "
                f"| {mib(c.tensor_bytes)} | {mib(c.optim_bytes)} |"
            )
    print()


def check_losses(cells: dict[tuple[str, int, str], Cell]) -> list[str]:
    """Same model, data and optimizer: every method's first loss should agree, and the
    trajectories should stay close (fp32: tight; bf16: loose)."""
    notes = []
    for dtype in {c.dtype for c in cells.values()}:
        ref = cells.get(("ddp", 0, dtype)) or next(
            (c for c in cells.values() if c.dtype == dtype and c.losses), None
        )
        if ref is None or not ref.losses:
            continue
        tol = 1e-3 if dtype == "fp32" else 5e-2
        for c in cells.values():
            if c.dtype != dtype or not c.losses or c is ref:
                continue
            diff = max(abs(a - b) / abs(b) for a, b in zip(c.losses, ref.losses))
            if not diff <= tol or not all(math.isfinite(v) for v in c.losses):
                notes.append(
                    f"{LABELS[c.method]} stage {c.stage} {dtype}: rank-0 losses differ from "
                    f"{LABELS[ref.method]}'s by up to {diff:.2g} relative (tolerance {tol:g})"
                )
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="0,1,2,3")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--dtypes", default="fp32", help="fp32 and/or bf16, comma-separated")
    parser.add_argument(
        "--model-size", choices=sorted(SIZES), default="small", help="small ~51M, medium ~96M"
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="rounds over all cells")
    parser.add_argument(
        "--quick", action="store_true", help="~4 minutes: 1 round, 1 warm-up + 2 timed steps"
    )
    parser.add_argument(
        "--deepspeed-python",
        default=os.environ.get("ZEROSPEED_DS_PYTHON", sys.executable),
        help="interpreter with deepspeed installed (env ZEROSPEED_DS_PYTHON)",
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds per process")
    parser.add_argument("--verbose", action="store_true", help="print failing workers' stderr")
    # worker mode (internal)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--stage", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    quick = args.quick
    args.steps = args.steps or (2 if quick else 4)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    args.repeats = args.repeats or (1 if quick else 2)
    stages = [int(s) for s in args.stages.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [m for m in methods if m not in METHODS]
    bad += [d for d in dtypes if d not in ("fp32", "bf16")]
    if bad or any(s not in (0, 1, 2, 3) for s in stages):
        parser.error(f"unknown method, dtype or stage: {bad or stages}")
    if min(args.steps, args.repeats) < 1 or args.warmup < 0:
        parser.error("--steps and --repeats must be positive, --warmup >= 0")

    ds_version, ds_note = (None, "not requested")
    if "deepspeed" in methods:
        ds_version, ds_note = deepspeed_version(args.deepspeed_python)

    cells: dict[tuple[str, int, str], Cell] = {}
    for dtype in dtypes:
        for method in methods:
            if method in NATIVE_STAGE:
                if NATIVE_STAGE[method] in stages:
                    cells[(method, NATIVE_STAGE[method], dtype)] = Cell(
                        method, NATIVE_STAGE[method], dtype
                    )
                continue
            for s in stages:
                cells[(method, s, dtype)] = Cell(method, s, dtype)
    if ds_version is None:
        for c in cells.values():
            if c.method == "deepspeed":
                c.error = ds_note

    import torch  # the driver only needs it for the header

    d, layers, heads, vocab, seq, micro = SIZES[args.model_size]
    print("# ZeRO training step: zero_core vs DeepSpeed, DDP and FSDP2 (2 CPU ranks, gloo)")
    print()
    print(f"- command: `{shlex.join([sys.executable, *sys.argv])}`")
    print(f"- torch {torch.__version__}, Python {platform.python_version()}, {platform.system()}")
    print(f"- CPU: {cpu_model()} ({os.cpu_count()} logical CPUs); 1 torch thread per rank")
    from _machine import load_average  # bench/ is on sys.path when a script runs

    print(f"- load average (1/5/15 min) at start: {load_average()} (a shared VM: noisy)")
    print(f"- zero_core: {zero_core_origin()}")
    print(f"- DeepSpeed: {ds_note}")
    print(
        f"- model `{args.model_size}`: GPT, d_model {d}, {layers} blocks, {heads} heads, vocab "
        f"{vocab}, seq {seq}, untied LM head: {count_params(args.model_size) / 1e6:.1f}M params; "
        f"micro-batch {micro} x {seq} tokens per rank, 1 step = 1 optimizer step"
    )
    print(f"- optimizer: torch.optim.AdamW {ADAMW}")
    print(
        f"- {args.warmup} warm-up + {args.steps} timed steps per process, {args.repeats} "
        f"round(s) in rotated order; ms/step = median over all timed steps of the slower rank"
    )
    print(
        "- JSON config (zero_core and DeepSpeed): "
        f"`{json.dumps(ds_config(1, 'fp32', args.model_size))}` with the "
        'row\'s stage (and `"bf16": {"enabled": true}` for bf16 rows)'
    )
    print()
    sys.stdout.flush()

    order = [c for c in cells.values() if not c.error]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zs-engine-") as tmp:
        for r in range(args.repeats):
            rotated = order[r % len(order) :] + order[: r % len(order)] if order else []
            for c in rotated:
                python = args.deepspeed_python if c.method == "deepspeed" else sys.executable
                t0 = time.perf_counter()
                run_cell(c, args, python, tmp)
                print(
                    f"round {r + 1}/{args.repeats}: {LABELS[c.method]} stage {c.stage} "
                    f"{c.dtype}: {time.perf_counter() - t0:.0f} s"
                    + (f" ERROR {c.error}" if c.error else ""),
                    file=sys.stderr,
                    flush=True,
                )
    print(f"- wall time: {time.perf_counter() - start:.0f} s")
    print()
    print_table(cells, dtypes)
    inner = sorted({f"{LABELS[c.method]}: {c.inner}" for c in cells.values() if c.inner})
    print("- innermost optimizer per method: " + "; ".join(inner))
    notes = check_losses(cells)
    print(
        "- losses: "
        + ("; ".join(notes) if notes else "every method's rank-0 loss trajectory agrees")
    )
    print(
        "- stage in parentheses: a torch-native method shown beside the ZeRO stage it "
        "corresponds to (DDP ~ stage 0, FSDP2 ~ stage 3)"
    )


def cpu_model() -> str:
    from _machine import cpu_model as model  # bench/ is on sys.path when a script runs

    return model()


if __name__ == "__main__":
    main()

"""The largest GPT that trains under a device-memory cap: no offload, optimizer offload to
CPU, optimizer (+ parameter) offload to NVMe; step time against the CPU Adam + disk bound.

What it measures (issue #10)
    For each configuration

    * ``(a)`` no offload,
    * ``(b)`` ``zero_optimization.offload_optimizer.device = "cpu"``,
    * ``(c)`` ``offload_optimizer.device = "nvme"`` and ``offload_param.device = "nvme"``
      (when this zero_core refuses ``offload_param``, (c) runs with the optimizer on NVMe
      only and the table says so),

    the largest model of a GPT-style family whose *device bytes* stay under ``--cap-mib``,
    trained for 3 steps with ZeRO stage 3 on 2 gloo ranks (``torchrun``), one torch thread
    each.

Device bytes
    This machine has no accelerator: every tensor is in the same RAM, so "device memory" is
    an account, not an allocator reading. A rank's device bytes are the bytes of the model
    state zero_core keeps where a GPU's memory would be, read off the live engine's tensors
    (each storage counted once):

    * parameters: this rank's shards between uses (unless ``offload_param``), and the whole
      parameters while gathered;
    * gradients: the full gradients autograd produced and the reducer has not yet split,
      and this rank's fp32 gradient partition unless ``offload_optimizer`` (which keeps it
      in CPU memory, as DeepSpeed does);
    * fp32 master weights and optimizer state, unless ``offload_optimizer``.

    The account is sampled at every moment the model state can peak: after each module's
    parameters are gathered (forward pre-hooks, run after zero_core's), when each
    parameter's gradient has been accumulated (hooks registered before zero_core's, so the
    full gradient and the gathered layer are both still there), and before and after the
    optimizer step. The maximum over one instrumented step (a 4th step, so the 3 timed steps
    run without the sampling) is the "measured" column. Not counted: activations,
    communication staging buffers (transient; the reduce buckets are sized to the largest
    layer, and ``overlap_comm`` is off so no reduce is left in flight), the NVMe swap pool's
    pinned buffers (CPU memory). The prediction is ``zero_core.estimate.estimate_model_states``
    (``.device``), with ``largest_layer_params`` = the family's largest module. Where
    zero_core has its own between-steps account (``zero_core._offload.device_bytes``), the
    worker also checks that this one agrees with it after the instrumented step.

Model family
    Size ``k``: ``d_model = 64k``, ``k`` blocks, ``k`` heads of 64, vocabulary 8192, sequence
    128, micro-batch 1, untied LM head (bench/engine.py's GPT). Parameters grow ~12 k^3 *
    4096 in the blocks plus 2 * 8192 * 64k in the embedding and head (the largest modules).

Precision
    fp32. This CPU has AVX2 but no AVX-512 BF16/AMX: torch runs bf16 matrix products ~5x
    slower than fp32 here (see demo/), and fp32 is also where offload helps most: fp32
    stage 3 keeps 20 bytes per parameter per rank/Nd (4 weight shard + 4 gradient partition
    + 12 master and Adam state) of which optimizer offload moves 16 and parameter offload the
    rest.

Method
    1. Pick, for each configuration, the largest ``k`` whose predicted device bytes fit the
       cap. 2. Run it: build the model on every rank, ``zero_core.initialize`` (stage 3,
       ``AdamW`` from the config: zero-optim's CPUAdam on CPU tensors in every
       configuration), 3 steps; step time = the slower rank's, median of steps 2-3, split in
       forward+backward and ``engine.step()``; peak RSS (``VmHWM``) reset after the engine
       is built. 3. If the measured device bytes exceed the cap, step down one size and
       run again (the table says so).

Bound (configurations with offload)
    * Adam: each rank times ``zero_optim.CPUAdam`` over a flat fp32 tensor of its own shard
      size (the engine's default thread count), both ranks at once as in training; median
      of 3 steps after a warm-up.
    * Disk: ``zero-aio-bench`` (zero-aio's own benchmark: page-locked buffer, O_DIRECT,
      writes timed to fsync) on the NVMe directory with the ``"aio"`` block the engine gets.
    * Bytes that must move per step: the optimizer record (fp32 master + 2 Adam moments, 12
      bytes per shard element) read once and written once; with parameter offload also the
      fp32 weight partition (``max_in_cpu = 0``: all of it on disk) read for the forward's
      gather and again for the backward's (stage 3 releases it in between) and written once
      after the step. Both ranks share one disk, so the bound
      is (both ranks' reads / read GB/s) + (both ranks' writes / write GB/s) + the slower
      rank's Adam time. Bytes the processes actually moved (``/proc/self/io``) are printed
      beside it. The bound in brackets is its part inside ``engine.step()`` (everything but
      the parameter reads of the gathers).
    * Ratios: "step / bound" compares the whole step, which also computes forward and
      backward (the bound leaves that out); "opt / its bound" compares ``engine.step()``
      with the bound's part in it. For the compute, a reference run trains (b)'s
      configuration at (c)'s size (over the cap: parameters on the device, optimizer in
      CPU memory); (c)'s step minus the reference's forward+backward is the time offload
      adds, compared with the whole bound in the last line.

Run
    python bench/offload.py [--cap-mib 384] [--nvme-dir DIR] [--only a,b,c] [--max-k 16]
        [--no-reference] [--aio-size 256M]

--max-k bounds the family searched; (c) fits up to k = 24 under the default cap, but its
swap files then need about 21 GiB of disk, so the default stops at 16 (about 6.5 GiB).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from engine import (
    ADAMW,
    SIZES,
    batch,
    build_model,
    count_params,
    peak_kib,
    reset_peak,
    run_group,
    zero_core_origin,
)

from _machine import cpu_model, load_average  # bench/ is on sys.path when a script runs

VOCAB, SEQ, MICRO, HEAD_DIM = 8192, 128, 1, 64
WORLD = 2
STEPS = 3
MIB = 1 << 20
#: the "aio" block the engine gets, and the zero-aio-bench flags that mean the same
AIO = {"block_size": 1 << 20, "queue_depth": 8, "single_submit": False, "overlap_events": True}
#: optimizer elements swapped as one record (smaller: a smaller pinned pool, more pipelining)
SUB_GROUP = 5_000_000
#: fp32 master weight + Adam's two moments, per shard element
RECORD_BYTES = 12


@dataclass(frozen=True)
class Offload:
    key: str
    label: str
    optimizer: str  # "none", "cpu" or "nvme"
    param: str


CONFIGS = [
    Offload("a", "(a) no offload", "none", "none"),
    Offload("b", "(b) optimizer -> CPU", "cpu", "none"),
    Offload("c", "(c) optimizer + params -> NVMe", "nvme", "nvme"),
]


# --------------------------------------------------------------------------------------------
# The family and its predicted device bytes
# --------------------------------------------------------------------------------------------


def size_name(k: int) -> str:
    """Register family size ``k`` in bench/engine.py's table (its GPT reads it from there)."""
    name = f"gpt-k{k}"
    SIZES[name] = (HEAD_DIM * k, k, k, VOCAB, SEQ, MICRO)
    return name


def largest_layer(k: int) -> int:
    """The parameters of the family's largest module at size ``k``."""
    d = HEAD_DIM * k
    return max(VOCAB * d, 4 * d * d + 4 * d, 3 * d * d + 3 * d)


def predicted(k: int, cfg: Offload) -> Any:
    from zero_core.estimate import estimate_model_states

    return estimate_model_states(
        count_params(size_name(k)),
        3,
        num_gpus_per_node=WORLD,
        precision="fp32",
        offload_optimizer=cfg.optimizer,
        offload_param=cfg.param,
        largest_layer_params=largest_layer(k),
    )


def largest_fitting(cfg: Offload, cap: int, max_k: int) -> int | None:
    fits = [k for k in range(1, max_k + 1) if predicted(k, cfg).device <= cap]
    return max(fits) if fits else None


def param_offload_supported() -> tuple[bool, str]:
    """Whether this zero_core accepts ``offload_param`` (another change adds it)."""
    import zero_core

    cfg = ds_config(CONFIGS[2], 1, tempfile.gettempdir())
    try:
        zero_core.load_config(cfg, WORLD)
    except NotImplementedError as exc:
        return False, " ".join(str(exc).split())[:160]
    return True, ""


def ds_config(cfg: Offload, k: int, nvme_dir: str, *, param_offload: bool = True) -> dict:
    zero: dict[str, Any] = {
        "stage": 3,
        "stage3_param_persistence_threshold": 0,  # every tensor partitioned, as estimated
        "stage3_prefetch_bucket_size": 0,  # gather one module at a time
        "reduce_bucket_size": largest_layer(k),  # full gradients: about one layer at a time
        "overlap_comm": False,  # no reduce left in flight (its buffers would pile up)
        "sub_group_size": SUB_GROUP,
    }
    for block, device in (("offload_optimizer", cfg.optimizer), ("offload_param", cfg.param)):
        if device == "none" or (block == "offload_param" and not param_offload):
            continue
        zero[block] = {"device": device, "nvme_path": nvme_dir}
        if device != "nvme":
            continue
        if block == "offload_optimizer":
            zero[block].update(pipeline_read=True, pipeline_write=True, buffer_count=4)
        else:  # every partition on disk (the default keeps up to 1e9 elements in CPU memory)
            zero[block]["max_in_cpu"] = 0
    return {
        "train_micro_batch_size_per_gpu": MICRO,
        "gradient_accumulation_steps": 1,
        "steps_per_print": 10**6,
        "optimizer": {"type": "AdamW", "params": dict(ADAMW)},
        "zero_optimization": zero,
        "aio": dict(AIO),
    }


# --------------------------------------------------------------------------------------------
# Worker: one configuration on one rank, under torchrun
# --------------------------------------------------------------------------------------------


class DeviceAccount:
    """The bytes of device-resident model state (see the module docstring), sampled at the
    moments they can peak while ``active``."""

    def __init__(self, model: Any, offload_optimizer: bool, offload_param: bool) -> None:
        self.model = model
        self.offload_optimizer = offload_optimizer
        self.offload_param = offload_param
        self.optimizer: Any = None
        self.active = False
        self.peak: dict[str, Any] = {"total": 0}
        # before initialize: these run ahead of zero_core's own gradient hooks
        for p in model.parameters():
            p.register_post_accumulate_grad_hook(lambda _p: self.sample("backward"))

    def attach(self, optimizer: Any) -> None:
        """After initialize: forward pre-hooks run after zero_core's gathers."""
        self.optimizer = optimizer
        for m in self.model.modules():
            m.register_forward_pre_hook(lambda _m, _i: self.sample("forward"))

    def held(self) -> dict[str, int]:
        seen: set[int] = set()

        def size(tensors: Any) -> int:
            total = 0
            for t in tensors:
                if t is None or t.numel() == 0:
                    continue
                st = t.untyped_storage()
                if st.data_ptr() not in seen:
                    seen.add(st.data_ptr())
                    total += st.nbytes()
            return total

        params = list(self.model.parameters())
        shards = [getattr(p, "zs_shard", None) for p in params]
        local = [
            s.local
            for s in shards
            if s is not None and not (self.offload_param and getattr(s, "store", None))
        ]
        out = {
            "params": size(p.data for p in params) + size(local),
            "grads": size(p.grad for p in params),
            "optimizer": 0,
        }
        if not self.offload_optimizer:  # else the partitions are in the optimizer's CPU memory
            out["grads"] += size(s.grad for s in self.optimizer.shards)
        if not self.offload_optimizer:
            state = [t for st in self.optimizer.inner.state.values() for t in st.values()]
            out["optimizer"] = size(self.optimizer.masters) + size(
                t for t in state if hasattr(t, "untyped_storage")
            )
        return out

    def sample(self, where: str) -> None:
        if not self.active or self.optimizer is None:
            return
        held = self.held()
        total = sum(held.values())
        if total > self.peak["total"]:
            self.peak = {"total": total, "where": where, **held}


def zero_core_account(engine: Any) -> int | None:
    """zero_core's own count of device bytes between steps, where this zero_core has one
    (a private helper that landed with parameter offload)."""
    import importlib

    helper = getattr(importlib.import_module("zero_core._offload"), "device_bytes", None)
    return None if helper is None else int(helper(engine))


def io_bytes() -> tuple[int, int]:
    """(read_bytes, write_bytes) this process caused at the storage layer so far."""
    fields: dict[str, int] = {}
    with open("/proc/self/io", encoding="ascii") as f:
        for line in f:
            name, value = line.split(":")
            fields[name] = int(value)
    return fields["read_bytes"], fields["write_bytes"]


def time_cpu_adam(numel: int) -> float:
    """Median seconds of a ``zero_optim.CPUAdam`` step over ``numel`` fp32 elements (both
    ranks at once, after a barrier, as their optimizer steps run in training)."""
    import torch
    import torch.distributed as dist

    import zero_optim

    param = torch.zeros(numel).normal_(0, 0.02)
    param.grad = torch.randn(numel)
    opt = zero_optim.CPUAdam(
        [param],
        lr=ADAMW["lr"],
        betas=tuple(ADAMW["betas"]),
        eps=ADAMW["eps"],
        weight_decay=ADAMW["weight_decay"],
        adamw_mode=True,
    )
    times = []
    for i in range(4):
        dist.barrier()
        start = time.perf_counter()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    import zero_core

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    cfg = next(c for c in CONFIGS if c.key == args.config)
    name = size_name(args.k)
    dist.init_process_group("gloo")
    model = build_model(name)
    account = DeviceAccount(
        model, cfg.optimizer != "none", cfg.param != "none" and args.param_offload
    )
    config = ds_config(cfg, args.k, args.nvme_dir, param_offload=args.param_offload)
    engine, optimizer, _, _ = zero_core.initialize(model=model, config=config)
    account.attach(optimizer)
    gc.collect()
    reset = reset_peak()
    steps: list[dict[str, float]] = []
    io_start = io_bytes()
    for i in range(STEPS + 1):
        if i == STEPS:  # the instrumented step, after the timed ones
            account.active = True
        if i == 1:
            io_start = io_bytes()
        x, y = batch(name, rank, i)
        dist.barrier()
        t0 = time.perf_counter()
        loss = engine(x, y)
        engine.backward(loss)
        t1 = time.perf_counter()
        account.sample("before step")
        engine.step()
        account.sample("after step")
        t2 = time.perf_counter()
        if i < STEPS:
            steps.append({"fwd_bwd": t1 - t0, "opt": t2 - t1, "loss": float(loss)})
        if i == STEPS - 1:
            io_end = io_bytes()
            train_peak = peak_kib() if reset else None
    account.active = False
    check = zero_core_account(engine)
    shard_numel = sum(s.shard_numel for s in optimizer.shards)
    adam = time_cpu_adam(shard_numel) if cfg.optimizer != "none" else None
    timed = STEPS - 1
    mine = {
        "steps": steps,
        "peak": account.peak,
        "train_peak_kib": train_peak,
        "all_peak_kib": peak_kib(),
        "shard_numel": shard_numel,
        "adam_s": adam,
        "io_read": (io_end[0] - io_start[0]) / timed,
        "io_write": (io_end[1] - io_start[1]) / timed,
        "inner": f"{type(optimizer.inner).__module__}.{type(optimizer.inner).__name__}",
        # between steps: (this account, zero_core's own) or None where zero_core has none
        "check": None if check is None else (sum(account.held().values()), check),
    }
    with open(f"{args.out}.{rank}", "w", encoding="utf-8") as f:
        json.dump(mine, f)
    engine.destroy()
    dist.barrier()
    dist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


@dataclass
class Result:
    cfg: Offload
    k: int
    ranks: list[dict[str, Any]]
    param_offload: bool
    note: str = ""

    def slowest(self, key: str) -> float:
        """Median over steps 2-3 of the slower rank's ``key`` (or of fwd_bwd + opt)."""
        per_step = []
        for i in range(1, STEPS):
            per_step.append(max(self._value(r["steps"][i], key) for r in self.ranks))
        return statistics.median(per_step)

    @staticmethod
    def _value(step: dict[str, float], key: str) -> float:
        return step["fwd_bwd"] + step["opt"] if key == "step" else step[key]

    @property
    def peak(self) -> dict[str, Any]:
        return max((r["peak"] for r in self.ranks), key=lambda p: p["total"])

    def bound(self, read_gbps: float, write_gbps: float) -> tuple[float, float]:
        """Seconds per step the offload cannot beat (see the module docstring): (the whole
        step's, the part in ``engine.step()``). Both ranks' bytes, one shared disk: the
        optimizer record read and written once and the slower rank's Adam, in the optimizer
        step; with parameter offload the fp32 weight partition written once after the step
        and read for the forward's gather and again for the backward's (stage 3 releases it
        in between)."""
        adam = max(r["adam_s"] or 0.0 for r in self.ranks)
        if self.cfg.optimizer != "nvme":
            return adam, adam
        elements = sum(r["shard_numel"] for r in self.ranks)
        params = 4 * elements if self.param_offload else 0
        record = RECORD_BYTES * elements
        in_step = record / 1e9 / read_gbps + (record + params) / 1e9 / write_gbps + adam
        return in_step + 2 * params / 1e9 / read_gbps, in_step


def run_config(
    cfg: Offload, k: int, args: argparse.Namespace, tmp: str, param_offload: bool
) -> Result | str:
    """Run one configuration at size ``k`` on 2 ranks; its result, or the error's last line."""
    out = os.path.join(tmp, f"{cfg.key}-k{k}.json")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(WORLD),
        os.path.abspath(__file__),
        "--worker",
        "--config",
        cfg.key,
        "--k",
        str(k),
        "--nvme-dir",
        args.nvme_dir,
        "--out",
        out,
    ]
    if not param_offload:
        cmd.append("--no-param-offload")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    proc = run_group(cmd, env, args.timeout)
    paths = [f"{out}.{r}" for r in range(WORLD)]
    if proc.returncode != 0 or not all(os.path.exists(p) for p in paths):
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errs = [ln for ln in lines if "Error:" in ln and "ChildFailedError" not in ln]
        if args.verbose:
            print(proc.stderr[-4000:], file=sys.stderr)
        return " ".join((errs[0] if errs else lines[-1] if lines else "no output").split())[:200]
    ranks = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            ranks.append(json.load(f))
    return Result(cfg, k, ranks, param_offload and cfg.param != "none")


def run_once(
    cfg: Offload, k: int, args: argparse.Namespace, tmp: str, param_offload: bool
) -> Result:
    t0 = time.perf_counter()
    got = run_config(cfg, k, args, tmp, param_offload)
    print(f"{cfg.label} k={k}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    if isinstance(got, str):
        raise SystemExit(f"{cfg.label} at k={k} failed: {got}")
    return got


def run_largest(
    cfg: Offload, k: int, cap: int, args: argparse.Namespace, tmp: str, param_offload: bool
) -> Result:
    """Run ``cfg`` at size ``k``, one size down while the measured device bytes exceed the
    cap (the prediction leaves out padding; the table says when this happened)."""
    note = ""
    while True:
        got = run_once(cfg, k, args, tmp, param_offload)
        got.note = note
        if got.peak["total"] <= cap or k == 1:
            return got
        note = f"k={k} measured {mib(got.peak['total'])} MiB > cap: one size down"
        k -= 1


def aio_bandwidth(directory: str, io_size: str) -> tuple[float, float, str]:
    """(read GB/s, write GB/s, the command) from zero-aio's own ``zero-aio-bench``."""
    exe = os.path.join(os.path.dirname(sys.executable), "zero-aio-bench")
    if not os.path.exists(exe):
        exe = shutil.which("zero-aio-bench") or exe
    cmd = [
        exe,
        "--dir",
        directory,
        "--io_size",
        io_size,
        "--loops",
        "3",
        "--json",
        "--block_size",
        str(AIO["block_size"]),
        "--queue_depth",
        str(AIO["queue_depth"]),
    ]
    cmd += ["--overlap_events"] if AIO["overlap_events"] else []
    cmd += ["--single_submit"] if AIO["single_submit"] else []
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"zero-aio-bench failed ({shlex.join(cmd)}): {proc.stderr[-500:]}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    if not got["page_cache_bypassed"]:
        print(
            f"warning: {directory} refuses O_DIRECT: disk numbers are page-cache numbers",
            file=sys.stderr,
        )
    return got["read_gbps"], got["write_gbps"], shlex.join(cmd)


def mib(n: float) -> str:
    return f"{n / MIB:.0f}"


def check_disk(nvme_dir: str, plan: dict[str, int | None], free_share: float) -> int:
    """Bytes the NVMe runs will put on disk (two slot files per record, see zero_core's
    [Note: a swapped step commits on every rank or on none]); refuses a plan that would take
    more than ``free_share`` of the free space (the disk is shared)."""
    need = 0
    for cfg in CONFIGS:
        k = plan.get(cfg.key)
        if k is not None:
            need = max(need, 2 * predicted(k, cfg).nvme_per_node)
    free = shutil.disk_usage(nvme_dir).free
    if need > free_share * free:
        raise SystemExit(
            f"the NVMe runs need ~{need / 2**30:.1f} GiB under {nvme_dir} but only "
            f"{free / 2**30:.1f} GiB are free (this bench uses at most {free_share:.0%} of it): "
            f"lower --cap-mib or point --nvme-dir at a disk with more room"
        )
    return need


def print_ladder(plan: dict[str, int | None], cap: int, param_offload: bool) -> None:
    top = max((k for k in plan.values() if k is not None), default=1)
    print(
        "| k | d_model x blocks | params M | largest layer M | "
        + " | ".join(f"{c.label} MiB" for c in CONFIGS)
        + " |"
    )
    print("|---:|---|---:|---:|" + "---:|" * len(CONFIGS))
    for k in range(max(1, min(v for v in plan.values() if v) - 2), top + 2):
        cells = []
        for c in CONFIGS:
            if c.param != "none" and not param_offload:
                c = Offload(c.key, c.label, c.optimizer, "none")
            dev = predicted(k, c).device
            text = mib(dev) + ("" if dev <= cap else " (over)")
            cells.append(f"**{text}**" if plan.get(c.key) == k else text)
        params = count_params(size_name(k))
        print(
            f"| {k} | {HEAD_DIM * k} x {k} | {params / 1e6:.1f} | "
            f"{largest_layer(k) / 1e6:.2f} | " + " | ".join(cells) + " |"
        )
    print()


def print_results(results: list[Result], cap: int, bw: tuple[float, float, str]) -> None:
    print(
        "| config | k | params M | device MiB predicted | device MiB measured (peak at) "
        "| under cap | peak RSS train MiB (all) | step s | fwd+bwd s | optimizer step s "
        "| disk GB/step read/write (measured) | Adam s | bound s (in step) | step / bound "
        "| opt / its bound |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    read_bw, write_bw, _ = bw
    for r in results:
        cfg = r.cfg
        if cfg.param != "none" and not r.param_offload:
            cfg = Offload(cfg.key, cfg.label, cfg.optimizer, "none")
        est = predicted(r.k, cfg).device
        peak = r.peak
        rss_train = max(x["train_peak_kib"] or 0 for x in r.ranks) / 1024
        rss_all = max(x["all_peak_kib"] for x in r.ranks) / 1024
        io = (sum(x["io_read"] for x in r.ranks) / 1e9, sum(x["io_write"] for x in r.ranks) / 1e9)
        step, opt = r.slowest("step"), r.slowest("opt")
        label = (
            r.cfg.label
            if r.param_offload or r.cfg.param == "none"
            else ("(c) optimizer -> NVMe (params on device: offload_param refused)")
        )
        cells = [
            label + (f" [{r.note}]" if r.note else ""),
            str(r.k),
            f"{count_params(size_name(r.k)) / 1e6:.1f}",
            mib(est),
            f"{mib(peak['total'])} ({peak.get('where', '?')})",
            "yes" if peak["total"] <= cap else "**no**",
            f"{rss_train:.0f} ({rss_all:.0f})",
            f"{step:.2f}",
            f"{r.slowest('fwd_bwd'):.2f}",
            f"{opt:.2f}",
            f"{io[0]:.2f} / {io[1]:.2f}",
        ]
        if r.cfg.optimizer == "none":
            cells += ["", "", "", ""]
        else:
            adam = max(x["adam_s"] for x in r.ranks)
            bound, in_step = r.bound(read_bw, write_bw)
            cells += [
                f"{adam:.2f}",
                f"{bound:.2f} ({in_step:.2f})",
                f"{step / bound:.1f}",
                f"{opt / in_step:.1f}",
            ]
        print("| " + " | ".join(cells) + " |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap-mib", type=int, default=384, help="device-memory cap per rank")
    parser.add_argument("--nvme-dir", default=None, help="where swap files go (default: $TMPDIR)")
    parser.add_argument("--only", default="a,b,c", help="configurations to run (a,b,c)")
    parser.add_argument("--max-k", type=int, default=17, help="largest family size considered")
    parser.add_argument("--aio-size", default="256M", help="zero-aio-bench file size")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the compute reference ((b) at (c)'s size, over the cap)",
    )
    parser.add_argument("--verbose", action="store_true", help="print failing workers' stderr")
    # worker mode (internal)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-param-offload", dest="param_offload", action="store_false", help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    wanted = [c for c in CONFIGS if c.key in {s.strip() for s in args.only.split(",")}]
    if not wanted or args.cap_mib < 1 or args.max_k < 1:
        parser.error("--only must name some of a, b, c; --cap-mib and --max-k must be positive")
    base = args.nvme_dir or tempfile.gettempdir()
    if not os.path.isdir(base):
        parser.error(f"--nvme-dir {base!r} is not a directory; create it first")
    cap = args.cap_mib * MIB

    import torch

    param_offload, refused = param_offload_supported()
    plan: dict[str, int | None] = {}
    for cfg in wanted:
        c = cfg if param_offload else Offload(cfg.key, cfg.label, cfg.optimizer, "none")
        plan[cfg.key] = largest_fitting(c, cap, args.max_k)
    need = check_disk(base, plan, 0.25)
    start = time.perf_counter()
    work = tempfile.mkdtemp(prefix="zs-offload-bench-", dir=base)
    args.nvme_dir = work
    results: list[Result] = []
    reference: Result | None = None
    try:
        bw = aio_bandwidth(work, args.aio_size)
        with tempfile.TemporaryDirectory(prefix="zs-offload-out-") as tmp:
            for cfg in wanted:
                if plan[cfg.key]:
                    results.append(run_largest(cfg, plan[cfg.key], cap, args, tmp, param_offload))
            big = next((r for r in results if r.cfg.optimizer == "nvme"), None)
            if big is not None and args.reference:
                reference = run_once(CONFIGS[1], big.k, args, tmp, param_offload)
                reference.note = "reference: (c)'s size, over the cap"
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("# Offload: the largest GPT under a device-memory cap (ZeRO-3, fp32, 2 CPU ranks)")
    print()
    print(f"- command: `{shlex.join([sys.executable, *sys.argv])}`")
    print(f"- torch {torch.__version__}; zero_core: {zero_core_origin()}")
    print(
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical CPUs); 1 torch thread per rank; "
        f"load average (1/5/15 min) at the end: {load_average()} (a shared VM: noisy)"
    )
    dev = os.stat(work if os.path.exists(work) else base).st_dev
    print(
        f"- NVMe directory: {work} (device {os.major(dev)}:{os.minor(dev)}; "
        f"{shutil.disk_usage(base).free / 2**30:.0f} GiB free, this run used up to "
        f"~{need / 2**30:.1f} GiB)"
    )
    print(
        f"- cap: {args.cap_mib} MiB of device bytes per rank (model state zero_core keeps on "
        "the device: weight shards and gathered layers, full and partitioned gradients, "
        "masters and Adam state unless offloaded; see the script's docstring)"
    )
    print(
        f"- family: d_model 64k, k blocks, k heads, vocab {VOCAB}, seq {SEQ}, micro-batch "
        f"{MICRO}, untied head; {STEPS} steps, time = slower rank, median of steps 2-3"
    )
    if not param_offload:
        print(
            f"- offload_param: refused by this zero_core ({refused}); (c) runs with the "
            "optimizer on NVMe and the parameters on the device"
        )
    print(f"- disk: zero-aio-bench read {bw[0]:.2f} GB/s, write {bw[1]:.2f} GB/s (`{bw[2]}`)")
    z = ds_config(CONFIGS[2], plan.get("c") or 1, "<nvme-dir>")["zero_optimization"]
    print(
        f"- zero_optimization for (c) (reduce_bucket_size = the largest layer): `{json.dumps(z)}`"
    )
    print(f"- wall time: {time.perf_counter() - start:.0f} s")
    print()
    print("Predicted device bytes per rank (zero_core.estimate), bold = the size run:")
    print()
    print_ladder(plan, cap, param_offload)
    print_results(results + ([reference] if reference else []), cap, bw)
    by_key = {r.cfg.key: r for r in results}
    if "a" in by_key and "c" in by_key:
        pa = count_params(size_name(by_key["a"].k))
        pc = count_params(size_name(by_key["c"].k))
        print(f"- (c) / (a) parameters under the same cap: **{pc / pa:.2f}x** (target >= 5x)")
    big = next((r for r in results if r.cfg.optimizer == "nvme"), None)
    if big is not None and reference is not None:
        overhead = big.slowest("step") - reference.slowest("fwd_bwd")
        bound = big.bound(bw[0], bw[1])[0]
        print(
            f"- {big.cfg.label}: step minus the reference's forward+backward at the same size "
            f"(the compute the bound leaves out) = {overhead:.2f} s against the bound's "
            f"{bound:.2f} s: **{overhead / bound:.1f}x** (target <= 2x)"
        )
    if big is not None and reference is not None:
        same = [s["loss"] for s in big.ranks[0]["steps"]] == [
            s["loss"] for s in reference.ranks[0]["steps"]
        ]
        print(
            f"- (c) and the reference train the same model from the same seed: their rank-0 "
            f"losses are {'equal at every step' if same else '**not equal**'}"
        )
    for r in results:
        if r.cfg.optimizer != "none":
            adam = max(x["adam_s"] for x in r.ranks) / max(x["shard_numel"] for x in r.ranks)
            print(
                f"- {r.cfg.label}: CPUAdam {adam * 1e9:.2f} ns per element per rank "
                f"({max(x['shard_numel'] for x in r.ranks) / 1e6:.1f}M elements each), "
                f"inner optimizer {r.ranks[0]['inner']}"
            )
    checks = [(r.cfg.key, *x["check"]) for r in results for x in r.ranks if x["check"]]
    if checks:
        same = all(mine == theirs for _, mine, theirs in checks)
        print(
            "- between steps, this account "
            + ("equals" if same else "**differs from**")
            + " zero_core._offload.device_bytes on every rank of every run"
            + ("" if same else f": {checks}")
        )
    losses = {r.cfg.key: [s["loss"] for s in r.ranks[0]["steps"]] for r in results}
    print(f"- rank-0 losses per step: {json.dumps(losses)}")


if __name__ == "__main__":
    main()

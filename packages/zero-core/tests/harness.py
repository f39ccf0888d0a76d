"""Run a function on 2 gloo ranks in fresh processes and bring its results back.

Each rank runs ``fn(rank, *args)`` in a spawned process after joining a gloo group through a
file store; the return value travels back through ``torch.save``. An exception on any rank
fails the test with that rank's traceback; a rank that neither finishes nor fails within
the timeout is killed and reported.
"""

from __future__ import annotations

import datetime
import os
import tempfile
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _child(
    rank: int,
    world: int,
    store: str,
    outdir: str,
    fn: Callable[..., Any],
    args: tuple,
    pg_timeout: float,
) -> None:
    os.environ.update(
        {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
         "LOCAL_WORLD_SIZE": str(world)}
    )  # fmt: skip
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{store}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=pg_timeout),
        )
        result = fn(rank, *args)
        torch.save({"ok": result}, os.path.join(outdir, f"{rank}.pt"))
    except BaseException:
        torch.save({"error": traceback.format_exc()}, os.path.join(outdir, f"{rank}.pt"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(
    fn: Callable[..., Any],
    *args: Any,
    world: int = WORLD,
    timeout: float = 240,
    pg_timeout: float = 60,
) -> list:
    """``[fn(0, *args), fn(1, *args), ...]`` computed on ``world`` gloo ranks
    (``pg_timeout``: the process group's collective timeout, in seconds)."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        procs = [
            ctx.Process(target=_child, args=(r, world, store, tmp, fn, args, pg_timeout))
            for r in range(world)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout)
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
        results = []
        errors = []
        for r in range(world):
            path = os.path.join(tmp, f"{r}.pt")
            if not os.path.exists(path):
                errors.append(f"rank {r}: no result ({'hung' if r in hung else 'crashed'})")
                continue
            out = torch.load(path, weights_only=False)
            if "error" in out:
                errors.append(f"rank {r}:\n{out['error']}")
            else:
                results.append(out["ok"])
        if errors:
            raise AssertionError("\n".join(errors))
        return results

"""Run a function on 2 gloo ranks in spawned processes and return every rank's result.

``run_ranks(fn, *args)`` starts one process per rank, joins them in a gloo group through a
file store, calls ``fn(rank, *args)`` and brings the return values back through
``torch.save``. A rank that raises fails the call with its traceback; one that neither
finishes nor fails in time is killed and reported.
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

__all__ = ["run_ranks"]


def _rank_main(
    rank: int, world: int, store: str, outdir: str, fn: Callable[..., Any], args: tuple
) -> None:
    torch.set_num_threads(1)
    result: dict[str, Any]
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{store}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=60),
        )
        result = {"ok": fn(rank, *args)}
    except BaseException:
        result = {"error": traceback.format_exc()}
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    torch.save(result, os.path.join(outdir, f"{rank}.pt"))


def run_ranks(fn: Callable[..., Any], *args: Any, world: int = 2, timeout: float = 120) -> list:
    """``[fn(0, *args), fn(1, *args), ...]``, each computed on its own gloo rank."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        procs = [
            ctx.Process(target=_rank_main, args=(r, world, store, tmp, fn, args))
            for r in range(world)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout)
        errors, results = [], []
        for r, p in enumerate(procs):
            if p.is_alive():
                p.kill()
                p.join()
            path = os.path.join(tmp, f"{r}.pt")
            if not os.path.exists(path):
                errors.append(f"rank {r}: no result (exit code {p.exitcode})")
                continue
            out = torch.load(path, weights_only=False)
            if "error" in out:
                errors.append(f"rank {r}:\n{out['error']}")
            else:
                results.append(out["ok"])
        if errors:
            raise AssertionError("\n".join(errors))
        return results

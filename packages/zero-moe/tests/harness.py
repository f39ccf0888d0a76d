"""Run a function on 2 gloo ranks in spawned processes and return each rank's result.

``run_ranks(fn, *args)`` starts ``world`` processes that join a gloo group through a file
store, call ``fn(rank, *args)`` and send the result back through ``torch.save``. A failure
on any rank fails the caller with that rank's traceback; a rank still running after the
timeout is killed and reported as hung.
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


def _rank_main(rank: int, world: int, tmp: str, fn: Callable[..., Any], args: tuple) -> None:
    torch.set_num_threads(1)
    out = os.path.join(tmp, f"rank{rank}.pt")
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{os.path.join(tmp, 'store')}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=60),
        )
        torch.save({"result": fn(rank, *args)}, out)
    except BaseException:
        torch.save({"error": traceback.format_exc()}, out)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], *args: Any, world: int = 2, timeout: float = 180) -> list:
    """``[fn(0, *args), ..., fn(world - 1, *args)]``, each computed on its own gloo rank."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        procs = [
            ctx.Process(target=_rank_main, args=(r, world, tmp, fn, args)) for r in range(world)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout)
        problems, results = [], []
        for r, p in enumerate(procs):
            if p.is_alive():
                p.kill()
                problems.append(f"rank {r}: hung")
                continue
            path = os.path.join(tmp, f"rank{r}.pt")
            if not os.path.exists(path):
                problems.append(f"rank {r}: crashed (exit code {p.exitcode})")
                continue
            got = torch.load(path, weights_only=False)
            if "error" in got:
                problems.append(f"rank {r}:\n{got['error']}")
            else:
                results.append(got["result"])
        if problems:
            raise AssertionError("\n".join(problems))
        return results

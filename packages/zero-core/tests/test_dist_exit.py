"""The exit hook of [Note: gloo workers finish before the interpreter does] in _dist.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

RECORD = """
import sys, time
import torch.distributed as dist
import zero_core._dist as zd

hooks = []
zd.atexit.register = lambda fn, *args: hooks.append((fn, args))
if sys.argv[1] == "user-made":
    dist.init_process_group("gloo")
assert zd.init_distributed() and zd.init_distributed()
print(hooks == [(time.sleep, (zd.EXIT_DRAIN_SECONDS,))], zd.EXIT_DRAIN_SECONDS)
dist.destroy_process_group()
"""

#: a run that ends right after a collective whose output Python has already dropped
TWO_RANKS = """
import torch, torch.distributed as dist
import zero_core

zero_core.init_distributed()
out = torch.empty(4)
dist.all_gather_into_tensor(out, torch.full((2,), float(dist.get_rank())))
print("gathered:", out.tolist(), flush=True)
del out
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, world: int, port: int) -> dict[str, str]:
    return dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip


def _python(code: str, *args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_the_exit_hook_is_registered_once_for_a_gloo_group():
    for made_by in ("zero-core", "user-made"):
        proc = _python(RECORD, made_by, env=_env(0, 1, _free_port()))
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        assert out.split() == ["True", "0.1"], (made_by, out)


def test_two_ranks_exit_cleanly_right_after_a_collective():
    port = _free_port()
    procs = [_python(TWO_RANKS, env=_env(rank, 2, port)) for rank in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        assert "gathered: [0.0, 0.0, 1.0, 1.0]" in out

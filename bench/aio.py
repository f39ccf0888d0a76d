"""Sequential write and read GB/s: zero_aio's backends against fio, DeepSpeed, Python and torch.

What it measures
    The time to write a buffer of ``--sizes`` bytes (1 GiB and 256 MiB by default; K/M/G
    are binary) to a file in ``--dir`` and to read it back, for

    * a ``zero_aio.aio_handle`` on each usable backend (libaio, io_uring, threads; see
      ``zero_aio.backends()``), with ``--block-size``, ``--queue-depth`` and
      ``--intra-op-parallelism`` (and ``--single-submit`` / ``--overlap-events``);
    * a control row, not counted as zero-aio's: zero-aio's first backend run inside
      DeepSpeed's process on DeepSpeed's own buffers (zero-aio imported there from this
      interpreter's path, appended last), so only the engines differ from DeepSpeed's row;
    * fio (``ioengine=libaio``, ``direct=1``, the same block size and iodepth, one job per
      intra-op thread, each on its own contiguous slice of the file) when fio is installed;
    * DeepSpeed's ``aio_handle`` (its ``async_io`` op, JIT-built on first use) with the same
      five settings, when ``import deepspeed`` works here or in the interpreter given by
      ``--deepspeed-python`` / ``$ZEROSPEED_DS_PYTHON`` (then it runs in a subprocess that
      times its own calls, so no IPC is timed); otherwise its row says why it was skipped;
    * plain Python: an unbuffered ``FileIO.write`` / ``readinto`` of the whole buffer;
    * ``torch.save`` / ``torch.load`` of a uint8 tensor (``weights_only=True``; the load
      allocates its result, as real use does);
    * ``zero_aio.save`` / ``zero_aio.load`` of the same tensor, when zero_aio has them.

Why
    zero-aio is the storage layer of NVMe offload and checkpointing: it is worth having only
    if it moves bytes at least as fast as the tools people would otherwise use. Issue 4's
    target: zero-aio's best backend reaches at least the best of fio and DeepSpeed's handle
    (same settings, same run) on both read and write, and beats the Python and torch
    baselines.

Method
    * Buffers: each library's own locked memory, as its users get it. One source and one
      destination buffer of the largest size from zero-aio's ``new_cpu_locked_tensor``
      (page-aligned, mlock-ed, from 2 MiB on backed by transparent huge pages), the source
      filled with random bytes (seed 0); every in-process method uses them (smaller sizes
      use their first bytes). DeepSpeed's subprocess allocates its own with its handle's
      ``new_cpu_locked_tensor`` (4 KiB pages) and the same seed, so it never copies through
      a bounce buffer. Those buffers differ in more than page size: where a buffer's 4 KiB
      pages happen to lie in physical memory moved the same engine up to 1.6x apart from
      one buffer to the next here, hence the control row.
    * Files: one per size under ``--dir``, shared by every method that overwrites a file in
      place, so all of them write and read the same disk blocks (a file of its own per
      method measured up to 1.5x apart from another's with the same engine); methods that
      replace the file (``torch.save``, ``zero_aio.save``) get one each. All are deleted at
      the end. With ``--write-to existing`` (default) each file is written once, untimed,
      before the rounds, and every timed write overwrites it in place: no block allocation,
      no size change (a reused swap file or checkpoint slot; what fio does with an existing
      file). ``torch.save`` still truncates (it opens the path for writing, as users call
      it). With ``--write-to new`` the file is unlinked (untimed) before every timed write,
      so the write allocates blocks and grows the file (fio gets ``fallocate=none``: it then
      issues the same size-extending writes). On ext4 the two differ a lot for O_DIRECT
      writes.
    * Durability: every timed write includes an ``fsync`` of the file (a separate
      descriptor when the method has none of its own), so the time is to durable data for
      every row. fio's time is its own reported runtime (fio process start-up and file
      layout excluded) plus an fsync timed here after fio exits.
    * Page cache: before every timed read, the file's cached pages are dropped
      (``--drop-caches fadvise``: ``posix_fadvise(POSIX_FADV_DONTNEED)`` on the whole file,
      after the fsync that made them clean; ``global``: ``sync`` and ``echo 3 >
      /proc/sys/vm/drop_caches``, root only, which also evicts other users' caches). Rows
      marked O_DIRECT never put the bulk of their data in the page cache; the "cached after
      w/r" column checks that from outside with ``mincore``: the largest share of the file's
      pages found in the page cache right after a timed write / read, over all rounds.
    * Timing: every method is timed the same way, from the call that starts the transfer
      to its return, in the process doing the I/O (DeepSpeed times itself in its
      subprocess, so no pipe traffic is counted); nothing else happens in between (the
      destination is cleared and compared only in the warm-up round, for every method).
    * Rounds: one untimed warm-up round that also checks every read returned exactly the
      bytes written (the "check" column), then ``--rounds`` timed rounds. Each round visits
      every method once, in a freshly shuffled (seeded) order, so a noisy neighbour slows
      them alike and no method always runs right after the same other one (a buffered
      write's writeback, for one, slows whatever follows it); a visit writes, drops the
      cache, then reads. Reported: the median GB/s (1e9 bytes/s) over the rounds, with min
      and max. The device here is shared: expect spreads of 2x; use more rounds to narrow
      the medians.

Columns
    "page cache" says whether the method bypassed it. The last row of each size divides the
    median GB/s of zero-aio's best backend by that of the best alternative (fio, DeepSpeed)
    and by that of the best baseline (Python, torch): at or above 1.00 the target is met.

Run
    python bench/aio.py [--sizes 1G,256M] [--rounds 5] [--dir DIR] [--block-size 1M]
        [--queue-depth 32] [--intra-op-parallelism 1] [--write-to existing|new]
        [--drop-caches fadvise|global] [--deepspeed-python PATH] [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from _machine import (  # bench/ is on sys.path when a script runs
    cpu_model,
    load_average,
    stdout_to_stderr,
)

SEED = 0
ZERO = "zero-aio"

# -- small helpers ------------------------------------------------------------------------


def parse_size(text: str) -> int:
    text = text.strip().upper()
    if text.endswith("IB"):
        text = text[:-2]
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in "KMG" else text
    value = int(float(digits) * scale)
    if value <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return value


def size_name(n: int) -> str:
    for suffix, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n % scale == 0:
            return f"{n // scale} {suffix}"
    return f"{n} B"


def fsync_path(path: str) -> None:
    """fsync the file (Linux flushes the inode's dirty pages whichever descriptor asks)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_file_cache(path: str, how: str) -> None:
    """Evict ``path``'s pages from the page cache (they are clean: every write fsyncs)."""
    if how == "global":
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as f:
            f.write("3\n")
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cached_fraction(path: str) -> float | None:
    """Share of ``path``'s pages resident in the page cache (mincore over a mapping)."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return 0.0
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        addr = _libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            pages = (size + _PAGE - 1) // _PAGE
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec) != 0:
                return None
            return (pages - bytes(vec).count(0)) / pages
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def write_whole(fd: int, view: memoryview) -> None:
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])


def read_whole(f: Any, view: memoryview) -> None:
    done = 0
    while done < len(view):
        got = f.readinto(view[done:])
        if not got:
            raise OSError(f"file ended after {done} of {len(view)} bytes")
        done += got


def as_view(t: torch.Tensor, n: int) -> memoryview:
    return memoryview(t[:n].numpy())


def fill_random(t: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(SEED)
    t.copy_(torch.randint(0, 256, t.shape, dtype=torch.uint8, generator=gen))


# -- methods -----------------------------------------------------------------------------


@dataclass(eq=False)
class Method:
    """One row: ``write(path, n)`` / ``read(path, n)`` return seconds (write incl. fsync)."""

    label: str
    kind: str  # "zero" (ours), "alt" (fio, DeepSpeed), "base" (Python, torch), "control"
    cache: str  # how the page cache is treated, for the table
    write: Callable[[str, int], float] | None = None
    read: Callable[[str, int], float] | None = None
    check: Callable[[int], bool] | None = None  # after a read: did it return the source?
    truncates: bool = False  # the write replaces the file (so it gets a file of its own)
    note: str = ""  # why the row is n/a
    close: Callable[[], None] = lambda: None
    # told before each read whether it is the warm-up's (checked) one or a timed one
    set_checking: Callable[[bool], None] = lambda checking: None
    times: dict[tuple[int, str], list[float]] = field(default_factory=dict)
    cached: dict[tuple[int, str], float] = field(default_factory=dict)
    checked: dict[int, str] = field(default_factory=dict)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Buffers:
    """The source (random bytes) and destination buffers every in-process method shares."""

    def __init__(self, nbytes: int) -> None:
        import zero_aio

        self._owner = zero_aio.aio_handle(backend="threads")
        example = torch.empty(0, dtype=torch.uint8)
        self.src = self._owner.new_cpu_locked_tensor(nbytes, example)
        self.dst = self._owner.new_cpu_locked_tensor(nbytes, example)
        fill_random(self.src)
        self._contiguous: dict[int, torch.Tensor] = {}

    def src_tensor(self, n: int) -> torch.Tensor:
        """A tensor owning exactly ``n`` source bytes (torch.save saves a view's storage)."""
        if n == self.src.numel():
            return self.src
        if n not in self._contiguous:
            self._contiguous[n] = self.src[:n].clone()
        return self._contiguous[n]

    def dst_matches(self, n: int) -> bool:
        return torch.equal(self.dst[:n], self.src[:n])

    def clear_dst(self, n: int) -> None:
        self.dst[:n].zero_()


def zero_aio_method(backend: str, bufs: Buffers, args: argparse.Namespace) -> Method:
    import zero_aio

    h = zero_aio.aio_handle(
        block_size=args.block_size,
        queue_depth=args.queue_depth,
        single_submit=args.single_submit,
        overlap_events=args.overlap_events,
        intra_op_parallelism=args.intra_op_parallelism,
        backend=backend,
    )

    def write(path: str, n: int) -> float:
        return timed(lambda: (h.sync_pwrite(bufs.src[:n], path), fsync_path(path)))

    def read(path: str, n: int) -> float:
        return timed(lambda: h.sync_pread(bufs.dst[:n], path))

    return Method(
        f"{ZERO} aio_handle ({backend})",
        "zero",
        "bypassed: O_DIRECT",
        write,
        read,
        bufs.dst_matches,
    )


def zero_aio_save_method(bufs: Buffers) -> Method:
    import zero_aio

    label = f"{ZERO} save/load"
    if not (hasattr(zero_aio, "save") and hasattr(zero_aio, "load")):
        return Method(label, "zero", "-", note="zero_aio has no save/load in this build")
    loaded: dict[int, torch.Tensor] = {}

    def write(path: str, n: int) -> float:
        t = bufs.src_tensor(n)
        return timed(lambda: (zero_aio.save({"t": t}, path), fsync_path(path)))

    def read(path: str, n: int) -> float:
        def go() -> None:
            loaded[n] = zero_aio.load(path)["t"]

        loaded.pop(n, None)
        return timed(go)

    def check(n: int) -> bool:
        t = loaded.pop(n)
        return t.dtype == torch.uint8 and torch.equal(t.reshape(-1), bufs.src[:n])

    return Method(label, "zero", "as zero_aio.save/load do it", write, read, check, truncates=True)


def fio_method(args: argparse.Namespace) -> Method:
    label = "fio (libaio, direct=1)"
    exe = shutil.which("fio")
    if exe is None:
        return Method(label, "alt", "-", note="fio not installed (apt install fio)")
    jobs = args.intra_op_parallelism

    def run(path: str, n: int, rw: str) -> float:
        per_job = n // jobs
        cmd = [
            exe,
            "--name=bench",
            f"--filename={path}",
            f"--rw={rw}",
            f"--bs={args.block_size}",
            f"--iodepth={args.queue_depth}",
            "--ioengine=libaio",
            "--direct=1",
            f"--size={per_job}",
            f"--numjobs={jobs}",
            f"--offset_increment={per_job}",
            "--group_reporting",
            "--output-format=json",
        ]
        if args.write_to == "new":
            cmd.append("--fallocate=none")  # size-extending writes, as the other rows do
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        job = json.loads(out[out.index("{") :])["jobs"][0][rw]
        if job["io_bytes"] != per_job * jobs:
            raise RuntimeError(f"fio moved {job['io_bytes']} bytes, expected {per_job * jobs}")
        seconds = job["runtime"] / 1e3 * n / (per_job * jobs)
        if rw == "write":
            seconds += timed(lambda: fsync_path(path))
        return seconds

    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    return Method(
        f"{label} {version.strip()}",
        "alt",
        "bypassed: O_DIRECT",
        lambda path, n: run(path, n, "write"),
        lambda path, n: run(path, n, "read"),
        None,
    )


def python_method(bufs: Buffers, args: argparse.Namespace, drop: str) -> Method:
    def write(path: str, n: int) -> float:
        def go() -> None:
            flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if args.write_to == "new" else 0)
            fd = os.open(path, flags, 0o644)
            try:
                write_whole(fd, as_view(bufs.src, n))
                os.fsync(fd)
            finally:
                os.close(fd)

        return timed(go)

    def read(path: str, n: int) -> float:
        def go() -> None:
            with open(path, "rb", buffering=0) as f:
                read_whole(f, as_view(bufs.dst, n))

        return timed(go)

    return Method(
        "Python FileIO write/readinto (unbuffered FileIO, whole buffer)",
        "base",
        f"buffered; dropped before reads ({drop})",
        write,
        read,
        bufs.dst_matches,
    )


def torch_method(bufs: Buffers, drop: str) -> Method:
    loaded: dict[int, torch.Tensor] = {}

    def write(path: str, n: int) -> float:
        t = bufs.src_tensor(n)
        return timed(lambda: (torch.save(t, path), fsync_path(path)))

    def read(path: str, n: int) -> float:
        def go() -> None:
            loaded[n] = torch.load(path, weights_only=True)

        loaded.pop(n, None)
        return timed(go)

    def check(n: int) -> bool:
        return torch.equal(loaded.pop(n), bufs.src[:n])

    return Method(
        f"torch.save/torch.load (torch {torch.__version__})",
        "base",
        f"buffered; dropped before reads ({drop})",
        write,
        read,
        check,
        truncates=True,
    )


# -- DeepSpeed (in-process, or a worker subprocess under another interpreter) --------------


class DeepSpeedWorker:
    """DeepSpeed's aio_handle over locked buffers of ``nbytes`` and, for the control row, a
    zero-aio handle over the very same buffers; each call times itself."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        import deepspeed
        from deepspeed.ops.op_builder import AsyncIOBuilder

        with stdout_to_stderr():  # the JIT build and DeepSpeed's logging print to stdout
            builder = AsyncIOBuilder()
            if not builder.is_compatible(verbose=False):
                raise RuntimeError("DeepSpeed's async_io op is not compatible here (libaio-dev?)")
            aio = builder.load(verbose=False)
        settings = [cfg[k] for k in HANDLE_SETTINGS]
        self.handle = aio.aio_handle(*settings)
        example = torch.empty(0, dtype=torch.uint8)
        self.src = self.handle.new_cpu_locked_tensor(cfg["nbytes"], example)
        self.dst = self.handle.new_cpu_locked_tensor(cfg["nbytes"], example)
        fill_random(self.src)
        self.version = deepspeed.__version__
        self.zero: Any = None
        self.zero_note = ""
        try:
            if cfg["zero_aio_path"] not in sys.path:  # last: this interpreter's torch wins
                sys.path.append(cfg["zero_aio_path"])
            import zero_aio

            self.zero = zero_aio.aio_handle(*settings, backend=cfg["zero_aio_backend"])
        except Exception as e:  # the control row says why it is missing
            self.zero_note = one_line(e)

    def _engine(self, engine: str) -> tuple[Callable[[int, str], None], Callable[[int, str], None]]:
        if engine == ZERO:
            if self.zero is None:
                raise RuntimeError(f"zero_aio does not work in this interpreter: {self.zero_note}")
            return (
                lambda n, path: self.zero.sync_pwrite(self.src[:n], path),
                lambda n, path: self.zero.sync_pread(self.dst[:n], path),
            )

        def write(n: int, path: str) -> None:
            if self.handle.sync_pwrite(self.src[:n], path) < 0:
                raise OSError(f"DeepSpeed sync_pwrite of {path} failed")

        def read(n: int, path: str) -> None:
            if self.handle.sync_pread(self.dst[:n], path) < 0:
                raise OSError(f"DeepSpeed sync_pread of {path} failed")

        return write, read

    def call(self, engine: str, op: str, path: str, n: int, check: bool) -> dict[str, Any]:
        """Time one write (+ fsync) or read by ``engine`` ("deepspeed" or zero-aio's);
        ``check`` (warm-up only) clears the destination before a read and compares it after,
        untimed, as the in-process rows do."""
        write, read = self._engine(engine)
        if op == "write":
            return {"seconds": timed(lambda: (write(n, path), fsync_path(path)))}
        if op != "read":
            raise ValueError(f"unknown op {op!r}")
        if check:
            self.dst[:n].zero_()
        seconds = timed(lambda: read(n, path))
        if not check:
            return {"seconds": seconds}
        return {"seconds": seconds, "ok": torch.equal(self.dst[:n], self.src[:n])}


HANDLE_SETTINGS = (
    "block_size",
    "queue_depth",
    "single_submit",
    "overlap_events",
    "intra_op_parallelism",
)


def deepspeed_worker_main() -> None:
    """``--deepspeed-worker``: a config line, then one JSON request per line on stdin."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to stderr, never into the replies
    try:
        worker = DeepSpeedWorker(json.loads(sys.stdin.readline()))
    except Exception as e:  # the parent prints the reason in the row
        reply.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
        return
    reply.write(json.dumps({"ready": worker.version, "zero_note": worker.zero_note}) + "\n")
    for line in sys.stdin:
        req = json.loads(line)
        try:
            answer = worker.call(req["engine"], req["op"], req["path"], req["n"], req["check"])
            reply.write(json.dumps(answer) + "\n")
        except Exception as e:
            reply.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")


def one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:300]


class DeepSpeedLink:
    """Requests to a DeepSpeedWorker, in this process or in a subprocess under the
    interpreter that has deepspeed (``--deepspeed-python``)."""

    def __init__(self, cfg: dict[str, Any], ds_python: str | None) -> None:
        self.worker: DeepSpeedWorker | None = None
        self.proc: subprocess.Popen[str] | None = None
        if not ds_python:
            self.worker = DeepSpeedWorker(cfg)
            self.version, self.zero_note = self.worker.version, self.worker.zero_note
            self.where = "in-process"
            return
        self.proc = subprocess.Popen(
            [ds_python, os.path.abspath(__file__), "--deepspeed-worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        hello = self._send(cfg)
        self.version, self.zero_note = hello["ready"], hello["zero_note"]
        self.where = f"subprocess: {ds_python}"

    def _send(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline() or '{"error": "the worker exited"}')
        if "error" in answer:
            self.close()
            raise RuntimeError(answer["error"])
        return answer

    def call(self, engine: str, op: str, path: str, n: int, check: bool) -> dict[str, Any]:
        if self.worker is not None:
            return self.worker.call(engine, op, path, n, check)
        request = {"engine": engine, "op": op, "path": path, "n": n, "check": check}
        return self._send(request)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def deepspeed_methods(args: argparse.Namespace, nbytes: int, backend: str) -> list[Method]:
    """DeepSpeed's row and the control row (zero-aio's ``backend`` in the same process, on
    the same buffers, so only the engines differ)."""
    import zero_aio

    label = "DeepSpeed aio_handle"
    control = f"control: {ZERO} aio_handle ({backend}) on DeepSpeed's buffers, in its process"
    cache = "bypassed: O_DIRECT"
    cfg = {k: getattr(args, k) for k in HANDLE_SETTINGS}
    cfg["nbytes"] = nbytes
    cfg["zero_aio_path"] = os.path.dirname(os.path.dirname(os.path.abspath(zero_aio.__file__)))
    cfg["zero_aio_backend"] = backend
    ds_python = args.deepspeed_python or os.environ.get("ZEROSPEED_DS_PYTHON")
    try:
        link = DeepSpeedLink(cfg, ds_python)
    except ImportError as e:
        note = f"skipped: deepspeed does not import here ({one_line(e)}); give --deepspeed-python"
    except Exception as e:
        note = f"skipped: {ds_python or 'in-process'}: {one_line(e)}"
    else:
        note = ""
    if note:
        return [Method(label, "alt", "-", note=note), Method(control, "control", "-", note=note)]

    def method(engine: str, name: str, kind: str) -> Method:
        verdicts: dict[int, bool] = {}
        checking = [True]

        def run(op: str, path: str, n: int) -> float:
            r = link.call(engine, op, path, n, checking[0])
            if "ok" in r:
                verdicts[n] = r["ok"]
            return r["seconds"]

        return Method(
            name,
            kind,
            cache,
            lambda p, n: run("write", p, n),
            lambda p, n: run("read", p, n),
            lambda n: verdicts.pop(n),
            close=link.close,
            set_checking=lambda on: checking.__setitem__(0, on),
        )

    ours = (
        method(ZERO, control, "control")
        if not link.zero_note
        else Method(control, "control", "-", note=f"skipped: {link.zero_note}")
    )
    return [method("deepspeed", f"{label} (deepspeed {link.version}, {link.where})", "alt"), ours]


# -- the run -----------------------------------------------------------------------------


def visit(
    m: Method,
    i: int,
    n: int,
    workdir: str,
    args: argparse.Namespace,
    bufs: Buffers,
    *,
    warmup: bool,
) -> None:
    """One write, cache drop and read of ``m`` at size ``n``; record times unless warm-up."""
    assert m.write is not None and m.read is not None
    path = file_for(m, i, n, workdir)
    if args.write_to == "new" and os.path.exists(path):
        os.unlink(path)
    w = m.write(path, n)
    cw = cached_fraction(path)
    drop_file_cache(path, args.drop_caches)
    if warmup:
        bufs.clear_dst(n)
    m.set_checking(warmup)
    r = m.read(path, n)
    cr = cached_fraction(path)
    if warmup:
        ok = m.check(n) if m.check is not None else None
        m.checked[n] = "n/a" if ok is None else ("ok" if ok else "MISMATCH")
        return
    m.times.setdefault((n, "write"), []).append(w)
    m.times.setdefault((n, "read"), []).append(r)
    for key, frac in (((n, "write"), cw), ((n, "read"), cr)):
        if frac is not None:
            m.cached[key] = max(m.cached.get(key, 0.0), frac)
    drop_file_cache(path, args.drop_caches)  # leave nothing cached for the next method


def file_for(m: Method, i: int, n: int, workdir: str) -> str:
    """The file method ``i`` writes at size ``n``: the size's shared one, unless the method
    replaces files (then its own)."""
    return os.path.join(workdir, f"{i:02d}-{n}.bin" if m.truncates else f"shared-{n}.bin")


def prepare_files(methods: list[Method], sizes: list[int], workdir: str, bufs: Buffers) -> None:
    """``--write-to existing``: write every file once (untimed), fsync it and drop its cache."""
    paths = {
        (file_for(m, i, n, workdir), n)
        for i, m in enumerate(methods)
        if m.write is not None and not m.truncates
        for n in sizes
    }
    for path, n in sorted(paths):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_whole(fd, as_view(bufs.src, n))
            os.fsync(fd)
        finally:
            os.close(fd)
        drop_file_cache(path, "fadvise")


def gbps(m: Method, n: int, op: str) -> list[float]:
    return [n / s / 1e9 for s in m.times.get((n, op), [])]


def median_gbps(m: Method, n: int, op: str) -> float | None:
    v = gbps(m, n, op)
    return statistics.median(v) if v else None


def cell(m: Method, n: int, op: str) -> str:
    v = gbps(m, n, op)
    if not v:
        return "n/a"
    return f"**{statistics.median(v):.2f}** ({min(v):.2f}-{max(v):.2f})"


def cached_cell(m: Method, n: int) -> str:
    parts = []
    for op in ("write", "read"):
        frac = m.cached.get((n, op))
        parts.append("?" if frac is None else f"{frac * 100:.0f}%")
    return " / ".join(parts)


def best(methods: list[Method], n: int, op: str, kind: str) -> tuple[float, str] | None:
    found = [
        (v, m.label.split(" (")[0] + _backend_suffix(m.label))
        for m in methods
        if m.kind == kind
        and "save/load" not in m.label
        and (v := median_gbps(m, n, op)) is not None
    ]
    return max(found) if found else None


def _backend_suffix(label: str) -> str:
    for b in ("libaio", "io_uring", "threads"):
        if label.endswith(f"({b})"):
            return f" ({b})"
    return ""


def ratio_cell(methods: list[Method], n: int, op: str, kind: str) -> tuple[str, bool | None]:
    ours = best(methods, n, op, "zero")
    other = best(methods, n, op, kind)
    if ours is None or other is None:
        return "n/a", None
    r = ours[0] / other[0]
    return f"**{r:.2f}x** ({ours[1]} {ours[0]:.2f} / {other[1]} {other[0]:.2f})", r >= 1.0


def print_table(methods: list[Method], sizes: list[int], args: argparse.Namespace) -> None:
    print(
        "| size | method | page cache | write GB/s, median (min-max) "
        "| read GB/s, median (min-max) | cached after w / r | check |"
    )
    print("|---|---|---|---:|---:|---:|---|")
    verdicts: list[str] = []
    for n in sizes:
        for m in methods:
            if m.write is None:
                print(f"| {size_name(n)} | {m.label} | - | n/a | n/a | - | {m.note} |")
                continue
            print(
                f"| {size_name(n)} | {m.label} | {m.cache} | {cell(m, n, 'write')} "
                f"| {cell(m, n, 'read')} | {cached_cell(m, n)} | {m.checked.get(n, '?')} |"
            )
        for kind, what in (("alt", "fio / DeepSpeed"), ("base", "Python / torch")):
            w, w_ok = ratio_cell(methods, n, "write", kind)
            r, r_ok = ratio_cell(methods, n, "read", kind)
            print(f"| {size_name(n)} | zero-aio best / best of {what} | | {w} | {r} | | |")
            if w_ok is not None and r_ok is not None:
                met = "met" if w_ok and r_ok else "NOT met"
                verdicts.append(f"{size_name(n)} vs best of {what}: {met}")
    print()
    print("- target (zero-aio best >= best of each group, read and write): " + "; ".join(verdicts))


def main() -> None:
    if "--deepspeed-worker" in sys.argv[1:]:
        deepspeed_worker_main()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", "--size", default="1G,256M", help="comma-separated sizes")
    parser.add_argument("--block-size", default="1M", help="bytes per request (default 1M)")
    parser.add_argument("--queue-depth", type=int, default=32)
    parser.add_argument("--intra-op-parallelism", type=int, default=1)
    parser.add_argument("--single-submit", action="store_true")
    parser.add_argument("--overlap-events", action="store_true")
    parser.add_argument("--dir", default=None, help="where to put the files (default: cwd)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--write-to", choices=("existing", "new"), default="existing")
    parser.add_argument("--drop-caches", choices=("fadvise", "global"), default="fadvise")
    parser.add_argument("--deepspeed-python", default=None, help="interpreter with deepspeed")
    parser.add_argument("--backends", default=None, help="zero-aio backends (default: usable)")
    parser.add_argument("--quick", action="store_true", help="256M only, 2 rounds")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    args = parser.parse_args()
    try:
        sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
        args.block_size = parse_size(args.block_size)
    except ValueError as e:
        parser.error(str(e))
    if args.quick:
        sizes, args.rounds = [256 << 20], min(args.rounds, 2)
    if min(args.rounds, args.queue_depth, args.intra_op_parallelism) < 1:
        parser.error("--rounds, --queue-depth and --intra-op-parallelism must be positive")
    if args.drop_caches == "global" and os.geteuid() != 0:
        parser.error("--drop-caches global needs root (writes /proc/sys/vm/drop_caches)")
    if any(n % (4096 * args.intra_op_parallelism) for n in sizes):
        parser.error("sizes must be multiples of 4096 * --intra-op-parallelism")

    import zero_aio

    known = zero_aio.backends()
    wanted = args.backends.split(",") if args.backends else ["libaio", "io_uring", "threads"]
    backends = [b for b in wanted if b in known and known[b].usable]
    drop = {
        "fadvise": "posix_fadvise DONTNEED",
        "global": "echo 3 > /proc/sys/vm/drop_caches",
    }[args.drop_caches]
    base_dir = os.path.abspath(args.dir or os.getcwd())
    workdir = tempfile.mkdtemp(prefix="zero-aio-bench-", dir=base_dir)
    largest = max(sizes)

    bufs = Buffers(largest)
    methods = [zero_aio_method(b, bufs, args) for b in backends]
    methods += [zero_aio_save_method(bufs), fio_method(args)]
    methods += deepspeed_methods(args, largest, backends[0])
    methods += [python_method(bufs, args, drop), torch_method(bufs, drop)]
    runnable = [m for m in methods if m.write is not None]

    dev = os.stat(base_dir).st_dev
    print("# Sequential write and read")
    print()
    print(f"- command: `{shlex.join([sys.executable, *sys.argv])}`")
    print(
        f"- torch {torch.__version__}, zero_aio {zero_aio.__version__}, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}"
    )
    print(f"- CPU: {cpu_model()} ({os.cpu_count()} logical CPUs)")
    print(f"- load average (1/5/15 min) at start: {load_average()} (other work skews timings)")
    print(f"- files in {workdir} (device {os.major(dev)}:{os.minor(dev)})")
    for b, info in known.items():
        print(f"- zero_aio backend {b}: {'usable' if info.usable else 'n/a'} ({info.reason})")
    print(
        f"- settings for zero-aio, fio and DeepSpeed: block size {args.block_size}, queue "
        f"depth {args.queue_depth}, intra-op parallelism {args.intra_op_parallelism} (fio: "
        f"numjobs), single_submit {args.single_submit}, overlap_events {args.overlap_events}"
    )
    print(
        "- buffers: each library's own locked memory (zero-aio's new_cpu_locked_tensor: huge "
        "pages from 2 MiB; DeepSpeed's: posix_memalign + mlock, 4 KiB pages); the control "
        "row: zero-aio in DeepSpeed's process on DeepSpeed's buffers; files: one per size "
        "shared by every in-place writer, one per replacing writer"
    )
    print(
        f"- writes: timed to durability (write + fsync of the file) for every row; "
        f"--write-to {args.write_to} ("
        + (
            "each file pre-written once, timed writes overwrite it in place; torch.save truncates"
            if args.write_to == "existing"
            else "file unlinked before each write: allocating, size-extending writes"
        )
        + ")"
    )
    print(
        f"- reads: the file's page cache dropped before each read ({drop}); O_DIRECT rows "
        "bypass the cache, buffered rows read through it (from disk, since it was dropped)"
    )
    print(
        f"- 1 warm-up round (with a byte-for-byte check of every read), then {args.rounds} "
        "timed rounds, methods interleaved in a shuffled order each round; GB/s = 1e9 bytes/s"
    )
    print()
    sys.stdout.flush()
    try:
        if args.write_to == "existing":
            prepare_files(methods, sizes, workdir, bufs)
        for rnd in range(args.rounds + 1):
            order = list(runnable)
            random.Random(SEED + rnd).shuffle(order)  # no method always follows the same one
            for n in sizes:
                for m in order:
                    visit(m, methods.index(m), n, workdir, args, bufs, warmup=rnd == 0)
            print(f"round {rnd}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        for m in methods:
            m.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(methods, sizes, args)


if __name__ == "__main__":
    main()

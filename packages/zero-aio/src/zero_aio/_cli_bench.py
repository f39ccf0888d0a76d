"""``zero-aio-bench``: read and write one file with one handle configuration, print GB/s."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ._measure import (
    HandleConfig,
    direct_io_supported,
    measure,
    new_buffer,
    parse_size,
    prepare_file,
)
from ._native import available_backends


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zero-aio-bench",
        description="Time sequential reads and writes of one file through a zero-aio "
        "aio_handle (page-locked buffer, O_DIRECT, writes timed up to fsync).",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--dir", help="directory to put the test file in (on the device to test)")
    where.add_argument("--file", help="the test file itself (created or overwritten)")
    p.add_argument("--io_size", type=parse_size, default=parse_size("1G"), help="bytes per op (1G)")
    p.add_argument("--block_size", type=parse_size, default=1048576, help="request size (1M)")
    p.add_argument("--queue_depth", type=int, default=128)
    p.add_argument("--intra_op_parallelism", type=int, default=1, help="threads per op")
    p.add_argument("--single_submit", action="store_true")
    p.add_argument("--overlap_events", action="store_true")
    p.add_argument("--backend", choices=available_backends(), help="default: the first available")
    p.add_argument("--loops", type=int, default=3, help="timed repetitions (median reported)")
    p.add_argument("--no_read", action="store_true")
    p.add_argument("--no_write", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the test file afterwards")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.no_read and args.no_write:
        build_parser().error("--no_read and --no_write leave nothing to measure")
    if args.loops < 1:
        build_parser().error("--loops must be at least 1")
    path = args.file or os.path.join(args.dir, f"zero-aio-bench-{os.getpid()}.bin")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        build_parser().error(f"directory {directory!r} does not exist")
    io_size = -(-args.io_size // 4096) * 4096  # whole pages: every request O_DIRECT
    config = HandleConfig(
        block_size=args.block_size,
        queue_depth=args.queue_depth,
        single_submit=args.single_submit,
        overlap_events=args.overlap_events,
        intra_op_parallelism=args.intra_op_parallelism,
        backend=args.backend,
    )
    handle = config.handle()  # validates the configuration before any file is touched
    direct = direct_io_supported(directory)
    buffer = new_buffer(io_size)
    results = {}
    try:
        prepare_file(path, buffer)
        for op in ("write", "read"):
            if getattr(args, f"no_{op}"):
                continue
            results[op] = measure(config, path, buffer, op, args.loops)
    finally:
        if not args.keep and os.path.exists(path):
            os.unlink(path)
    if args.json:
        out = {
            "path": path,
            "io_size": io_size,
            "backend": handle.backend,
            "page_cache_bypassed": direct,
            **{f"{op}_gbps": m.gbps for op, m in results.items()},
            **{f"{op}_seconds": m.seconds for op, m in results.items()},
            "config": {k: v for k, v in vars(config).items() if k != "backend"},
        }
        print(json.dumps(out))
        return 0
    print(
        f"{path}: {io_size / 2**20:g} MiB, backend {handle.backend}, block_size "
        f"{config.block_size}, queue_depth {config.queue_depth}, intra_op_parallelism "
        f"{config.intra_op_parallelism}, single_submit {config.single_submit}, overlap_events "
        f"{config.overlap_events}"
    )
    print(
        "page cache: bypassed (O_DIRECT)"
        if direct
        else "page cache: NOT bypassed (this file system refuses O_DIRECT)"
    )
    for op, m in results.items():
        runs = ", ".join(f"{m.nbytes / s / 1e9:.2f}" for s in m.seconds)
        extra = " (including fsync)" if op == "write" else ""
        print(f"{op:>5}: {m.gbps:6.2f} GB/s median of {len(m.seconds)} ({runs}){extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``zero-nvme-tune``: sweep aio_handle settings on a directory, print the best ``"aio"`` block.

Like DeepSpeed's ``ds_nvme_tune``: every combination of the sweep space is measured for
reads and writes (see [Note: what a measurement means] in _measure.py), and the output is
the best GB/s in each direction plus the config block to paste into a DeepSpeed/zerospeed
JSON config. The recommended block is the configuration that stays closest to both bests
(the largest min(read/best_read, write/best_write)), since one block serves both.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from typing import Any

from ._measure import (
    HandleConfig,
    Measurement,
    direct_io_supported,
    measure,
    new_buffer,
    parse_size,
    prepare_file,
)
from ._native import available_backends

#: The default sweep space (``--sweep_config`` replaces any of these lists).
DEFAULT_SWEEP: dict[str, list[Any]] = {
    "block_size": [262144, 1048576, 4194304],
    "queue_depth": [8, 32, 128],
    "intra_op_parallelism": [1, 2, 4],
    "single_submit": [False, True],
    "overlap_events": [False, True],
}
#: DeepSpeed's other names for the thread count, accepted in sweep files.
_ALIASES = {"thread_count": "intra_op_parallelism", "io_parallel": "intra_op_parallelism"}


def load_sweep(path: str | None) -> dict[str, list[Any]]:
    """The sweep space: the defaults, with any list from the JSON file at ``path`` replacing
    its default. Every bad key or value is an error that names it."""
    space = {**DEFAULT_SWEEP, "backend": available_backends()}
    if path is None:
        return space
    try:
        with open(path) as f:
            given = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"zero-nvme-tune: cannot read sweep config {path!r}: {e}") from None
    if not isinstance(given, dict):
        raise SystemExit(f"zero-nvme-tune: {path}: the sweep config must be a JSON object")
    for raw_key, values in given.items():
        key = _ALIASES.get(raw_key, raw_key)
        if key not in space:
            raise SystemExit(
                f"zero-nvme-tune: {path}: unknown key {raw_key!r}; valid keys: "
                f"{', '.join(sorted(space))}"
            )
        if not isinstance(values, list) or not values:
            values = [values]
        space[key] = [_value(key, v, path) for v in values]
    return space


def _value(key: str, value: Any, path: str) -> Any:
    try:
        if key in ("single_submit", "overlap_events"):
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"  # ds_nvme_tune writes booleans as strings
            if isinstance(value, bool):
                return value
            raise ValueError("expected true or false")
        if key == "backend":
            if value not in available_backends():
                raise ValueError(f"not usable here; usable: {', '.join(available_backends())}")
            return value
        number = parse_size(value) if key == "block_size" else int(value)
        if isinstance(value, bool) or number < 1:
            raise ValueError("expected a positive number")
        return number
    except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
        raise SystemExit(f"zero-nvme-tune: {path}: {key} value {value!r}: {e}") from None


def configurations(space: dict[str, list[Any]]) -> list[HandleConfig]:
    keys = list(space)
    return [HandleConfig(**dict(zip(keys, combo))) for combo in itertools.product(*space.values())]


def aio_block(config: HandleConfig) -> dict[str, Any]:
    """The ``"aio"`` config block for ``config`` (DeepSpeed's keys; ``backend`` is
    zerospeed's own key and appears only when it is not the default)."""
    block: dict[str, Any] = {
        "block_size": config.block_size,
        "queue_depth": config.queue_depth,
        "intra_op_parallelism": config.intra_op_parallelism,
        "single_submit": config.single_submit,
        "overlap_events": config.overlap_events,
    }
    if config.backend != available_backends()[0]:
        block["backend"] = config.backend
    return {"aio": block}


class Progress:
    """A one-line progress bar on stderr (a line per 10% when stderr is not a terminal)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.tty = total, 0, sys.stderr.isatty()
        self.last_decile = -1

    def step(self, note: str) -> None:
        self.done += 1
        width = 30
        filled = width * self.done // self.total
        line = f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {note}"
        if self.tty:
            sys.stderr.write("\r" + line + " " * 4)
            if self.done == self.total:
                sys.stderr.write("\n")
        elif self.done * 10 // self.total != self.last_decile:
            self.last_decile = self.done * 10 // self.total
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zero-nvme-tune",
        description="Find the aio_handle settings that read and write fastest on a device, "
        'and print the "aio" config block to use.',
    )
    p.add_argument("--nvme_dir", required=True, help="a writable directory on the device")
    p.add_argument("--io_size", type=parse_size, default=parse_size("256M"), help="bytes per op")
    p.add_argument("--sweep_config", help="JSON file: lists replacing the default sweep space")
    p.add_argument("--no_read", action="store_true", help="do not measure reads")
    p.add_argument("--no_write", action="store_true", help="do not measure writes")
    p.add_argument("--loops", type=int, default=2, help="timed repetitions per point (median)")
    p.add_argument("--verbose", action="store_true", help="print every measurement")
    p.add_argument("--output", help="also write every measurement to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.no_read and args.no_write:
        parser.error("--no_read and --no_write leave nothing to measure")
    if args.loops < 1:
        parser.error("--loops must be at least 1")
    if not os.path.isdir(args.nvme_dir):
        parser.error(f"--nvme_dir {args.nvme_dir!r} is not a directory")
    if not os.access(args.nvme_dir, os.W_OK):
        parser.error(f"--nvme_dir {args.nvme_dir!r} is not writable")
    space = load_sweep(args.sweep_config)
    configs = configurations(space)
    ops = [op for op in ("read", "write") if not getattr(args, f"no_{op}")]
    io_size = -(-args.io_size // 4096) * 4096
    path = os.path.join(args.nvme_dir, f"zero-nvme-tune-{os.getpid()}.bin")
    direct = direct_io_supported(args.nvme_dir)
    print(
        f"zero-nvme-tune: {len(configs)} configurations x {', '.join(ops)} of "
        f"{io_size / 2**20:g} MiB in {args.nvme_dir} "
        f"({'O_DIRECT: page cache bypassed' if direct else 'buffered: O_DIRECT refused'})"
    )
    buffer = new_buffer(io_size)
    results: list[Measurement] = []
    best: dict[str, Measurement] = {}
    progress = Progress(len(configs) * len(ops))
    try:
        prepare_file(path, buffer)
        for config in configs:
            for op in ops:
                m = measure(config, path, buffer, op, args.loops)
                results.append(m)
                if op not in best or m.gbps > best[op].gbps:
                    best[op] = m
                if args.verbose:
                    print(f"{op:>5} {m.gbps:6.2f} GB/s  {aio_block(config)['aio']}")
                progress.step(" ".join(f"{o} {b.gbps:.2f}" for o, b in best.items()) + " GB/s")
    finally:
        if os.path.exists(path):
            os.unlink(path)
    scores: dict[HandleConfig, float] = {}
    for m in results:
        ratio = m.gbps / best[m.op].gbps
        scores[m.config] = min(scores.get(m.config, ratio), ratio)
    recommended = max(scores, key=scores.__getitem__)
    print(
        "Best performance (GB/sec): "
        + ", ".join(f"{op} = {best[op].gbps:.2f}" for op in ("read", "write") if op in best)
    )
    for op, m in best.items():
        print(f"  best {op}: {json.dumps(aio_block(m.config)['aio'])}")
    print(json.dumps(aio_block(recommended), indent=2))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(
                [
                    {"op": m.op, "gbps": m.gbps, "seconds": m.seconds, **vars(m.config)}
                    for m in results
                ],
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m zero_core convert CHECKPOINT_DIR OUTPUT [--safetensors] [--tag TAG]``
(also ``zerospeed convert``): a checkpoint of any stage and world size to one plain fp32
state dict, with no process group."""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None, prog: str = "python -m zero_core") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    convert = commands.add_parser(
        "convert", help="consolidate a checkpoint into one fp32 state dict file"
    )
    convert.add_argument("checkpoint_dir", help="the save_dir (uses 'latest') or a tag directory")
    convert.add_argument("output", help="output file (.pt, or .safetensors with --safetensors)")
    convert.add_argument("--tag", help="the tag to convert (default: the 'latest' file)")
    convert.add_argument(
        "--safetensors",
        action="store_true",
        help="write safetensors, streaming one tensor at a time (memory: the largest tensor)",
    )
    args = parser.parse_args(argv)
    from ._consolidate import convert as run

    if not os.path.isdir(args.checkpoint_dir):
        parser.error(f"{args.checkpoint_dir!r} is not a directory")
    start = time.perf_counter()
    try:
        run(args.checkpoint_dir, args.output, args.tag, args.safetensors)
    except (FileNotFoundError, ValueError, NotImplementedError) as exc:
        print(f"{parser.prog} convert: {exc}", file=sys.stderr)
        return 1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = os.path.getsize(args.output) / 2**20
    print(
        f"wrote {args.output} ({size:.1f} MiB) in {time.perf_counter() - start:.1f} s, "
        f"peak memory {peak:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

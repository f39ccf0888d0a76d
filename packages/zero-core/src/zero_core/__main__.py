"""zero-core's commands (also ``zerospeed convert`` / ``zerospeed estimate``).

``python -m zero_core convert CHECKPOINT_DIR OUTPUT [--safetensors] [--tag TAG]``: a
checkpoint of any stage and world size to one plain fp32 state dict, with no process group.

``python -m zero_core estimate --params 7B --nodes 4 --gpus-per-node 8 [...]``: memory and
communication of every ZeRO stage for a model size and cluster, before running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None, prog: str = "python -m zero_core") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="zero-core's commands.")
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
    estimate = commands.add_parser(
        "estimate",
        help="memory and communication of ZeRO stages 0-3 for a model size and cluster",
        description="Model-state memory per device, per node (CPU) and on NVMe, and the bytes "
        "each rank sends per optimizer step, for ZeRO stages 0-3 in zero-core. Activations "
        "and buffers are not included.",
    )
    estimate.add_argument(
        "--params", required=True, help="total parameters: 7e9, 7B, 1.3B, 350M, 125k"
    )
    estimate.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1)")
    estimate.add_argument(
        "--gpus-per-node", type=int, default=1, help="GPUs (ranks) per node (default 1)"
    )
    estimate.add_argument(
        "--offload",
        choices=("none", "cpu", "nvme"),
        default="none",
        help="offload the optimizer (stage >= 1 for cpu, stage 3 for nvme) and, at stage 3, "
        "the weights",
    )
    estimate.add_argument(
        "--largest-layer-params",
        default="0",
        help="parameters of the largest module: stage 3 gathers it whole (default 0: not counted)",
    )
    estimate.add_argument(
        "--precision",
        choices=("bf16", "fp16", "fp32"),
        default="bf16",
        help="compute dtype; bf16/fp16 keep fp32 master weights (default bf16)",
    )
    estimate.add_argument(
        "--gradient-accumulation-steps",
        type=int,
        default=1,
        help="micro-steps per optimizer step (default 1)",
    )
    estimate.add_argument(
        "--no-zero-init",
        dest="zero_init",
        action="store_false",
        help="stage 3: the model is built whole on every process, not under zero_core.Init",
    )
    estimate.add_argument("--json", action="store_true", help="exact bytes and elements as JSON")
    args = parser.parse_args(argv)
    if args.command == "estimate":
        return _estimate(estimate, args)
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


#: the estimate functions' argument names, as the command's flags
_FLAGS = {
    "total_params": "--params",
    "largest_layer_params": "--largest-layer-params",
    "num_gpus_per_node": "--gpus-per-node",
    "num_nodes": "--nodes",
    "gradient_accumulation_steps": "--gradient-accumulation-steps",
}


def _estimate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .estimate import parse_count
    from .estimate._table import plan_stages, render_json, render_table

    try:
        setup = {
            "total_params": parse_count(args.params),
            "num_nodes": args.nodes,
            "num_gpus_per_node": args.gpus_per_node,
            "precision": args.precision,
            "offload": args.offload,
            "largest_layer_params": parse_count(args.largest_layer_params),
            "zero_init": args.zero_init,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
        }
        plans = plan_stages(**setup)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        for name, flag in _FLAGS.items():  # name the flag the user typed
            message = message.replace(name, flag)
        parser.error(message)
    if args.json:
        print(json.dumps(render_json(setup, plans), indent=2))
    else:
        print(render_table(setup, plans))
    return 0


if __name__ == "__main__":
    sys.exit(main())

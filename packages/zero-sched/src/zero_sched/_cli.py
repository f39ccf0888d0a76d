"""``python -m zero_sched``: look at a schedule before training with it."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ._config import SchedulerConfigError
from ._plot import describe, save_png, text_chart, trace_schedule

__all__ = ["main"]


def _load_config(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise SystemExit(f"error: cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: {path} is not valid JSON: {exc}") from exc


def _plot(args: argparse.Namespace) -> int:
    config = _load_config(args.config)
    try:
        trace = trace_schedule(config, args.steps, base_lr=args.lr)
    except (SchedulerConfigError, TypeError, ValueError) as exc:
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 2
    print(describe(trace))
    print()
    print(text_chart(trace.lrs, title="learning rate"))
    if trace.momenta is not None:
        print()
        print(text_chart(trace.momenta, title="momentum / beta1"))
    if args.output is not None:
        try:
            save_png(trace, args.output)
        except ImportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"\nwrote {args.output}")
    return 0


def build_parser(prog: str = "python -m zero_sched") -> argparse.ArgumentParser:
    """The argument parser (exposed so the ``zerospeed`` CLI can mount it as a subcommand)."""
    parser = argparse.ArgumentParser(prog=prog, description="Inspect learning-rate schedules.")
    commands = parser.add_subparsers(dest="command", required=True)
    plot = commands.add_parser(
        "plot",
        help="draw a schedule's lr (and momentum) curve",
        description=(
            "Trace the schedule a DeepSpeed config (or its 'scheduler' block) describes and "
            "draw it in the terminal; -o also writes a PNG (needs zero-sched[plot])."
        ),
    )
    plot.add_argument("config", help="JSON file: a DeepSpeed config or a scheduler block")
    plot.add_argument("--steps", type=int, required=True, help="optimizer steps to trace")
    plot.add_argument(
        "--lr",
        type=float,
        default=None,
        help="optimizer lr (default: the config's optimizer lr, else 1e-3)",
    )
    plot.add_argument("-o", "--output", default=None, help="also write the curve to this PNG")
    plot.set_defaults(handler=_plot)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "python -m zero_sched") -> int:
    """Run the CLI; returns the process exit code."""
    args = build_parser(prog).parse_args(argv)
    if args.command == "plot" and args.steps < 1:
        print(f"error: --steps must be a positive integer, got {args.steps}", file=sys.stderr)
        return 2
    return args.handler(args)

"""The ``zerospeed`` command: a front that dispatches to the package owning each command."""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``zerospeed``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="zerospeed",
        description="DeepSpeed's training stack on plain PyTorch.",
        epilog="Run 'zerospeed COMMAND --help' for a command's options.",
    )
    parser.add_argument(
        "--version", action="version", version=importlib.metadata.version("zerospeed")
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser(
        "launch", help="run a training script with torchrun (DeepSpeed's options)", add_help=False
    )
    report = commands.add_parser(
        "report", help="versions and capabilities of torch and every installed package"
    )
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    commands.add_parser(
        "estimate", help="memory needed per GPU/CPU at each ZeRO stage (zero-core)", add_help=False
    )
    commands.add_parser(
        "convert", help="checkpoint -> one fp32 state dict file (zero-core)", add_help=False
    )
    commands.add_parser("sched", help="learning-rate schedules (zero-sched): plot", add_help=False)
    if argv[:1] == ["launch"]:
        from ._launch import main as launch_main

        return launch_main(argv[1:])
    if argv[:1] == ["sched"]:
        from zero_sched._cli import main as sched_main

        return sched_main(argv[1:], prog="zerospeed sched")
    if argv[:1] in (["convert"], ["estimate"]):
        from zero_core.__main__ import main as core_main

        return core_main(argv, prog="zerospeed")
    args = parser.parse_args(argv)
    if args.command == "report":
        from ._report import main as report_main

        return report_main(as_json=args.json)
    parser.error(f"unknown command {args.command}")
    return 2

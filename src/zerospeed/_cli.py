"""The ``zerospeed`` command: a front that dispatches to the package owning each command."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Sequence

__all__ = ["main"]

#: Sibling packages whose ``report()`` section ``zerospeed report`` prints, in order.
_SECTIONS = {
    "zero-sched": "zero_sched",
    "zero-optim": "zero_optim",
    "zero-aio": "zero_aio",
    "zero-profiler": "zero_profiler",
}


def _report() -> int:
    import torch

    from . import __version__

    print(f"zerospeed {__version__}")
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}")
    for dist, module in _SECTIONS.items():
        print(f"\n[{dist}]")
        try:
            section = importlib.import_module(module).report()
        except ImportError:
            print(f"  not installed (pip install {dist})")
            continue
        width = max(map(len, section))
        for label, value in section.items():
            print(f"  {label:<{width}}  {value}")
    return 0


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
    commands.add_parser("report", help="versions and capabilities of every installed package")
    commands.add_parser("sched", help="learning-rate schedules (zero-sched): plot", add_help=False)
    commands.add_parser(
        "convert", help="checkpoint -> one fp32 state dict file (zero-core)", add_help=False
    )
    if argv[:1] == ["sched"]:
        from zero_sched._cli import main as sched_main

        return sched_main(argv[1:], prog="zerospeed sched")
    if argv[:1] == ["convert"]:
        from zero_core.__main__ import main as core_main

        return core_main(argv, prog="zerospeed")
    args = parser.parse_args(argv)
    if args.command == "report":
        return _report()
    parser.error(f"unknown command {args.command}")
    return 2

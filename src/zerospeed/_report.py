"""``zerospeed report``: each installed package's ``report()`` section, as text or JSON."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import sys
from typing import Any

__all__ = ["collect", "main"]

#: Sibling distributions whose ``report()`` section is printed, in order, and their modules.
SECTIONS = {
    "zero-core": "zero_core",
    "zero-sched": "zero_sched",
    "zero-optim": "zero_optim",
    "zero-aio": "zero_aio",
    "zero-profiler": "zero_profiler",
    "zero-moe": "zero_moe",
}


def collect() -> dict[str, Any]:
    """Versions and every sibling's section; siblings that are absent or fail to import are
    listed with the command that fixes them instead of a section."""
    import torch

    from . import __version__

    out: dict[str, Any] = {
        "zerospeed": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "sections": {},
        "problems": {},
    }
    for dist, module in SECTIONS.items():
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out["problems"][dist] = f"not installed (pip install {dist})"
            continue
        try:
            out["sections"][dist] = importlib.import_module(module).report()
        except ImportError as exc:
            out["problems"][dist] = (
                f"installed but fails to import ({exc}); reinstall: "
                f"pip install --force-reinstall {dist}"
            )
    return out


def main(as_json: bool = False) -> int:
    """Print the report; returns the exit code."""
    found = collect()
    if as_json:
        print(json.dumps(found, indent=2))
        return 0
    print(f"zerospeed {found['zerospeed']}")
    print(f"python {found['python']}, torch {found['torch']}")
    for dist in SECTIONS:
        print(f"\n[{dist}]")
        if dist in found["problems"]:
            print(f"  {found['problems'][dist]}")
            continue
        section = found["sections"][dist]
        width = max(map(len, section))
        for label, value in section.items():
            print(f"  {label:<{width}}  {value}")
    return 0

"""zerospeed: DeepSpeed's training stack on plain PyTorch, one small package per concern.

This meta-package holds no logic of its own. It re-exports each installed sibling under one
roof (``zerospeed.sched`` *is* ``zero_sched``) and provides the ``zerospeed`` command line.
"""

import sys

import zero_sched as sched

# Register the alias so `import zerospeed.sched` and `from zerospeed.sched import X` work and
# give the very same module object as `import zero_sched`.
sys.modules[f"{__name__}.sched"] = sched

__version__ = "0.1.0"

__all__ = ["__version__", "sched"]

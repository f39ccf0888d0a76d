"""Entry point for ``python -m zero_sched``."""

import sys

from ._cli import main

sys.exit(main())

"""A one-line progress bar for rank 0: step, loss, lr, tokens/s and time left.

On a terminal the line redraws in place; when the output goes to a file or a CI log it
prints a plain line every ``every`` steps instead, so logs stay readable.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, start: int = 0, enabled: bool = True, every: int = 10) -> None:
        self.total, self.start, self.enabled, self.every = total, start, enabled, every
        self.began = time.perf_counter()
        self.tty = sys.stdout.isatty()
        self.last = ""

    def update(self, step: int, loss: float, lr: float, tokens_s: float) -> None:
        if not self.enabled:
            return
        done = step - self.start
        left = (time.perf_counter() - self.began) / max(done, 1) * (self.total - step)
        width = 24
        filled = round(width * step / self.total)
        self.last = (
            f"[{'#' * filled}{'.' * (width - filled)}] {step}/{self.total} "
            f"loss {loss:.3f}  lr {lr:.2e}  {tokens_s:,.0f} tok/s  {left:4.0f}s left"
        )
        if self.tty:
            print("\r" + self.last, end="", flush=True)
        elif step % self.every == 0 or step == self.total:
            print(self.last, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(flush=True)

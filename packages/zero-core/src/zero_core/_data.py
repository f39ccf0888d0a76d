"""The training data loader: a distributed sampler whose position survives a checkpoint.

[Note: resuming mid-epoch]
The position is counted by the engine, not the loader: every ``engine.step()`` consumed one
micro-batch, so the samples consumed this epoch are (micro-steps since ``set_epoch``) x
micro batch size, exact whatever the loader prefetches. On resume the sampler skips that many
of the epoch's indices once, so the run continues with the very next batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["ResumableSampler"]


class ResumableSampler(torch.utils.data.DistributedSampler):
    """``DistributedSampler`` that can start an epoch part-way (see the Note above)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skip = 0
        self.on_set_epoch: Callable[[], None] | None = None

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.skip = 0
        if self.on_set_epoch is not None:
            self.on_set_epoch()

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self.skip = self.skip, 0
        return iter(indices[start:])

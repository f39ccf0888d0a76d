"""The base every zero-sched schedule derives from.

[Note: step indexing]
DeepSpeed's schedules count ``last_batch_iteration``: -1 right after construction, 0 after the
first ``step()``, and ``step(n)`` jumps to ``last_batch_iteration = n``. PyTorch's
``LRScheduler`` counts ``last_epoch``: its constructor already performs one step, so it is 0
right after construction. The two are the same clock shifted by one::

    last_epoch == last_batch_iteration + 1

We keep torch's ``last_epoch`` as the single stored position (so ``SequentialLR``, which
rewinds and restarts its children through ``last_epoch``, ``_initial_step`` and
``_update_lr(0)``, drives our schedules like any of its own), and expose
``last_batch_iteration`` as a property over it. Every schedule is a closed-form function of
the position, so jumping, rewinding and resuming all give exactly the value a run that
stepped there one by one would have.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any, ClassVar

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ._validate import as_count

__all__ = ["Schedule"]


def _write(group: dict[str, Any], key: str, value: float) -> None:
    """Set a param-group value, in place when the optimizer keeps it as a tensor."""
    current = group[key]
    if isinstance(current, torch.Tensor):
        current.fill_(value)
    else:
        group[key] = value


class Schedule(LRScheduler):
    """A learning-rate schedule given in closed form of the step index.

    Subclasses validate their arguments, then call ``super().__init__``, and implement
    :meth:`lr_at` (and :meth:`momentum_at` if they cycle momentum). Everything else, step
    counting, writing values into the optimizer, state dicts, is here.
    See [Note: step indexing].
    """

    #: Keys of ``__dict__`` that ``load_state_dict`` must never overwrite.
    _NOT_STATE: ClassVar[frozenset[str]] = frozenset({"optimizer", "_scale_memo"})

    def __init__(self, optimizer: Optimizer, last_batch_iteration: int = -1) -> None:
        last_batch_iteration = as_count("last_batch_iteration", last_batch_iteration, minimum=-1)
        # torch refuses to resume (last_epoch >= 0) unless every group has initial_lr; a
        # DeepSpeed script resumes by passing last_batch_iteration to a fresh optimizer, so
        # record the current lr as the initial one, as torch does for a fresh start.
        for group in optimizer.param_groups:
            lr = group["lr"]
            group.setdefault("initial_lr", lr.clone() if isinstance(lr, torch.Tensor) else lr)
        self._schedule_name = type(self).__name__
        super().__init__(optimizer, last_epoch=last_batch_iteration)

    # -- what a schedule defines ------------------------------------------------------

    def lr_at(self, batch_iteration: int) -> list[float]:
        """Learning rate of every param group once ``last_batch_iteration == batch_iteration``."""
        raise NotImplementedError

    def momentum_at(self, batch_iteration: int) -> list[float] | None:
        """Momentum (or Adam ``beta1``) per param group at that index; ``None`` leaves it alone."""
        return None

    #: Which param-group key :meth:`momentum_at` drives: ``"betas"``, ``"momentum"`` or None.
    _momentum_key: str | None = None

    # -- position ---------------------------------------------------------------------

    @property
    def last_batch_iteration(self) -> int:
        """DeepSpeed's step index: -1 after construction, n after the (n+1)-th ``step()``."""
        return self.last_epoch - 1

    @last_batch_iteration.setter
    def last_batch_iteration(self, value: int) -> None:
        self.last_epoch = as_count("last_batch_iteration", value, minimum=-1) + 1

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """Learning rates at the current position (closed form, safe to call any time)."""
        return self.lr_at(self.last_batch_iteration)

    _get_closed_form_lr = get_lr

    def get_mom(self) -> list[float] | None:
        """Momentum values at the current position, or ``None`` when momentum is not cycled."""
        return self.momentum_at(self.last_batch_iteration)

    # -- stepping -----------------------------------------------------------------------

    def step(self, batch_iteration: int | None = None) -> None:  # type: ignore[override]
        """Advance one step, or jump so that ``last_batch_iteration == batch_iteration``.

        The explicit index follows DeepSpeed (``step(n)`` means "batch n has run"), not
        torch's deprecated ``step(epoch)``.
        """
        self._step_count += 1
        if batch_iteration is None:
            self._update_lr(None)
        else:
            index = as_count("batch_iteration", batch_iteration, minimum=-1)
            self._update_lr(index + 1)

    def _update_lr(self, epoch: int | None = None) -> None:
        # torch's own step() and SequentialLR both funnel through this hook; see
        # [Note: step indexing] for why ``epoch`` is torch's last_epoch.
        self.last_epoch = self.last_epoch + 1 if epoch is None else epoch
        self._apply()

    def _apply(self) -> None:
        """Write the values for the current position into the optimizer."""
        index = self.last_batch_iteration
        lrs = self.lr_at(index)
        groups = self.optimizer.param_groups
        tensor_lrs = False
        for group, lr in zip(groups, lrs):
            current = group["lr"]
            if type(current) is float or not isinstance(current, torch.Tensor):  # fast path first
                group["lr"] = lr
            else:
                current.fill_(lr)
                tensor_lrs = True
        if self._momentum_key is not None:
            momenta = self.momentum_at(index)
            if momenta is not None:
                self._write_momenta(groups, momenta)
        # get_last_lr() must not alias tensor lrs the optimizer will keep changing.
        self._last_lr = [g["lr"].clone() for g in groups] if tensor_lrs else lrs

    def _write_momenta(self, groups: list[dict[str, Any]], momenta: list[float]) -> None:
        key = self._momentum_key
        if key != "betas":
            for group, momentum in zip(groups, momenta):
                _write(group, key, momentum)
            return
        for group, momentum in zip(groups, momenta):
            beta1, beta2 = group["betas"]
            if type(beta1) is float or not isinstance(beta1, torch.Tensor):
                group["betas"] = (momentum, beta2)
            else:
                beta1.fill_(momentum)

    # -- state ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything but the optimizer, plus DeepSpeed's ``last_batch_iteration`` key.

        The result holds only numbers, strings, lists and dicts, so it loads with
        ``torch.load(weights_only=True)``.
        """
        state = {k: v for k, v in self.__dict__.items() if k not in self._NOT_STATE}
        state["last_batch_iteration"] = self.last_batch_iteration
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the schedule position and write its lr/momentum into the optimizer.

        Accepts our own state dicts and DeepSpeed's (``{"last_batch_iteration": n}``), so a
        DeepSpeed checkpoint's scheduler state resumes here at the same step.

        Raises:
            ValueError: the state dict belongs to a different schedule type, or holds no
                position.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        name = state_dict.get("_schedule_name", self._schedule_name)
        if name != self._schedule_name:
            raise ValueError(
                f"cannot load a {name} state dict into {self._schedule_name}; build a {name} "
                f"schedule to resume it"
            )
        if "last_epoch" in state_dict:
            position = as_count("last_epoch", state_dict["last_epoch"], minimum=0)
        elif "last_batch_iteration" in state_dict:
            position = (
                as_count("last_batch_iteration", state_dict["last_batch_iteration"], minimum=-1) + 1
            )
        else:
            raise ValueError(
                "state_dict has neither 'last_epoch' nor 'last_batch_iteration'; it is not a "
                "scheduler state dict"
            )
        restored = {
            k: v
            for k, v in state_dict.items()
            if k not in self._NOT_STATE and k != "last_batch_iteration"
        }
        self.__dict__.update(restored)
        self.last_epoch = position
        self._apply()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_batch_iteration={self.last_batch_iteration})"


def warn_at_caller(message: str) -> None:
    """Warn at the first frame outside zero_sched, i.e. the user's line that built the schedule."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package_dir):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)

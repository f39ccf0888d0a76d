"""CPUAdagrad: Adagrad with DeepSpeed's arguments and torch.optim.Adagrad's state layout."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from . import _C
from ._cpu_base import CPUOptimizer, KernelBatch
from ._validate import check_nonnegative, refuse_amsgrad

__all__ = ["CPUAdagrad"]


class CPUAdagrad(CPUOptimizer):
    """Adagrad whose step runs in zero-optim's multi-threaded SIMD C++ kernel.

    Arguments and defaults are DeepSpeed's ``DeepSpeedCPUAdagrad``, plus torch's
    ``lr_decay`` and ``initial_accumulator_value`` (keyword-only). Results equal
    ``torch.optim.Adagrad`` (L2 weight decay added to the gradient, learning rate
    ``lr / (1 + (step - 1) * lr_decay)``) to fp32 rounding. Params may be fp32, bf16 or fp16;
    the accumulator is fp32 unless ``fp32_optimizer_states=False`` (then it takes the param's
    dtype). The state dict uses torch's layout (``step``, ``sum``) and torch's group keys, so
    torch Adagrad checkpoints load here and continue identically, and ours load into torch.

    Args:
        params: params or param groups.
        lr: learning rate.
        eps: added to the denominator.
        weight_decay: L2 weight decay (added to the gradient, as torch does).
        amsgrad: not implemented; ``True`` raises.
        fp32_optimizer_states: keep the accumulator in fp32 for low-precision params.
        lr_decay: learning-rate decay per step (torch's ``lr_decay``).
        initial_accumulator_value: starting value of the accumulator ``sum``.
        num_threads: threads per step; default ``torch.get_num_threads()``, or the node's
            cores divided by ``LOCAL_WORLD_SIZE`` when several ranks share a node.
    """

    state_keys = ("sum",)
    amsgrad_hint = "Adagrad has no such variant; pass amsgrad=False"

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        eps: float = 1e-10,
        weight_decay: float = 0,
        amsgrad: bool = False,
        fp32_optimizer_states: bool = True,
        *,
        lr_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        num_threads: int | None = None,
    ) -> None:
        refuse_amsgrad(amsgrad, type(self).__name__, self.amsgrad_hint)
        defaults = {
            "lr": check_nonnegative("lr", lr),
            "lr_decay": check_nonnegative("lr_decay", lr_decay),
            "eps": check_nonnegative("eps", eps),
            "weight_decay": check_nonnegative("weight_decay", weight_decay),
            "initial_accumulator_value": check_nonnegative(
                "initial_accumulator_value", initial_accumulator_value
            ),
            # torch.optim.Adagrad's remaining keys, so our checkpoints load into torch too
            "foreach": None,
            "maximize": False,
            "differentiable": False,
            "fused": None,
            # DeepSpeedCPUAdagrad's key
            "amsgrad": False,
        }
        super().__init__(
            params, defaults, fp32_optimizer_states=fp32_optimizer_states, num_threads=num_threads
        )

    def _init_state(
        self, param: torch.Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> None:
        state["step"] = torch.tensor(0.0)
        state["sum"] = torch.full_like(
            param,
            group["initial_accumulator_value"],
            dtype=self._state_dtype(param),
            memory_format=torch.contiguous_format,
        )

    def _launch(
        self,
        group: dict[str, Any],
        step: int,
        codes: tuple[int, int, int, int],
        batch: KernelBatch,
        threads: int,
    ) -> None:
        where = batch.addresses()
        # torch.optim.Adagrad's learning rate at this step, computed in double as torch does.
        clr = group["lr"] / (1 + (step - 1) * group["lr_decay"])
        _C.adagrad_step(
            where["params"], where["grads"], where["states"][0], where["copies"],
            where["numels"], *codes, clr, group["eps"], group["weight_decay"], threads,
        )  # fmt: skip

"""CPULion and FusedLion: Lion (Chen et al. 2023) with DeepSpeed's arguments.

Lion keeps one state tensor, ``exp_avg``, and moves every element by exactly ``lr`` per step:
    update = sign(beta1 * m + (1 - beta1) * g)
    p = p * (1 - lr * weight_decay) - lr * update
    m = beta2 * m + (1 - beta2) * g
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from . import _C
from ._cpu_base import CPUOptimizer, KernelBatch
from ._validate import check_betas, check_nonnegative

__all__ = ["CPULion", "FusedLion", "torch_lion_step"]


class CPULion(CPUOptimizer):
    """Lion whose step runs in zero-optim's multi-threaded SIMD C++ kernel.

    Arguments and defaults are DeepSpeed's ``DeepSpeedCPULion``. Weight decay is decoupled
    (the param is multiplied by ``1 - lr * weight_decay`` before the update). Params may be
    fp32, bf16 or fp16; ``exp_avg`` is fp32 unless ``fp32_optimizer_states=False`` (then it
    takes the param's dtype). The state holds ``step`` (a float32 tensor) and ``exp_avg``.

    Args:
        params: params or param groups.
        lr: learning rate (the size of every element's step).
        betas: ``beta1`` interpolates the update direction, ``beta2`` the momentum; each in
            [0, 1).
        weight_decay: decoupled weight decay.
        fp32_optimizer_states: keep ``exp_avg`` in fp32 for low-precision params.
        num_threads: threads per step; default ``torch.get_num_threads()``, or the node's
            cores divided by ``LOCAL_WORLD_SIZE`` when several ranks share a node.
    """

    state_keys = ("exp_avg",)

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0,
        fp32_optimizer_states: bool = True,
        *,
        num_threads: int | None = None,
    ) -> None:
        defaults = {
            "lr": check_nonnegative("lr", lr),
            "betas": check_betas(betas),
            "weight_decay": check_nonnegative("weight_decay", weight_decay),
        }
        super().__init__(
            params, defaults, fp32_optimizer_states=fp32_optimizer_states, num_threads=num_threads
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
        lr, (beta1, beta2) = group["lr"], group["betas"]
        _C.lion_step(
            where["params"], where["grads"], where["states"][0], where["copies"],
            where["numels"], *codes, lr, beta1, 1 - beta1, beta2, 1 - beta2,
            1 - lr * group["weight_decay"], threads,
        )  # fmt: skip


@torch.no_grad()
def torch_lion_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    group: dict[str, Any],
) -> None:
    """Lion on device tensors through PyTorch's multi-tensor (foreach) ops.

    The same math as the CPU kernel (see the module docstring); used for CUDA params.
    """
    if not params:
        return
    lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
    update = torch._foreach_mul(exp_avgs, beta1)
    torch._foreach_add_(update, grads, alpha=1 - beta1)
    torch._foreach_sign_(update)
    if wd:
        torch._foreach_mul_(params, 1 - lr * wd)
    torch._foreach_add_(params, update, alpha=-lr)
    torch._foreach_mul_(exp_avgs, beta2)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta2)


class FusedLion(CPULion):
    """DeepSpeed's ``FusedLion``: one optimizer for CPU and CUDA params.

    CPU params are updated by the C++ kernel (as :class:`CPULion`, with fp32 ``exp_avg``);
    CUDA params by :func:`torch_lion_step` (PyTorch's foreach ops, ``exp_avg`` in the param's
    dtype, as torch's optimizers keep it).

    Args:
        params: params or param groups.
        lr: learning rate.
        betas: coefficients of the update direction and the momentum, each in [0, 1).
        weight_decay: decoupled weight decay.
        set_grad_none: ``zero_grad()`` sets grads to ``None`` (the default, as in torch).
        num_threads: threads per CPU step.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        set_grad_none: bool = True,
        *,
        num_threads: int | None = None,
    ) -> None:
        self.set_grad_none = bool(set_grad_none)
        super().__init__(
            params, lr=lr, betas=betas, weight_decay=weight_decay, num_threads=num_threads
        )

    accepts_device_params = True

    def _device_step(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        grads, exp_avgs, steps = [], [], []
        for p in params:
            state = self.state[p]
            if not state:
                self._init_device_state(p, state)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            steps.append(state["step"])
        torch._foreach_add_(steps, 1)
        torch_lion_step(params, grads, exp_avgs, group)

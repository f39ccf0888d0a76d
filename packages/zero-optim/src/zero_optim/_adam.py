"""CPUAdam and FusedAdam: Adam/AdamW with DeepSpeed's arguments and torch's state layout."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from . import _C
from ._cpu_base import CPUOptimizer, KernelBatch
from ._validate import check_betas, check_nonnegative, refuse_amsgrad

__all__ = ["CPUAdam", "FusedAdam", "adam_step_scalars", "torch_adam_step"]


def adam_step_scalars(group: dict[str, Any], step: int) -> dict[str, float]:
    """The per-step scalars of torch's Adam, computed in double as torch computes them."""
    lr, (beta1, beta2) = group["lr"], group["betas"]
    wd, adamw = group["weight_decay"], group["adamw_mode"]
    if group["bias_correction"]:
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
    else:
        bias_correction1 = bias_correction2 = 1.0
    return {
        "beta1": beta1,
        "beta2": beta2,
        "one_minus_beta1": 1 - beta1,
        "one_minus_beta2": 1 - beta2,
        "eps": group["eps"],
        "step_size": lr / bias_correction1,
        "bias_correction2_sqrt": bias_correction2**0.5,
        "decay": 1 - lr * wd if adamw else 1.0,
        "l2": 0.0 if adamw else wd,
    }


class CPUAdam(CPUOptimizer):
    """Adam/AdamW whose step runs in zero-optim's multi-threaded SIMD C++ kernel.

    Arguments and defaults are DeepSpeed's ``DeepSpeedCPUAdam``; results equal
    ``torch.optim.AdamW`` (``adamw_mode=True``) or ``torch.optim.Adam`` with L2 weight decay
    (``adamw_mode=False``) to fp32 rounding. Params may be fp32, bf16 or fp16; states are fp32
    unless ``fp32_optimizer_states=False`` (then they take the param's dtype). The state dict
    uses torch's layout (``step``, ``exp_avg``, ``exp_avg_sq``), so torch Adam/AdamW
    checkpoints load here and ours load into torch.

    Args:
        params: params or param groups.
        lr: learning rate.
        bias_correction: apply Adam's bias correction.
        betas: coefficients of the running averages, each in [0, 1).
        eps: added to the denominator.
        weight_decay: decoupled (AdamW) or L2 (Adam) weight decay, per ``adamw_mode``.
        amsgrad: not implemented; ``True`` raises.
        adamw_mode: decoupled weight decay (AdamW) instead of L2.
        fp32_optimizer_states: keep states in fp32 for low-precision params.
        num_threads: threads per step; default ``torch.get_num_threads()``, or the node's
            cores divided by ``LOCAL_WORLD_SIZE`` when several ranks share a node.
    """

    state_keys = ("exp_avg", "exp_avg_sq")
    amsgrad_hint = "use torch.optim.AdamW(amsgrad=True) for it"

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        bias_correction: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        adamw_mode: bool = True,
        fp32_optimizer_states: bool = True,
        *,
        num_threads: int | None = None,
    ) -> None:
        refuse_amsgrad(amsgrad, type(self).__name__, self.amsgrad_hint)
        defaults = {
            "lr": check_nonnegative("lr", lr),
            "betas": check_betas(betas),
            "eps": check_nonnegative("eps", eps),
            "weight_decay": check_nonnegative("weight_decay", weight_decay),
            "bias_correction": bool(bias_correction),
            "adamw_mode": bool(adamw_mode),
            # torch.optim.Adam's keys, so our checkpoints load into torch's Adam/AdamW too
            "amsgrad": False,
            "maximize": False,
            "foreach": None,
            "capturable": False,
            "differentiable": False,
            "fused": None,
            "decoupled_weight_decay": bool(adamw_mode),
        }
        super().__init__(
            params, defaults, fp32_optimizer_states=fp32_optimizer_states, num_threads=num_threads
        )

    def _complete_group(self, group: dict[str, Any]) -> None:
        # A torch AdamW checkpoint says decoupled_weight_decay where we say adamw_mode.
        if "adamw_mode" not in group and "decoupled_weight_decay" in group:
            group["adamw_mode"] = bool(group["decoupled_weight_decay"])
        super()._complete_group(group)

    def _launch(
        self,
        group: dict[str, Any],
        step: int,
        codes: tuple[int, int, int, int],
        batch: KernelBatch,
        threads: int,
    ) -> None:
        where = batch.addresses()
        s = adam_step_scalars(group, step)
        _C.adam_step(
            where["params"], where["grads"], where["states"][0], where["states"][1],
            where["copies"], where["numels"], *codes,
            s["beta1"], s["beta2"], s["one_minus_beta1"], s["one_minus_beta2"], s["eps"],
            s["step_size"], s["bias_correction2_sqrt"], s["decay"], s["l2"], threads,
        )  # fmt: skip


@torch.no_grad()
def torch_adam_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
    group: dict[str, Any],
) -> None:
    """Adam/AdamW on device tensors through PyTorch's own kernels (used for CUDA params).

    With bias correction this is torch's fused multi-tensor kernel; torch's fused kernel
    cannot switch bias correction off, so that case uses torch's foreach ops. ``steps`` are
    already incremented.
    """
    (beta1, beta2), lr, wd = group["betas"], group["lr"], group["weight_decay"]
    if group["bias_correction"]:
        fused = torch._fused_adamw_ if group["adamw_mode"] else torch._fused_adam_
        fused(
            params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=lr, beta1=beta1, beta2=beta2,
            weight_decay=wd, eps=group["eps"], amsgrad=False, maximize=False,
        )  # fmt: skip
        return
    if wd:
        if group["adamw_mode"]:
            torch._foreach_mul_(params, 1 - lr * wd)
        else:
            grads = torch._foreach_add(grads, params, alpha=wd)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denom, group["eps"])
    torch._foreach_addcdiv_(params, exp_avgs, denom, -lr)


class FusedAdam(CPUAdam):
    """DeepSpeed's ``FusedAdam``: one optimizer for CPU and CUDA params.

    CPU params are updated by the C++ kernel (as :class:`CPUAdam`); CUDA params by PyTorch's
    fused multi-tensor Adam kernel. The numerics contract is the same as CPUAdam's.

    Args:
        params: params or param groups.
        lr: learning rate.
        bias_correction: apply Adam's bias correction.
        betas: coefficients of the running averages.
        eps: added to the denominator.
        adam_w_mode: decoupled weight decay (DeepSpeed's name for ``adamw_mode``).
        weight_decay: weight decay.
        amsgrad: not implemented; ``True`` raises.
        set_grad_none: ``zero_grad()`` sets grads to ``None`` (the default, as in torch).
        fp32_optimizer_states: keep states in fp32 for low-precision CPU params.
        num_threads: threads per CPU step.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        bias_correction: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        adam_w_mode: bool = True,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        set_grad_none: bool = True,
        fp32_optimizer_states: bool = True,
        *,
        num_threads: int | None = None,
    ) -> None:
        self.set_grad_none = bool(set_grad_none)
        super().__init__(
            params, lr=lr, bias_correction=bias_correction, betas=betas, eps=eps,
            weight_decay=weight_decay, amsgrad=amsgrad, adamw_mode=adam_w_mode,
            fp32_optimizer_states=fp32_optimizer_states, num_threads=num_threads,
        )  # fmt: skip

    accepts_device_params = True

    def _device_step(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        grads, exp_avgs, exp_avg_sqs, steps = [], [], [], []
        for p in params:
            state = self.state[p]
            if not state:
                self._init_device_state(p, state)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        torch._foreach_add_(steps, 1)
        torch_adam_step(params, grads, exp_avgs, exp_avg_sqs, steps, group)

"""What every C++-backed optimizer shares: checking, batching and launching one step.

[Note: a step is all-or-nothing]
``step()`` first walks every param group and checks every param, grad, state and optional
low-precision copy; only when all are acceptable does it touch anything (step counters,
states, params). A bad tensor anywhere therefore raises before any param moved, and a retry
after fixing it runs the step exactly once.

[Note: one kernel call per batch]
Params of a group that share dtypes (param, grad, state, copy) and step count are updated by a
single call into C++, which splits their combined elements evenly across threads. A model
with hundreds of small tensors thus costs one GIL release and one thread wake-up per group,
not per tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ._native import NO_COPY, address, check_buffer, dtype_code
from ._threads import default_num_threads, resolve_num_threads
from ._validate import refuse_amsgrad

__all__ = ["CPUOptimizer", "KernelBatch"]


@dataclass(slots=True)
class KernelBatch:
    """Tensors of one group updated by one kernel call. See [Note: one kernel call per batch]."""

    params: list[torch.Tensor] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)
    #: One list per state key, in the optimizer's ``state_keys`` order.
    states: list[list[torch.Tensor]] = field(default_factory=list)
    copies: list[torch.Tensor | None] = field(default_factory=list)

    def addresses(self) -> dict[str, list[int]]:
        """Integer addresses and element counts for the kernel call."""
        return {
            "params": [address(p) for p in self.params],
            "grads": [address(g) for g in self.grads],
            "states": [[address(s) for s in column] for column in self.states],
            "copies": [0 if c is None else address(c) for c in self.copies],
            "numels": [p.numel() for p in self.params],
        }


@dataclass(slots=True)
class _Planned:
    param: torch.Tensor
    grad: torch.Tensor
    copy: torch.Tensor | None


class CPUOptimizer(torch.optim.Optimizer):
    """Base of the optimizers whose CPU step runs in zero-optim's C++ kernels.

    Subclasses name their state tensors in ``state_keys`` and implement :meth:`_launch`.
    """

    #: Names of the per-param state tensors, in the order the kernel takes them.
    state_keys: ClassVar[tuple[str, ...]] = ()
    #: Whether non-CPU params are accepted (the Fused* classes update them with torch's
    #: kernels in :meth:`_device_step`); otherwise they are refused by the checks.
    accepts_device_params: ClassVar[bool] = False
    #: What the amsgrad error suggests instead.
    amsgrad_hint: ClassVar[str] = "pass amsgrad=False"
    #: ``zero_grad()`` sets grads to ``None`` unless told otherwise (DeepSpeed's
    #: ``set_grad_none``; the Fused* classes take it as an argument).
    set_grad_none: bool = True

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
        *,
        fp32_optimizer_states: bool = True,
        num_threads: int | None = None,
    ) -> None:
        if not isinstance(fp32_optimizer_states, bool):
            raise TypeError(f"fp32_optimizer_states must be a bool, got {fp32_optimizer_states!r}")
        self.fp32_optimizer_states = fp32_optimizer_states
        self.num_threads = resolve_num_threads(num_threads)
        super().__init__(params, defaults)

    # -- what subclasses define ------------------------------------------------------

    def _launch(
        self,
        group: dict[str, Any],
        step: int,
        codes: tuple[int, int, int, int],
        batch: KernelBatch,
        threads: int,
    ) -> None:
        raise NotImplementedError

    def _device_step(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """Update non-CPU params of one group (only when ``accepts_device_params``)."""
        raise NotImplementedError

    def _init_device_state(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        """Fresh state for a device param, as torch's fused kernels keep it."""
        state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
        for key in self.state_keys:
            state[key] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _init_state(
        self, param: torch.Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> None:
        """Fresh state in torch's layout: a float32 ``step`` tensor plus zeroed tensors."""
        state["step"] = torch.tensor(0.0)
        for key in self.state_keys:
            state[key] = torch.zeros_like(
                param, dtype=self._state_dtype(param), memory_format=torch.contiguous_format
            )

    # -- helpers --------------------------------------------------------------------------

    def _state_dtype(self, param: torch.Tensor) -> torch.dtype:
        return torch.float32 if self.fp32_optimizer_states else param.dtype

    def threads_for_step(self) -> int:
        """Threads the next step will use (explicit ``num_threads``, else the default)."""
        return self.num_threads if self.num_threads is not None else default_num_threads()

    def _check_grad(self, param: torch.Tensor, grad: torch.Tensor, name: str) -> torch.Tensor:
        if grad.is_sparse:
            raise ValueError(
                f"{name} has a sparse gradient; {type(self).__name__} supports dense gradients "
                f"only (torch.optim.SparseAdam handles sparse ones)"
            )
        if grad.device != param.device:
            raise ValueError(
                f"{name}'s gradient is on {grad.device} but the param is on {param.device}"
            )
        allowed = {param.dtype, torch.float32}
        if param.dtype == torch.float32:
            allowed |= {torch.bfloat16, torch.float16}
        if grad.dtype not in allowed:
            raise TypeError(
                f"{name} is {param.dtype} but its gradient is {grad.dtype}; gradients must be "
                f"float32 or the param's dtype"
            )
        if grad.shape != param.shape:
            raise ValueError(
                f"{name}'s gradient has shape {tuple(grad.shape)}, param {tuple(param.shape)}"
            )
        # Grads are only read, so a strided one can be copied rather than refused.
        return grad if grad.is_contiguous() else grad.contiguous()

    def _check_state(self, param: torch.Tensor, state: dict[str, Any], name: str) -> None:
        for key in self.state_keys:
            value = state[key]
            check_buffer(value, param, f"state[{key!r}] of {name}")
            if value.dtype not in (torch.float32, param.dtype):
                expected = " or ".join(sorted({str(torch.float32), str(param.dtype)}))
                raise TypeError(f"state[{key!r}] of {name} is {value.dtype}; expected {expected}")
            if any(value.dtype != state[k].dtype for k in self.state_keys):
                raise TypeError(f"the states of {name} do not share one dtype")

    def _plan(self, copies: Sequence[Sequence[torch.Tensor]] | None) -> list[list[_Planned]]:
        """Check everything a step will touch. See [Note: a step is all-or-nothing]."""
        if copies is not None and len(copies) != len(self.param_groups):
            raise ValueError(
                f"fp16_param_groups has {len(copies)} groups, the optimizer has "
                f"{len(self.param_groups)}"
            )
        plan: list[list[_Planned]] = []
        for gi, group in enumerate(self.param_groups):
            group_copies = None if copies is None else list(copies[gi])
            if group_copies is not None and len(group_copies) != len(group["params"]):
                raise ValueError(
                    f"fp16_param_groups[{gi}] has {len(group_copies)} tensors, param group {gi} "
                    f"has {len(group['params'])}"
                )
            planned = []
            for pi, param in enumerate(group["params"]):
                if param.grad is None:
                    continue
                name = f"param {pi} of group {gi}"
                check_buffer(param, param, name)
                dtype_code(param.dtype, name)
                grad = self._check_grad(param, param.grad, name)
                copy = None if group_copies is None else group_copies[pi]
                if copy is not None:
                    check_buffer(copy, param, f"fp16_param_groups[{gi}][{pi}]")
                    if param.dtype != torch.float32 or copy.dtype not in (
                        torch.bfloat16,
                        torch.float16,
                    ):
                        raise TypeError(
                            f"fp16_param_groups[{gi}][{pi}] must be bf16/fp16 and its param fp32; "
                            f"got {copy.dtype} for a {param.dtype} param"
                        )
                state = self.state[param]
                if state:
                    self._check_state(param, state, name)
                planned.append(_Planned(param, grad, copy))
            plan.append(planned)
        return plan

    @torch.no_grad()
    def step(
        self,
        closure: Callable[[], Any] | None = None,
        fp16_param_groups: Sequence[Sequence[torch.Tensor]] | None = None,
    ) -> Any:
        """One optimizer step over every param that has a gradient.

        Args:
            closure: re-evaluates the model and returns the loss (as in torch).
            fp16_param_groups: optional bf16/fp16 tensors, one list per param group matching
                its params, that receive the updated fp32 params in the same sweep over memory
                (mixed precision without a second pass).

        Returns:
            The closure's loss, or ``None``.

        Raises:
            ValueError, TypeError: a param, grad, state or copy the kernel cannot use (named
                in the message); nothing has been updated.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        device_groups = self._take_device_params(fp16_param_groups)
        try:
            plan = self._plan(fp16_param_groups)
        finally:
            for params in device_groups:
                for p, grad in params:
                    p.grad = grad
        threads = self.threads_for_step()
        for group, planned in zip(self.param_groups, plan):
            batches: dict[tuple[int, int, int, int, int], KernelBatch] = {}
            for item in planned:
                state = self.state[item.param]
                if not state:
                    self._init_state(item.param, state, group)
                state["step"] += 1
                step = int(state["step"].item())
                codes = (
                    dtype_code(item.param.dtype, "param"),
                    dtype_code(item.grad.dtype, "grad"),
                    dtype_code(state[self.state_keys[0]].dtype, "state"),
                    NO_COPY if item.copy is None else dtype_code(item.copy.dtype, "copy"),
                )
                batch = batches.setdefault(
                    (*codes, step), KernelBatch(states=[[] for _ in self.state_keys])
                )
                batch.params.append(item.param)
                batch.grads.append(item.grad)
                for column, key in zip(batch.states, self.state_keys):
                    column.append(state[key])
                batch.copies.append(item.copy)
            for (*codes, step), batch in batches.items():
                self._launch(group, step, tuple(codes), batch, threads)
        for group, params in zip(self.param_groups, device_groups):
            if params:
                self._device_step(group, [p for p, _ in params])
        return loss

    def _take_device_params(
        self, fp16_param_groups: Sequence[Sequence[torch.Tensor]] | None
    ) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Detach the grads of device params (so the CPU checks skip them) and return them.

        The caller puts the grads back once the CPU checks passed; device params are then
        updated after the CPU ones, so a refused step moves nothing anywhere.
        """
        taken: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in self.param_groups]
        if not self.accepts_device_params:
            return taken
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.grad is None or p.device.type == "cpu":
                    continue
                if p.grad.is_sparse:
                    raise ValueError(
                        f"param {pi} of group {gi} has a sparse gradient; {type(self).__name__} "
                        f"supports dense gradients only"
                    )
                if fp16_param_groups is not None:
                    raise ValueError("fp16_param_groups is only supported for CPU params")
                taken[gi].append((p, p.grad))
        for params in taken:
            for p, _ in params:
                p.grad = None
        return taken

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict (ours or torch's for the same math), keeping our state dtypes.

        torch casts loaded floating-point states to the param's dtype; for bf16/fp16 params
        with fp32 states that would round the states, so they are re-read from
        ``state_dict`` at full precision. Group keys this optimizer needs but the state dict
        lacks (e.g. a torch checkpoint has no ``bias_correction``) take the constructor's
        values.
        """
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for index, saved in state_dict.get("state", {}).items():
            param = params[index]
            state = self.state[param]
            on_cpu = param.device.type == "cpu"
            # Device params run torch's kernels, which keep states in the param's dtype and
            # the step on the param's device; CPU params run ours (see _init_state).
            dtype = self._state_dtype(param) if on_cpu else param.dtype
            for key in self.state_keys:
                if key in saved:
                    state[key] = (
                        saved[key]
                        .detach()
                        .to(device=param.device, dtype=dtype, copy=True)
                        .contiguous()
                    )
            if "step" in saved:
                state["step"] = torch.tensor(
                    float(saved["step"]),
                    dtype=torch.float32,
                    device=None if on_cpu else param.device,
                )
        for group in self.param_groups:
            self._complete_group(group)

    def _complete_group(self, group: dict[str, Any]) -> None:
        """Fill keys a loaded group lacks from the defaults, and refuse options we lack."""
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        refuse_amsgrad(group.get("amsgrad", False), type(self).__name__, self.amsgrad_hint)
        if group.get("maximize", False):
            raise ValueError(f"{type(self).__name__} does not implement maximize=True")

    def zero_grad(self, set_to_none: bool | None = None) -> None:
        """Clear grads; ``set_to_none`` defaults to ``set_grad_none`` (True unless changed)."""
        super().zero_grad(set_to_none=self.set_grad_none if set_to_none is None else set_to_none)

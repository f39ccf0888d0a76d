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

[Note: checks at a per-tensor cost torch's fused step has]
The checks run on every step (a user may swap a grad or a state between steps), so for a
model of many small tensors their cost is the step's cost. The common case, a param with
state and everything dense, contiguous, CPU and of one shape, is therefore accepted by one
tight test per param (``_passes_fast_checks``); only what fails it goes through the detailed
checks that name the problem.

[Note: step counters as views of one buffer]
torch's layout keeps each param's ``step`` as a float32 scalar tensor, and a tensor op costs
microseconds, so counting steps one tensor at a time costs more than the math of a small
tensor. The counters of one group's stepped params are therefore 0-dim views of one float32
buffer. They remain ordinary tensors to everyone else (state dicts, deepcopy, ``torch.save``);
when the set changes (a param's first step, a loaded state dict, a counter replaced by the
user) the buffer is rebuilt from the current values before the increment, so no count is
lost. The increment itself goes through a ctypes float array over the buffer's memory rather
than a torch op: a step runs right after backward or after another sweep over memory has
evicted the caches, and a cold torch dispatch (``add_`` + ``tolist``) measured ~165 µs there,
the ctypes read-modify-write ~30 µs; at 16M params that is 1% of the step.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ._native import DTYPE_CODES, NO_COPY, check_buffer, dtype_code
from ._threads import default_num_threads, resolve_num_threads
from ._validate import refuse_amsgrad

__all__ = ["CPUOptimizer", "KernelBatch"]

#: Gradient dtypes the kernels take for each param dtype they support: the param's own or
#: fp32, and for fp32 params also bf16/fp16 (widened as they are read).
GRAD_DTYPES: dict[torch.dtype, frozenset[torch.dtype]] = {
    torch.float32: frozenset({torch.float32, torch.bfloat16, torch.float16}),
    torch.bfloat16: frozenset({torch.bfloat16, torch.float32}),
    torch.float16: frozenset({torch.float16, torch.float32}),
}


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
            "params": [p.data_ptr() for p in self.params],
            "grads": [g.data_ptr() for g in self.grads],
            "states": [[s.data_ptr() for s in column] for column in self.states],
            "copies": [0 if c is None else c.data_ptr() for c in self.copies],
            "numels": [p.numel() for p in self.params],
        }


@dataclass(slots=True)
class _Planned:
    param: torch.Tensor
    grad: torch.Tensor
    copy: torch.Tensor | None
    #: ``self.state[param]`` when it exists (looked up once: a tensor's hash is a
    #: Python-level call); ``None`` until the step creates it.
    state: dict[str, Any] | None


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
        #: id(param group) -> (buffer, its 0-dim views, which are the states' ``step``s, and
        #: the buffer's memory as a ctypes float array).
        self._step_views: dict[int, tuple[torch.Tensor, list[torch.Tensor], Any]] = {}
        super().__init__(params, defaults)

    def __getstate__(self) -> dict[str, Any]:
        # torch keeps only defaults, state and param_groups; a deepcopy or pickle of a CPU
        # optimizer must keep its own settings too.
        state = super().__getstate__()
        for name in ("fp32_optimizer_states", "num_threads", "set_grad_none"):
            state[name] = getattr(self, name)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._step_views = {}  # keyed by id(group): a copy's groups are new objects

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
        if grad.dtype not in GRAD_DTYPES[param.dtype]:
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

    def _passes_fast_checks(
        self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any] | None
    ) -> bool:
        """The common case in one pass: a param with state whose param, grad and states are
        all dense, contiguous CPU tensors of one shape and kernel-supported dtypes.

        False sends the param through the detailed checks, which either accept it (e.g. a
        strided grad is copied) or raise naming what is wrong; so this only has to be exact
        in what it accepts. See [Note: checks at a per-tensor cost torch's fused step has].
        """
        if not state:
            return False
        states = [state.get(key) for key in self.state_keys]
        shape, param_dtype = param.shape, param.dtype
        if grad.dtype not in GRAD_DTYPES.get(param_dtype, ()):
            return False
        state_dtype = None
        for value in states:
            if not isinstance(value, torch.Tensor):
                return False
            if state_dtype is None:
                state_dtype = value.dtype
                if state_dtype is not torch.float32 and state_dtype is not param_dtype:
                    return False
            elif value.dtype is not state_dtype:
                return False
        for tensor in (param, grad, *states):
            if not (
                tensor.is_cpu
                and tensor.layout is torch.strided
                and tensor.is_contiguous()
                and tensor.shape == shape
            ):
                return False
        return True

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
                grad = param.grad
                if grad is None:
                    continue
                state = self.state.get(param)  # not [param]: a refused step adds no entry
                if group_copies is None and self._passes_fast_checks(param, grad, state):
                    planned.append(_Planned(param, grad, None, state))
                    continue
                name = f"param {pi} of group {gi}"
                check_buffer(param, param, name)
                dtype_code(param.dtype, name)
                grad = self._check_grad(param, grad, name)
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
                if state:
                    self._check_state(param, state, name)
                planned.append(_Planned(param, grad, copy, state))
            plan.append(planned)
        return plan

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
        # Unlike torch's optimizers this is not run under torch.no_grad() as a whole: the CPU
        # path updates params in C++, out of autograd's sight, and its torch ops (zeroed
        # states, step counters) touch no tensor that requires grad, except a strided grad
        # that itself requires grad: its contiguous copy is then recorded by autograd, read
        # by the kernel and dropped (tests/test_grad_mode.py). Only the device path runs
        # torch ops on params. Entering no_grad costs ~80 µs when the step starts with cold
        # caches (after backward), 0.7% of a 16M-param step.
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
            if not planned:
                continue
            for item in planned:
                if not item.state:
                    item.state = self.state[item.param]
                    self._init_state(item.param, item.state, group)
            steps = self._advance_steps(group, planned)
            batches: dict[tuple[int, int, int, int, int], KernelBatch] = {}
            first_state = self.state_keys[0]
            for item, step in zip(planned, steps):
                state = item.state
                key = (
                    DTYPE_CODES[item.param.dtype],
                    DTYPE_CODES[item.grad.dtype],
                    DTYPE_CODES[state[first_state].dtype],
                    NO_COPY if item.copy is None else DTYPE_CODES[item.copy.dtype],
                    step,
                )
                batch = batches.get(key)
                if batch is None:
                    batch = batches[key] = KernelBatch(states=[[] for _ in self.state_keys])
                batch.params.append(item.param)
                batch.grads.append(item.grad)
                for column, name in zip(batch.states, self.state_keys):
                    column.append(state[name])
                batch.copies.append(item.copy)
            for (*codes, step), batch in batches.items():
                self._launch(group, step, tuple(codes), batch, threads)
        if any(device_groups):
            with torch.no_grad():
                for group, params in zip(self.param_groups, device_groups):
                    if params:
                        self._device_step(group, [p for p, _ in params])
        return loss

    def _advance_steps(self, group: dict[str, Any], planned: list[_Planned]) -> list[int]:
        """Add one to each planned param's ``step`` and return the new values.

        See [Note: step counters as views of one buffer].
        """
        counters = [item.state["step"] for item in planned]
        cached = self._step_views.get(id(group))
        if (
            cached is None
            or len(cached[1]) != len(counters)
            or not all(a is b for a, b in zip(cached[1], counters))
        ):
            buffer = torch.stack(
                [c.detach().to("cpu", torch.float32).reshape(()) for c in counters]
            )
            views = list(buffer.unbind())
            for item, view in zip(planned, views):
                item.state["step"] = view
            memory = (ctypes.c_float * len(views)).from_address(buffer.data_ptr())
            cached = self._step_views[id(group)] = (buffer, views, memory)
        memory = cached[2]
        memory[:] = [count + 1.0 for count in memory]  # stored as float32, as torch's add_
        return [int(count) for count in memory]

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

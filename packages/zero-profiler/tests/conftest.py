"""Helpers shared by the zero-profiler tests."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from zero_profiler import FlopsProfiler

# The test machines are small and shared: one intra-op thread keeps timings steady and the
# suite fast (two threads spinning against other work are slower than one).
torch.set_num_threads(1)


def count(fn, *args: Any, backward: bool = False) -> FlopsProfiler:
    """Run ``fn(*args)`` as the forward of a one-off module under a FlopsProfiler (and its
    backward on the output's sum when ``backward``); return the stopped profiler."""

    class Call(nn.Module):
        def forward(self, *a):
            return fn(*a)

    model = Call()
    prof = FlopsProfiler(model)
    prof.start_profile()
    try:
        out = model(*args)
        if backward:
            out.sum().backward()
    finally:
        prof.stop_profile()
    return prof


def flop_counter_total(fn, *args: Any) -> int:
    """torch.utils.flop_counter.FlopCounterMode's total for ``fn(*args)``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


def global_hook_counts() -> tuple[int, ...]:
    """How many process-wide module hooks are registered (the profiler must leave none)."""
    m = torch.nn.modules.module
    return (
        len(m._global_forward_pre_hooks),
        len(m._global_forward_hooks),
        len(m._global_forward_hooks_always_called),
        len(m._global_backward_hooks),
        len(m._global_backward_pre_hooks),
    )


def model_fingerprint(model: nn.Module) -> list[Any]:
    """Everything the profiler could have left on a model: each module's attribute names and
    values (by identity), hook dicts, parameter/buffer values and grads, training flags."""
    out: list[Any] = [global_hook_counts(), torch._C._len_torch_dispatch_stack()]
    for name, module in model.named_modules():
        attrs = {k: id(v) for k, v in vars(module).items() if not k.endswith("hooks")}
        hooks = {k: dict(v) for k, v in vars(module).items() if k.endswith("hooks")}
        out.append((name, type(module), sorted(attrs.items()), hooks, module.training))
        out.append(sorted(type(module).__dict__))
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        out.append((name, t.detach().clone(), None if t.grad is None else t.grad.clone()))
    return out


def assert_same_fingerprint(before: list[Any], after: list[Any]) -> None:
    assert len(before) == len(after)
    for a, b in zip(before, after):
        if isinstance(a, tuple) and len(a) == 3 and isinstance(a[1], torch.Tensor):
            assert a[0] == b[0]
            assert torch.equal(a[1], b[1]), a[0]
            assert (a[2] is None) == (b[2] is None), a[0]
            if a[2] is not None:
                assert torch.equal(a[2], b[2]), a[0]
        else:
            assert a == b


class MLP(nn.Module):
    """fc1 -> relu -> fc2, with a functional scale in the parent's own forward."""

    def __init__(self, d_in: int = 8, hidden: int = 16, d_out: int = 4, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden, bias=bias)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, d_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x))) * 2.0


@pytest.fixture
def mlp() -> MLP:
    torch.manual_seed(0)
    return MLP()

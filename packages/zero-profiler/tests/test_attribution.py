"""Which module is charged for what, forward and backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from conftest import MLP
from zero_profiler import FlopsProfiler, get_model_profile

N = 5  # batch


def _stats(prof: FlopsProfiler, module: nn.Module):
    return prof._session.stats[id(module)]


def test_forward_is_charged_inclusively(mlp: MLP) -> None:
    prof = FlopsProfiler(mlp)
    prof.start_profile()
    mlp(torch.randn(N, 8))
    prof.stop_profile()
    fc1 = 2 * N * 8 * 16 + N * 16
    relu = N * 16
    fc2 = 2 * N * 16 * 4 + N * 4
    scale = N * 4  # the parent's own `* 2.0`
    assert _stats(prof, mlp.fc1).fwd_flops == fc1
    assert _stats(prof, mlp.act).fwd_flops == relu
    assert _stats(prof, mlp.fc2).fwd_flops == fc2
    assert prof.get_total_flops() == fc1 + relu + fc2 + scale
    assert prof.get_total_macs() == N * 8 * 16 + N * 16 * 4
    assert prof.get_total_params() == 8 * 16 + 16 + 16 * 4 + 4


def test_backward_is_measured_and_charged_to_modules(mlp: MLP) -> None:
    x = torch.randn(N, 8)  # no grad: fc1 computes only its weight and bias gradients
    prof = FlopsProfiler(mlp)
    prof.start_profile()
    mlp(x).sum().backward()
    prof.stop_profile()
    fc1 = 2 * N * 8 * 16 + N * 16  # grad weight (mm) + grad bias (sum)
    relu = N * 16  # threshold_backward
    fc2 = 2 * (2 * N * 16 * 4) + N * 4  # grad input + grad weight, grad bias
    scale = N * 4  # MulBackward of the parent's `* 2.0`
    assert _stats(prof, mlp.fc1).bwd_flops == fc1
    assert _stats(prof, mlp.act).bwd_flops == relu
    assert _stats(prof, mlp.fc2).bwd_flops == fc2
    assert prof.get_total_backward_flops() == fc1 + relu + fc2 + scale
    assert prof.get_total_backward_macs() == N * 8 * 16 + 2 * N * 16 * 4
    # the `.sum()` loss ran outside the model: kept out of the model's totals
    assert prof._session.outside_fwd_flops == N * 4
    # torch's counter agrees on the backward products (it counts nothing else)
    with FlopCounterMode(display=False) as counter:
        mlp(x).sum().backward()
    fwd_products = 2 * (N * 8 * 16 + N * 16 * 4)
    assert counter.get_total_flops() - fwd_products == 2 * prof.get_total_backward_macs()


def test_gradient_accumulation_is_counted_in_backward(mlp: MLP) -> None:
    """A second backward adds into existing .grad: 1 flop per parameter element, charged to
    the module owning the parameter."""
    mlp(torch.randn(N, 8)).sum().backward()
    prof = FlopsProfiler(mlp)
    prof.start_profile()
    mlp(torch.randn(N, 8)).sum().backward()
    prof.stop_profile()
    fc1_params = 8 * 16 + 16
    assert _stats(prof, mlp.fc1).bwd_flops == 2 * N * 8 * 16 + N * 16 + fc1_params


def test_shared_input_gradients_are_accumulated() -> None:
    """Two consumers of one tensor: the engine adds their gradients (1 flop per element)."""

    class Fork(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4, bias=False)
            self.b = nn.Linear(4, 4, bias=False)

        def forward(self, x):
            h = x * 1.0
            return self.a(h) + self.b(h)

    model = Fork()
    prof = FlopsProfiler(model)
    prof.start_profile()
    model(torch.randn(3, 4, requires_grad=True)).sum().backward()
    prof.stop_profile()
    per_linear = 2 * (2 * 3 * 4 * 4)  # grad input + grad weight
    add_backward = 0  # AddBackward passes gradients through
    accumulate_h = 3 * 4  # the two gradients of h are summed
    mul_backward = 3 * 4
    expected = 2 * per_linear + add_backward + accumulate_h + mul_backward
    assert prof.get_total_backward_flops() == expected


def test_conv_net_backward() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    prof = FlopsProfiler(conv)
    prof.start_profile()
    conv(x).sum().backward()
    prof.stop_profile()
    macs = 2 * 8 * 6 * 6 * 3 * 3 * 3
    # grad input and grad weight are each one convolution's worth; grad bias sums grad_out
    assert prof.get_total_backward_macs() == 2 * macs
    assert prof.get_total_backward_flops() == 4 * macs + 2 * 8 * 6 * 6


def test_train_mode_reports_measured_backward(mlp: MLP, capsys) -> None:
    flops, _, _ = get_model_profile(
        mlp, input_shape=(N, 8), mode="train", as_string=False, warm_up=0
    )
    assert flops == 2 * N * 8 * 16 + N * 16 + N * 16 + 2 * N * 16 * 4 + N * 4 + N * 4
    text = capsys.readouterr().out
    assert "bwd flops (measured):" in text
    assert "bwd latency:" in text and "not measured" not in text.split("bwd latency:")[1][:20]
    assert all(p.grad is None for p in mlp.parameters())  # grads restored


def test_functional_outside_any_submodule_counts_in_parent_only() -> None:
    class Parent(nn.Module):
        def __init__(self):
            super().__init__()
            self.child = nn.Linear(4, 4, bias=False)
            self.w = nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return self.child(x) @ self.w

    model = Parent()
    prof = FlopsProfiler(model)
    prof.start_profile()
    model(torch.randn(2, 4))
    prof.stop_profile()
    assert _stats(prof, model.child).fwd_macs == 2 * 4 * 4
    assert prof.get_total_macs() == 2 * (2 * 4 * 4)


def test_ignored_modules_are_not_counted(mlp: MLP) -> None:
    prof = FlopsProfiler(mlp)
    prof.start_profile(ignore_list=[nn.ReLU])
    mlp(torch.randn(N, 8, requires_grad=True)).sum().backward()
    prof.stop_profile()
    assert _stats(prof, mlp.act).fwd_flops == 0
    assert _stats(prof, mlp.act).bwd_flops == 0
    assert prof.get_total_flops() == 2 * N * 8 * 16 + N * 16 + 2 * N * 16 * 4 + N * 4 + N * 4


def test_repeated_runs_give_identical_counts(mlp: MLP) -> None:
    results = {
        get_model_profile(mlp, input_shape=(N, 8), print_profile=False, as_string=False)
        for _ in range(3)
    }
    assert len(results) == 1


@pytest.mark.parametrize("calls", [1, 3])
def test_counts_accumulate_over_calls_between_start_and_stop(mlp: MLP, calls: int) -> None:
    prof = FlopsProfiler(mlp)
    prof.start_profile()
    for _ in range(calls):
        mlp(torch.randn(N, 8))
    prof.stop_profile()
    one = 2 * N * 8 * 16 + N * 16 + N * 16 + 2 * N * 16 * 4 + N * 4 + N * 4
    assert prof.get_total_flops() == calls * one
    assert _stats(prof, mlp.fc1).calls == calls
    prof.reset_profile()
    assert prof.get_total_flops() == 0


def test_train_mode_warm_up_does_not_leak_into_the_profiled_backward(mlp: MLP, capsys) -> None:
    """Warm-up backward passes leave .grad behind; the profiled pass must not also count
    adding its gradients into them."""
    lines = []
    for warm_up in (0, 2):
        get_model_profile(mlp, input_shape=(N, 8), mode="train", warm_up=warm_up)
        out = capsys.readouterr().out.splitlines()
        lines.append(next(line for line in out if line.startswith("bwd flops (measured)")))
    assert lines[0] == lines[1]

"""CPULion and FusedLion against a plain Lion written with torch ops."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from zero_optim._lion import CPULion, FusedLion, torch_lion_step
from zero_optim._native import cpu_features

# Tests taking the `isa` fixture (conftest.py) run once per kernel set this CPU supports.

# Odd lengths, so every vector width leaves a scalar tail.
SIZES = (1, 7, 1023, 4099)
STEPS = 100
# [Note: comparing Lion step by step]
# Lion's update is sign(beta1 * m + (1 - beta1) * g). Where that sum is within rounding error
# of zero, its sign depends on whether the kernel fused the multiply-add (ISAs with FMA do),
# so a rare element moves by -lr in one implementation and +lr in the other; over many steps
# such a flip would persist. The tests therefore check every step from the kernel's own state
# before that step: elements whose sign is decided by rounding ("ambiguous") may differ by
# 2 * lr, all others must agree to rounding, and no error accumulates across steps.
# fp32, one step: one fused multiply-add against two roundings, a few fp32 ulps.
STEP_ATOL = 1e-6
STEP_RTOL = 1e-6
# Low-precision params: both sides compute in fp32 and round once; an fp32 ulp of difference
# can straddle a rounding boundary, so allow one low-precision ulp (finfo.eps).
LOWP_ULPS = 1
# A sum is "ambiguous" when it is this many fp32 ulps (of its terms) from zero or closer.
AMBIGUOUS_ULPS = 4


def make_params(dtype: torch.dtype = torch.float32, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=gen).to(dtype) for n in SIZES]


def make_grads(steps: int, dtype: torch.dtype = torch.float32, seed: int = 1, sizes=SIZES):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(n, generator=gen).to(dtype) for n in sizes] for _ in range(steps)]


def run(opt: torch.optim.Optimizer, params: list[torch.Tensor], grads) -> None:
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()


def reference_lion_step(p, g, m, *, lr, betas, weight_decay):
    """One plain Lion step in fp32 on float copies; returns (param, exp_avg) in their dtypes."""
    beta1, beta2 = betas
    p32, g32, m32 = p.float(), g.float(), m.float()
    update = torch.sign(beta1 * m32 + (1 - beta1) * g32)
    p32 = p32 * (1 - lr * weight_decay) - lr * update
    return p32.to(p.dtype), (beta2 * m32 + (1 - beta2) * g32).to(m.dtype)


def torch_path_step(p, g, m, **hyper):
    """One step of FusedLion's device path (torch_lion_step) on clones of CPU tensors."""
    p, m = p.clone(), m.clone()
    torch_lion_step([p], [g], [m], dict(hyper))
    return p, m


def ambiguous_signs(g, m, betas) -> torch.Tensor:
    """Elements whose update sign rounding decides. See [Note: comparing Lion step by step]."""
    beta1 = betas[0]
    a, b = beta1 * m.float(), (1 - beta1) * g.float()
    slack = AMBIGUOUS_ULPS * torch.finfo(torch.float32).eps * (a.abs() + b.abs())
    return (a + b).abs() < slack


def close(actual, expected, dtype) -> None:
    if dtype == torch.float32:
        atol = rtol = STEP_ATOL
    else:
        atol = rtol = LOWP_ULPS * torch.finfo(dtype).eps
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)


def run_checked(opt, params, grads, hyper, reference=reference_lion_step) -> int:
    """Run ``opt`` and check every step against ``reference``; returns ambiguous elements."""
    ambiguous_total = 0
    for step_grads in grads:
        before = []
        for p, g in zip(params, step_grads):
            if p in opt.state:
                m = opt.state[p]["exp_avg"].clone()
            else:
                m = torch.zeros(p.shape, dtype=opt._state_dtype(p), device=p.device)
            before.append((p.detach().clone(), g, m))
            p.grad = g.clone()
        opt.step()
        for p, (p0, g, m0) in zip(params, before):
            want_p, want_m = reference(p0, g, m0, **hyper)
            ambiguous = ambiguous_signs(g, m0, hyper["betas"])
            ambiguous_total += int(ambiguous.sum())
            sure = ~ambiguous
            close(p[sure], want_p[sure], p.dtype)
            diff = (p[ambiguous].float() - want_p[ambiguous].float()).abs()
            assert bool((diff <= 2 * hyper["lr"] + 1e-2).all())
            close(opt.state[p]["exp_avg"], want_m, want_m.dtype)
    return ambiguous_total


HYPER = [
    pytest.param({"lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.0}, id="plain"),
    pytest.param({"lr": 1e-3, "betas": (0.95, 0.98), "weight_decay": 0.1}, id="weight_decay"),
]


@pytest.mark.parametrize("hyper", HYPER)
def test_fp32_matches_reference(isa: str, hyper: dict) -> None:
    assert cpu_features()["isa"] == isa
    params = make_params()
    opt = CPULion(params, **hyper)
    run_checked(opt, params, make_grads(STEPS), hyper)
    for p in params:
        assert opt.state[p]["step"].dtype == torch.float32
        assert opt.state[p]["step"].item() == STEPS


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_low_precision_params_fp32_states(
    isa: str, dtype: torch.dtype, weight_decay: float
) -> None:
    # lr large enough to move low-precision params of magnitude ~1 by whole ulps.
    hyper = {"lr": 1e-2, "betas": (0.9, 0.99), "weight_decay": weight_decay}
    params = make_params(dtype)
    start = [p.clone() for p in params]
    opt = CPULion(params, **hyper)
    run_checked(opt, params, make_grads(STEPS, dtype), hyper)
    for p, s in zip(params, start):
        assert p.dtype == dtype
        assert opt.state[p]["exp_avg"].dtype == torch.float32
        assert not torch.equal(p, s)


def test_low_precision_states(isa: str) -> None:
    hyper = {"lr": 1e-2, "betas": (0.9, 0.99), "weight_decay": 0.0}
    params = make_params(torch.bfloat16)
    opt = CPULion(params, fp32_optimizer_states=False, **hyper)
    run_checked(opt, params, make_grads(30, torch.bfloat16), hyper)
    for p in params:
        assert opt.state[p]["exp_avg"].dtype == torch.bfloat16


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_sign_of_zero_is_zero(isa: str, weight_decay: float) -> None:
    # Zero momentum and zero grad: update = sign(0) = 0, so only the decay moves the param.
    lr = 0.1
    params = make_params()
    start = [p.clone() for p in params]
    opt = CPULion(params, lr=lr, weight_decay=weight_decay)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, s in zip(params, start):
        assert torch.equal(p, s * (1 - lr * weight_decay))
        assert torch.equal(opt.state[p]["exp_avg"], torch.zeros_like(p))


def test_sign_of_zero_elementwise(isa: str) -> None:
    # Zero grads at even positions: those elements stay put, the others move by exactly lr.
    lr = 0.125
    params = make_params()
    start = [p.clone() for p in params]
    grads = []
    for p in params:
        g = torch.randn_like(p)
        g[::2] = 0.0
        grads.append(g)
        p.grad = g.clone()
    CPULion(params, lr=lr).step()
    for p, s, g in zip(params, start, grads):
        assert torch.equal(p, s - lr * torch.sign(g))
        assert torch.equal(p[::2], s[::2])


def test_threads_split_large_tensor(isa: str) -> None:
    # Big enough for the kernel to split it across threads at unaligned element counts.
    n = 3 * (1 << 15) + 5
    gen = torch.Generator().manual_seed(3)
    start = torch.randn(n, generator=gen)
    grads = [[torch.randn(n, generator=gen)] for _ in range(5)]
    hyper = {"lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.1}
    one, three = [start.clone()], [start.clone()]
    run(CPULion(one, num_threads=1, **hyper), one, grads)
    run_checked(CPULion(three, num_threads=3, **hyper), three, grads, hyper)
    assert torch.equal(one[0], three[0])


def test_low_precision_copy(isa: str) -> None:
    params = make_params()
    copies = [torch.empty(p.shape, dtype=torch.float16) for p in params]
    opt = CPULion(params, lr=1e-2)
    for p, g in zip(params, make_grads(1)[0]):
        p.grad = g
    opt.step(fp16_param_groups=[copies])
    for p, c in zip(params, copies):
        assert torch.equal(c, p.to(torch.float16))


@pytest.mark.parametrize("hyper", HYPER)
def test_torch_lion_step_matches_kernel(isa: str, hyper: dict) -> None:
    # FusedLion's device path, run on CPU tensors so it is tested without a GPU.
    params = make_params()
    opt = CPULion(params, **hyper)
    run_checked(opt, params, make_grads(STEPS), hyper, reference=torch_path_step)


def test_torch_lion_step_without_params() -> None:
    torch_lion_step([], [], [], {"lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.0})


def test_fused_lion_on_cpu_equals_cpu_lion(isa: str) -> None:
    grads = make_grads(20)
    fused_p, cpu_p = make_params(), make_params()
    hyper = {"lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.1}
    run(FusedLion(fused_p, **hyper), fused_p, grads)
    run(CPULion(cpu_p, **hyper), cpu_p, grads)
    for p, q in zip(fused_p, cpu_p):
        assert torch.equal(p, q)


def test_fused_lion_routes_non_cpu_params_to_torch_ops(isa: str) -> None:
    # A meta tensor stands in for a CUDA one: it must take the torch-ops path (the CPU
    # planner would refuse it), while the CPU params still go through the kernel.
    cpu_p = make_params()
    device_p = torch.zeros(5, device="meta")
    hyper = {"lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.1}
    opt = FusedLion([*cpu_p, device_p], **hyper)
    device_p.grad = torch.zeros(5, device="meta")
    run_checked(opt, cpu_p, make_grads(3), hyper)
    state = opt.state[device_p]
    assert state["exp_avg"].device.type == "meta"
    assert state["step"].device.type == "meta"
    assert device_p.grad is not None  # the hidden grad is restored
    with pytest.raises(ValueError, match="fp16_param_groups"):
        opt.step(fp16_param_groups=[[None] * (len(cpu_p) + 1)])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_lion_cuda_matches_cpu() -> None:
    hyper = {"lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.1}
    params = [p.cuda() for p in make_params()]
    opt = FusedLion(params, **hyper)
    run_checked(opt, params, [[g.cuda() for g in gs] for gs in make_grads(20)], hyper)
    for p in params:
        assert opt.state[p]["exp_avg"].is_cuda


def test_fused_lion_zero_grad() -> None:
    p = torch.zeros(3)
    opt = FusedLion([p])
    p.grad = torch.ones(3)
    opt.zero_grad()
    assert p.grad is None
    opt = FusedLion([p], set_grad_none=False)
    p.grad = torch.ones(3)
    opt.zero_grad()
    assert torch.equal(p.grad, torch.zeros(3))


@pytest.mark.parametrize("cls", [CPULion, FusedLion])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip_is_exact(isa: str, cls: type, dtype: torch.dtype) -> None:
    grads = make_grads(20, dtype)
    hyper = {"lr": 1e-2, "betas": (0.9, 0.99), "weight_decay": 0.1}
    first_p = make_params(dtype)
    first = cls(first_p, **hyper)
    run(first, first_p, grads[:10])

    second_p = [p.detach().clone() for p in first_p]
    second = cls(second_p)  # constructor defaults differ: the checkpoint must win
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    assert second.param_groups[0]["lr"] == hyper["lr"]
    for p in second_p:  # fp32 states survive loading next to bf16 params
        assert second.state[p]["exp_avg"].dtype == torch.float32
        assert second.state[p]["step"].item() == 10
    run(first, first_p, grads[10:])
    run(second, second_p, grads[10:])
    for p, q in zip(first_p, second_p):
        assert torch.equal(p, q)
        assert torch.equal(first.state[p]["exp_avg"], second.state[q]["exp_avg"])


@pytest.mark.parametrize("cls", [CPULion, FusedLion])
def test_params_without_grads_are_skipped(isa: str, cls: type) -> None:
    with_grad, without = make_params()[:2]
    before = without.clone()
    opt = cls([with_grad, without], lr=0.1)
    with_grad.grad = torch.ones_like(with_grad)
    opt.step()
    assert torch.equal(without, before)
    assert without not in opt.state
    assert opt.state[with_grad]["step"].item() == 1


@pytest.mark.parametrize("cls", [CPULion, FusedLion])
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lr": -1e-3}, ValueError, "lr"),
        ({"lr": math.nan}, ValueError, "lr"),
        ({"lr": math.inf}, ValueError, "lr"),
        ({"betas": (1.0, 0.99)}, ValueError, r"betas\[0\]"),
        ({"betas": (0.9, 1.0)}, ValueError, r"betas\[1\]"),
        ({"betas": (-0.1, 0.99)}, ValueError, r"betas\[0\]"),
        ({"betas": (0.9, math.nan)}, ValueError, r"betas\[1\]"),
        ({"betas": (0.9,)}, ValueError, "betas"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay"),
        ({"num_threads": -2}, ValueError, "num_threads"),
    ],
)
def test_bad_arguments(cls: type, kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        cls([torch.zeros(3)], **kwargs)

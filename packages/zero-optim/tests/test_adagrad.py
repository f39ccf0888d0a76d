"""CPUAdagrad against torch.optim.Adagrad and against an explicit low-precision reference."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from zero_optim._adagrad import CPUAdagrad
from zero_optim._native import cpu_features

# Tests taking the `isa` fixture (conftest.py) run once per kernel set this CPU supports.

# Odd lengths, so every vector width leaves a scalar tail.
SIZES = (1, 7, 1023, 4099)
STEPS = 100
# fp32 against torch.optim.Adagrad: the kernel may contract a*b+c into one fused multiply-add
# where torch rounds twice, so results differ by a few fp32 ulps, accumulated over STEPS steps.
FP32_ATOL = 1e-5
FP32_RTOL = 1e-5
# Low-precision params: the kernel and the reference both compute in fp32 and round the
# param once per step, but an fp32 difference of one ulp can land on the other side of a
# low-precision rounding boundary; allow a couple of low-precision ulps (finfo.eps) of drift.
LOWP_ULPS = 2


def make_params(dtype: torch.dtype = torch.float32, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=gen).to(dtype) for n in SIZES]


def make_grads(steps: int, dtype: torch.dtype = torch.float32, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(n, generator=gen).to(dtype) for n in SIZES] for _ in range(steps)]


def run(opt: torch.optim.Optimizer, params: list[torch.Tensor], grads) -> None:
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            if g.dtype != p.dtype:
                p.grad_dtype = None  # let torch attach a grad of another dtype (fp32)
            p.grad = g.clone()
        opt.step()


def reference_adagrad(params, grads, *, lr, eps, weight_decay, lr_decay, init, state_dtype):
    """Adagrad in fp32 on a float copy of each param, rounded to the param dtype every step."""
    sums = [torch.full(p.shape, init, dtype=state_dtype) for p in params]
    for step, step_grads in enumerate(grads, start=1):
        clr = lr / (1 + (step - 1) * lr_decay)
        for i, (p, g) in enumerate(zip(params, step_grads)):
            p32, g32 = p.float(), g.float()
            if weight_decay:
                g32 = g32 + weight_decay * p32
            acc = sums[i].float() + g32 * g32
            p32 = p32 - clr * (g32 / (acc.sqrt() + eps))
            sums[i] = acc.to(state_dtype)
            p.copy_(p32)
    return sums


def assert_close_lowp(actual: torch.Tensor, expected: torch.Tensor) -> None:
    eps = torch.finfo(expected.dtype).eps
    torch.testing.assert_close(
        actual.float(), expected.float(), atol=LOWP_ULPS * eps, rtol=LOWP_ULPS * eps
    )


CONFIGS = [
    pytest.param({}, id="plain"),
    pytest.param({"weight_decay": 0.1}, id="weight_decay"),
    pytest.param({"lr_decay": 0.01}, id="lr_decay"),
    pytest.param({"initial_accumulator_value": 0.5}, id="initial_accumulator"),
    pytest.param(
        {"weight_decay": 0.05, "lr_decay": 0.02, "initial_accumulator_value": 0.1}, id="all"
    ),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_fp32_matches_torch(isa: str, config: dict) -> None:
    assert cpu_features()["isa"] == isa
    grads = make_grads(STEPS)
    ours_p, torch_p = make_params(), make_params()
    ours = CPUAdagrad(ours_p, lr=0.05, **config)
    ref = torch.optim.Adagrad(torch_p, lr=0.05, foreach=False, **config)
    run(ours, ours_p, grads)
    run(ref, torch_p, grads)
    for p, q in zip(ours_p, torch_p):
        torch.testing.assert_close(p, q, atol=FP32_ATOL, rtol=FP32_RTOL)
    for p, q in zip(ours_p, torch_p):
        torch.testing.assert_close(
            ours.state[p]["sum"], ref.state[q]["sum"], atol=FP32_ATOL, rtol=FP32_RTOL
        )
        assert ours.state[p]["step"].dtype == torch.float32
        assert ours.state[p]["step"].item() == STEPS


def test_param_groups_match_torch(isa: str) -> None:
    grads = make_grads(20)
    ours_p, torch_p = make_params(), make_params()

    def groups(ps):
        return [
            {"params": ps[:2], "lr": 0.1, "weight_decay": 0.01},
            {"params": ps[2:], "lr": 0.02, "lr_decay": 0.05},
        ]

    ours = CPUAdagrad(groups(ours_p))
    ref = torch.optim.Adagrad(groups(torch_p), foreach=False)
    run(ours, ours_p, grads)
    run(ref, torch_p, grads)
    for p, q in zip(ours_p, torch_p):
        torch.testing.assert_close(p, q, atol=FP32_ATOL, rtol=FP32_RTOL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("grad_fp32", [False, True], ids=["grad_lowp", "grad_fp32"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_low_precision_params_fp32_states(
    isa: str, dtype: torch.dtype, grad_fp32: bool, weight_decay: float
) -> None:
    if grad_fp32 and not hasattr(torch.Tensor, "grad_dtype"):
        pytest.skip("this torch cannot attach an fp32 grad to a low-precision param")
    grads = make_grads(STEPS, torch.float32 if grad_fp32 else dtype)
    ours_p, ref_p = make_params(dtype), make_params(dtype)
    hyper = {"lr": 0.05, "eps": 1e-10, "weight_decay": weight_decay, "lr_decay": 0.01}
    ours = CPUAdagrad(ours_p, initial_accumulator_value=0.1, **hyper)
    run(ours, ours_p, grads)
    sums = reference_adagrad(ref_p, grads, init=0.1, state_dtype=torch.float32, **hyper)
    for p, q, s in zip(ours_p, ref_p, sums):
        assert p.dtype == dtype
        assert ours.state[p]["sum"].dtype == torch.float32
        assert_close_lowp(p, q)
        torch.testing.assert_close(ours.state[p]["sum"], s, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_states(isa: str, dtype: torch.dtype) -> None:
    grads = make_grads(30, dtype)
    ours_p, ref_p = make_params(dtype), make_params(dtype)
    ours = CPUAdagrad(ours_p, lr=0.05, fp32_optimizer_states=False)
    run(ours, ours_p, grads)
    sums = reference_adagrad(
        ref_p, grads, lr=0.05, eps=1e-10, weight_decay=0.0, lr_decay=0.0, init=0.0,
        state_dtype=dtype,
    )  # fmt: skip
    for p, q, s in zip(ours_p, ref_p, sums):
        assert ours.state[p]["sum"].dtype == dtype
        assert_close_lowp(p, q)
        assert_close_lowp(ours.state[p]["sum"], s)


def test_threads_split_large_tensor(isa: str) -> None:
    # Big enough for the kernel to split it across threads at unaligned element counts.
    n = 3 * (1 << 15) + 5
    gen = torch.Generator().manual_seed(3)
    start = torch.randn(n, generator=gen)
    grads = [[torch.randn(n, generator=gen)] for _ in range(5)]
    one, three, ref_p = [start.clone()], [start.clone()], [start.clone()]
    run(CPUAdagrad(one, lr=0.1, weight_decay=0.01, num_threads=1), one, grads)
    run(CPUAdagrad(three, lr=0.1, weight_decay=0.01, num_threads=3), three, grads)
    run(torch.optim.Adagrad(ref_p, lr=0.1, weight_decay=0.01, foreach=False), ref_p, grads)
    assert torch.equal(one[0], three[0])
    torch.testing.assert_close(three[0], ref_p[0], atol=FP32_ATOL, rtol=FP32_RTOL)


def test_low_precision_copy(isa: str) -> None:
    params = make_params()
    copies = [torch.empty(p.shape, dtype=torch.bfloat16) for p in params]
    opt = CPUAdagrad(params, lr=0.05)
    for p, g in zip(params, make_grads(1)[0]):
        p.grad = g
    opt.step(fp16_param_groups=[copies])
    for p, c in zip(params, copies):
        assert torch.equal(c, p.to(torch.bfloat16))


def test_load_torch_state_dict_mid_run(isa: str) -> None:
    grads = make_grads(60)
    hyper = {"lr": 0.05, "lr_decay": 0.01, "weight_decay": 0.02, "initial_accumulator_value": 0.1}
    torch_p = make_params()
    ref = torch.optim.Adagrad(torch_p, foreach=False, **hyper)
    run(ref, torch_p, grads[:30])

    ours_p = [p.detach().clone() for p in torch_p]
    ours = CPUAdagrad(ours_p)  # constructor defaults differ: the checkpoint must win
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))
    group = ours.param_groups[0]
    for key, value in hyper.items():
        assert group[key] == value
    assert group["amsgrad"] is False
    for p in ours_p:
        assert ours.state[p]["step"].item() == 30
        assert ours.state[p]["sum"].dtype == torch.float32

    run(ref, torch_p, grads[30:])
    run(ours, ours_p, grads[30:])
    for p, q in zip(ours_p, torch_p):
        torch.testing.assert_close(p, q, atol=FP32_ATOL, rtol=FP32_RTOL)


def test_our_state_dict_loads_into_torch(isa: str) -> None:
    grads = make_grads(40)
    hyper = {"lr": 0.05, "lr_decay": 0.01, "weight_decay": 0.02, "initial_accumulator_value": 0.1}
    ours_p = make_params()
    ours = CPUAdagrad(ours_p, **hyper)
    run(ours, ours_p, grads[:20])

    torch_p = [p.detach().clone() for p in ours_p]
    ref = torch.optim.Adagrad(torch_p, foreach=False)
    ref.load_state_dict(copy.deepcopy(ours.state_dict()))
    run(ours, ours_p, grads[20:])
    run(ref, torch_p, grads[20:])
    for p, q in zip(ours_p, torch_p):
        torch.testing.assert_close(p, q, atol=FP32_ATOL, rtol=FP32_RTOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip_is_exact(isa: str, dtype: torch.dtype) -> None:
    grads = make_grads(20, dtype)
    hyper = {"lr": 0.05, "lr_decay": 0.01, "weight_decay": 0.02, "initial_accumulator_value": 0.1}
    first_p = make_params(dtype)
    first = CPUAdagrad(first_p, **hyper)
    run(first, first_p, grads[:10])

    second_p = [p.detach().clone() for p in first_p]
    second = CPUAdagrad(second_p)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    for p in second_p:  # fp32 states survive loading next to bf16 params
        assert second.state[p]["sum"].dtype == torch.float32
    run(first, first_p, grads[10:])
    run(second, second_p, grads[10:])
    for p, q in zip(first_p, second_p):
        assert torch.equal(p, q)
        assert torch.equal(first.state[p]["sum"], second.state[q]["sum"])


def test_params_without_grads_are_skipped(isa: str) -> None:
    with_grad, without = make_params()[:2]
    before = without.clone()
    opt = CPUAdagrad([with_grad, without], lr=0.1, initial_accumulator_value=0.1)
    with_grad.grad = torch.ones_like(with_grad)
    opt.step()
    assert torch.equal(without, before)
    assert without not in opt.state
    assert opt.state[with_grad]["step"].item() == 1


def test_initial_accumulator_fills_state() -> None:
    p = torch.zeros(7, dtype=torch.bfloat16)
    opt = CPUAdagrad([p], initial_accumulator_value=0.25)
    p.grad = torch.zeros_like(p)
    opt.step()
    state = opt.state[p]
    assert state["sum"].dtype == torch.float32
    assert torch.equal(state["sum"], torch.full((7,), 0.25))
    assert torch.equal(p, torch.zeros(7, dtype=torch.bfloat16))  # zero grad: no movement


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"amsgrad": True}, ValueError, "amsgrad"),
        ({"lr": -0.1}, ValueError, "lr"),
        ({"lr": math.nan}, ValueError, "lr"),
        ({"eps": -1e-10}, ValueError, "eps"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay"),
        ({"lr_decay": -0.1}, ValueError, "lr_decay"),
        ({"initial_accumulator_value": -1.0}, ValueError, "initial_accumulator_value"),
        ({"lr": "0.1"}, TypeError, "lr"),
        ({"num_threads": 0}, ValueError, "num_threads"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        CPUAdagrad([torch.zeros(3)], **kwargs)


def test_loading_maximize_checkpoint_is_refused() -> None:
    p = torch.zeros(3)
    ref = torch.optim.Adagrad([p.clone()], maximize=True)
    opt = CPUAdagrad([p])
    with pytest.raises(ValueError, match="maximize"):
        opt.load_state_dict(ref.state_dict())

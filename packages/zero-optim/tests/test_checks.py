"""Bad input: every refused case names the problem, and a refused step changes nothing."""

from __future__ import annotations

import math

import pytest
import torch

from zero_optim import CPUAdagrad, CPUAdam, CPULion


def snapshot(opt):
    params = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    states = {
        id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
        for p, s in opt.state.items()
    }
    return params, states


def assert_unchanged(opt, before):
    params, states = snapshot(opt)
    assert all(torch.equal(a, b) for a, b in zip(params, before[0]))
    assert states.keys() == before[1].keys()
    for key, state in states.items():
        for name, value in state.items():
            assert torch.equal(value, before[1][key][name])


def two_param_optimizer(cls=CPUAdam):
    good = torch.nn.Parameter(torch.randn(10))
    other = torch.nn.Parameter(torch.randn(10))
    opt = cls([good, other], lr=0.1)
    good.grad, other.grad = torch.ones(10), torch.ones(10)
    opt.step()  # states exist: a refused step must not touch them either
    good.grad, other.grad = torch.ones(10), torch.ones(10)
    return opt, good, other


@pytest.mark.parametrize("cls", [CPUAdam, CPUAdagrad, CPULion])
@pytest.mark.parametrize(
    ("spoil", "error", "message"),
    [
        (
            lambda p: setattr(p, "grad", torch.ones(10).to_sparse()),
            ValueError,
            "param 1 of group 0 has a sparse gradient",
        ),
        (
            lambda p: (
                setattr(p, "grad_dtype", None),
                setattr(p, "grad", torch.ones(10, dtype=torch.float64)),
            ),
            TypeError,
            "param 1 of group 0 is torch.float32 but its gradient is torch.float64",
        ),
        (
            lambda p: (
                setattr(p, "grad_dtype", None),
                setattr(p, "grad", torch.ones(10, dtype=torch.int32)),
            ),
            TypeError,
            "gradients must be float32 or the param's dtype",
        ),
    ],
    ids=["sparse", "float64-grad", "int-grad"],
)
def test_bad_grad_refuses_whole_step(cls, spoil, error, message):
    opt, _good, other = two_param_optimizer(cls)
    before = snapshot(opt)
    spoil(other)
    with pytest.raises(error, match=message):
        opt.step()
    assert_unchanged(opt, before)  # the good param did not move either


def test_unsupported_param_dtype():
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    p.grad = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(
        TypeError, match=r"param 0 of group 0 has dtype torch\.float64; the CPU kernels support"
    ):
        CPUAdam([p]).step()


def test_non_contiguous_param_is_refused_with_the_fix():
    base = torch.randn(8, 8)
    p = torch.nn.Parameter(base.t())  # a transposed view: not contiguous
    p.grad = torch.ones(8, 8)
    opt = CPUAdam([p])
    with pytest.raises(
        ValueError, match=r"param 0 of group 0 is not contiguous.*tensor.contiguous\(\)"
    ):
        opt.step()
    assert not opt.state


def test_non_contiguous_grad_is_read_correctly():
    init = torch.randn(8, 8)
    a, b = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())
    grad = torch.randn(8, 8)
    a.grad, b.grad = grad.t().contiguous().t(), grad.clone()  # same values, a's grad strided
    assert not a.grad.is_contiguous()
    oa, ob = CPUAdam([a], lr=0.1), CPUAdam([b], lr=0.1)
    oa.step()
    ob.step()
    assert torch.equal(a, b)


def test_device_param_refused_by_cpu_optimizer():
    p = torch.nn.Parameter(torch.zeros(3, device="meta"))
    p.grad = torch.zeros(3, device="meta")
    with pytest.raises(
        ValueError, match="param 0 of group 0 is on meta; the CPU kernels need CPU tensors"
    ):
        CPUAdam([p]).step()


def test_params_without_grads_are_skipped():
    a, b = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))
    opt = CPUAdam([a, b], lr=0.1)
    a.grad = torch.ones(4)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(4)) and b not in opt.state
    assert torch.all(a < 1)


def test_fp16_param_groups_mismatches():
    opt, _, _ = two_param_optimizer()
    before = snapshot(opt)
    cases = [
        (
            [[torch.zeros(10, dtype=torch.bfloat16)] * 2] * 2,
            ValueError,
            "fp16_param_groups has 2 groups, the optimizer has 1",
        ),
        (
            [[torch.zeros(10, dtype=torch.bfloat16)]],
            ValueError,
            r"fp16_param_groups\[0\] has 1 tensors, param group 0 has 2",
        ),
        (
            [[torch.zeros(10, dtype=torch.bfloat16), torch.zeros(9, dtype=torch.bfloat16)]],
            ValueError,
            r"fp16_param_groups\[0\]\[1\] has shape \(9,\), expected \(10,\)",
        ),
        (
            [[torch.zeros(10, dtype=torch.bfloat16), torch.zeros(10)]],
            TypeError,
            r"fp16_param_groups\[0\]\[1\] must be bf16/fp16",
        ),
    ]
    for copies, error, message in cases:
        with pytest.raises(error, match=message):
            opt.step(fp16_param_groups=copies)
        assert_unchanged(opt, before)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"lr": -1.0}, ValueError, "lr must be a finite number >= 0, got -1.0"),
        ({"lr": math.nan}, ValueError, "lr must be a finite number >= 0, got nan"),
        ({"lr": "0.1"}, TypeError, "lr must be a number"),
        ({"betas": (0.9, 1.0)}, ValueError, r"betas\[1\] must be in \[0, 1\), got 1.0"),
        ({"betas": (-0.1, 0.9)}, ValueError, r"betas\[0\] must be in \[0, 1\)"),
        ({"betas": 0.9}, ValueError, "betas must be a pair"),
        ({"eps": -1e-8}, ValueError, "eps must be a finite number >= 0"),
        ({"weight_decay": math.inf}, ValueError, "weight_decay must be a finite number >= 0"),
        (
            {"amsgrad": True},
            ValueError,
            r"CPUAdam does not implement amsgrad; use torch.optim.AdamW\(amsgrad=True\)",
        ),
        ({"fp32_optimizer_states": "yes"}, TypeError, "fp32_optimizer_states must be a bool"),
    ],
)
def test_bad_hyperparameters(kwargs, error, message):
    with pytest.raises(error, match=message):
        CPUAdam([torch.nn.Parameter(torch.zeros(1))], **kwargs)


def test_low_precision_copy_needs_fp32_params():
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))
    p.grad = torch.zeros(4, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="must be bf16/fp16 and its param fp32"):
        CPUAdam([p]).step(fp16_param_groups=[[torch.zeros(4, dtype=torch.float16)]])

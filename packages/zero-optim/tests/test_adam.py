"""CPUAdam against torch.optim.Adam/AdamW, in every precision and mode."""

from __future__ import annotations

import pytest
import torch

from zero_optim._adam import CPUAdam

# fp32 contract: after 100 steps every element is within atol + rtol * |ref| of torch's
# result. The kernel computes each element in fp32 like torch's single-tensor Adam, but
# torch's vectorized ops may fuse multiply-adds and ours multiply by 1/sqrt(bias_correction2)
# instead of dividing, so the two drift apart by a few ulps per step.
ATOL, RTOL = 1e-5, 1e-5
SIZES = [1, 7, 1023, 4099, 70001]  # odd lengths exercise every vector tail


def make(sizes=SIZES, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=gen).to(dtype) for n in sizes]


def grads_for(step, shapes, dtype=torch.float32):
    gen = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(s, generator=gen).to(dtype) for s in shapes]


@pytest.mark.parametrize("adamw", [True, False], ids=["adamw", "adam-l2"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("bias_correction", [True, False])
def test_matches_torch_fp32(isa, adamw, weight_decay, bias_correction):
    init = make()
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    ref = [torch.nn.Parameter(t.clone()) for t in init]
    opt = CPUAdam(
        ours,
        lr=3e-3,
        betas=(0.8, 0.95),
        eps=1e-7,
        weight_decay=weight_decay,
        adamw_mode=adamw,
        bias_correction=bias_correction,
        num_threads=2,
    )
    torch_cls = torch.optim.AdamW if adamw else torch.optim.Adam
    ref_opt = torch_cls(ref, lr=3e-3, betas=(0.8, 0.95), eps=1e-7, weight_decay=weight_decay)
    for step in range(1, 101):
        for o, r, g in zip(ours, ref, grads_for(step, [t.shape for t in init])):
            o.grad, r.grad = g.clone(), g.clone()
        if not bias_correction:
            # torch has no switch: a bias-free Adam equals torch's with the corrections undone,
            # i.e. lr scaled by bc1/sqrt(bc2) and eps by 1/sqrt(bc2) (exact up to rounding).
            bc1, bc2 = 1 - 0.8**step, 1 - 0.95**step
            ref_opt.param_groups[0]["lr"] = 3e-3 * bc1 / bc2**0.5
            ref_opt.param_groups[0]["eps"] = 1e-7 / bc2**0.5
            if weight_decay and adamw:
                # keep torch's decoupled decay at lr * wd
                ref_opt.param_groups[0]["weight_decay"] = weight_decay * bc2**0.5 / bc1
        opt.step()
        ref_opt.step()
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o.detach(), r.detach(), atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(
            opt.state[o]["exp_avg"], ref_opt.state[r]["exp_avg"], atol=ATOL, rtol=RTOL
        )
        torch.testing.assert_close(
            opt.state[o]["exp_avg_sq"], ref_opt.state[r]["exp_avg_sq"], atol=ATOL, rtol=RTOL
        )
    assert float(opt.state[ours[0]]["step"]) == 100.0


def reference_low_precision(param, grads, dtype, lr, betas, eps, wd, steps):
    """fp32 Adam math on a float copy, rounded to ``dtype`` after every step (fp32 states)."""
    p32 = param.float()
    m = torch.zeros_like(p32)
    v = torch.zeros_like(p32)
    b1, b2 = betas
    for step in range(1, steps + 1):
        g = grads[step - 1].float()
        p32 = p32 * (1 - lr * wd)
        m = m + (1 - b1) * (g - m)
        v = v * b2 + (1 - b2) * g * g
        denom = v.sqrt() / (1 - b2**step) ** 0.5 + eps
        p32 = p32 - (lr / (1 - b1**step)) * (m / denom)
        p32 = p32.to(dtype).float()  # the param is stored in low precision
    return p32.to(dtype), m, v


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("grad_dtype", ["same", "fp32"])
def test_low_precision_params_fp32_states(isa, dtype, grad_dtype):
    init = make([4099], dtype)[0]
    grads = [
        g.to(dtype if grad_dtype == "same" else torch.float32)
        for g in (torch.randn(4099, generator=torch.Generator().manual_seed(s)) for s in range(20))
    ]
    p = torch.nn.Parameter(init.clone())
    if grad_dtype == "fp32":
        p.grad_dtype = torch.float32  # torch otherwise insists that grads match the param
    opt = CPUAdam([p], lr=1e-2, weight_decay=0.01)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    expected, m, v = reference_low_precision(init, grads, dtype, 1e-2, (0.9, 0.999), 1e-8, 0.01, 20)
    assert opt.state[p]["exp_avg"].dtype == torch.float32
    # one ulp of the low-precision format, where the two roundings may land on either side
    ulp = 2**-7 if dtype == torch.bfloat16 else 2**-10
    torch.testing.assert_close(p.detach().float(), expected.float(), atol=1e-6, rtol=ulp)
    torch.testing.assert_close(opt.state[p]["exp_avg"], m, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(opt.state[p]["exp_avg_sq"], v, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_states(isa, dtype):
    init = make([1023], dtype)[0]
    p = torch.nn.Parameter(init.clone())
    opt = CPUAdam([p], lr=1e-2, fp32_optimizer_states=False)
    p.grad = torch.randn(1023).to(dtype)
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == dtype
    expected, m, _ = reference_low_precision(
        init, [p.grad], dtype, 1e-2, (0.9, 0.999), 1e-8, 0.0, 1
    )
    torch.testing.assert_close(opt.state[p]["exp_avg"], m.to(dtype))
    torch.testing.assert_close(p.detach(), expected, atol=1e-3, rtol=1e-2)


@pytest.mark.parametrize("copy_dtype", [torch.bfloat16, torch.float16])
def test_low_precision_copy_written_in_the_same_step(isa, copy_dtype):
    init = make([4099, 33])
    params = [torch.nn.Parameter(t.clone()) for t in init]
    copies = [torch.zeros_like(t, dtype=copy_dtype) for t in init]
    opt = CPUAdam(params, lr=1e-2)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step(fp16_param_groups=[copies])
    for p, c in zip(params, copies):
        assert torch.equal(c, p.detach().to(copy_dtype))


def test_grads_in_low_precision_for_fp32_params(isa):
    init = make([4099])[0]
    ours, ref = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())
    opt, ref_opt = CPUAdam([ours], lr=1e-2), torch.optim.AdamW([ref], lr=1e-2, weight_decay=0.0)
    g = torch.randn(4099).to(torch.bfloat16)
    ours.grad_dtype = torch.bfloat16  # e.g. grads reduced in bf16 for fp32 master params
    ours.grad, ref.grad = g.clone(), g.float()
    opt.step()
    ref_opt.step()
    torch.testing.assert_close(ours.detach(), ref.detach(), atol=ATOL, rtol=RTOL)


def test_many_groups_and_steps_counted_per_param():
    a, b = torch.nn.Parameter(torch.randn(10)), torch.nn.Parameter(torch.randn(10))
    ra, rb = torch.nn.Parameter(a.detach().clone()), torch.nn.Parameter(b.detach().clone())
    opt = CPUAdam([{"params": [a], "lr": 0.1}, {"params": [b], "weight_decay": 0.5}], lr=0.01)
    ref = torch.optim.AdamW(
        [{"params": [ra], "lr": 0.1}, {"params": [rb], "weight_decay": 0.5}],
        lr=0.01,
        weight_decay=0.0,
    )
    for step in range(5):
        a.grad, ra.grad = torch.full((10,), 0.3), torch.full((10,), 0.3)
        if step % 2 == 0:  # b only sometimes has a grad: its step count lags
            b.grad, rb.grad = torch.full((10,), -0.2), torch.full((10,), -0.2)
        else:
            b.grad = rb.grad = None
        opt.step()
        ref.step()
    torch.testing.assert_close(a.detach(), ra.detach(), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(b.detach(), rb.detach(), atol=ATOL, rtol=RTOL)
    assert float(opt.state[b]["step"]) == 3.0


def test_nan_and_inf_grads_propagate_like_torch(isa):
    init = torch.randn(100)
    ours, ref = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())
    opt, ref_opt = CPUAdam([ours], lr=1e-2), torch.optim.AdamW([ref], lr=1e-2, weight_decay=0.0)
    g = torch.randn(100)
    g[3], g[50], g[99] = float("nan"), float("inf"), -float("inf")
    ours.grad, ref.grad = g.clone(), g.clone()
    opt.step()
    ref_opt.step()
    torch.testing.assert_close(ours.detach(), ref.detach(), atol=ATOL, rtol=RTOL, equal_nan=True)
    assert torch.equal(ours.isnan(), ref.isnan())


def test_zero_size_param():
    p = torch.nn.Parameter(torch.zeros(0))
    q = torch.nn.Parameter(torch.ones(3))
    opt = CPUAdam([p, q], lr=0.1)
    p.grad, q.grad = torch.zeros(0), torch.ones(3)
    opt.step()
    assert p.numel() == 0 and float(opt.state[p]["step"]) == 1.0
    assert torch.all(q < 1)


def test_closure_returns_loss():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = CPUAdam([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert float(opt.step(closure).detach()) == 5.0
    assert torch.all(p.detach() < torch.tensor([1.0, 2.0]))


def test_is_a_torch_optimizer_with_deepspeed_defaults():
    opt = CPUAdam([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(opt, torch.optim.Optimizer)
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (
        1e-3,
        (0.9, 0.999),
        1e-8,
        0.0,
    )
    assert group["bias_correction"] and group["adamw_mode"]

"""State dicts: exact round trips, and torch Adam/AdamW checkpoints in both directions."""

from __future__ import annotations

import io

import pytest
import torch

from zero_optim import CPUAdam, FusedAdam

ATOL, RTOL = 1e-5, 1e-5  # same fp32 contract as test_adam.py


def params_like(init):
    return [torch.nn.Parameter(t.clone()) for t in init]


def feed(params, step):
    gen = torch.Generator().manual_seed(step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)


def run(opt, params, steps, start=0):
    for step in range(start, start + steps):
        feed(params, step)
        opt.step()


def save_load(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_resumes_bit_identically(dtype):
    init = [torch.randn(1000).to(dtype), torch.randn(33).to(dtype)]
    straight = params_like(init)
    opt = CPUAdam(straight, lr=1e-2, weight_decay=0.1)
    run(opt, straight, 10)

    first = params_like(init)
    opt1 = CPUAdam(first, lr=1e-2, weight_decay=0.1)
    run(opt1, first, 6)
    saved = save_load(opt1.state_dict())
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in first]
    opt2 = CPUAdam(resumed, lr=1e-2, weight_decay=0.1)
    opt2.load_state_dict(saved)
    assert opt2.state[resumed[0]]["exp_avg"].dtype == torch.float32  # not cast to bf16 on load
    run(opt2, resumed, 4, start=6)
    for a, b in zip(resumed, straight):
        assert torch.equal(a, b)


@pytest.mark.parametrize("torch_cls", [torch.optim.AdamW, torch.optim.Adam])
def test_torch_checkpoint_continues_in_cpu_adam(torch_cls):
    init = [torch.randn(257), torch.randn(4, 9)]
    adamw = torch_cls is torch.optim.AdamW
    ref = params_like(init)
    ref_opt = torch_cls(ref, lr=1e-2, weight_decay=0.05)
    run(ref_opt, ref, 5)
    checkpoint = save_load(ref_opt.state_dict())
    ours = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    opt = CPUAdam(ours, lr=123.0, adamw_mode=not adamw)  # values come from the checkpoint
    opt.load_state_dict(checkpoint)
    assert opt.param_groups[0]["lr"] == 1e-2 and opt.param_groups[0]["adamw_mode"] is adamw
    run(opt, ours, 5, start=5)
    run(ref_opt, ref, 5, start=5)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.detach(), b.detach(), atol=ATOL, rtol=RTOL)


def test_cpu_adam_checkpoint_continues_in_torch_adamw():
    init = [torch.randn(300)]
    ours = params_like(init)
    opt = CPUAdam(ours, lr=1e-2, weight_decay=0.05)
    run(opt, ours, 5)
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    ref_opt = torch.optim.AdamW(ref, lr=1.0)
    ref_opt.load_state_dict(save_load(opt.state_dict()))
    run(ref_opt, ref, 5, start=5)
    run(opt, ours, 5, start=5)
    torch.testing.assert_close(ours[0].detach(), ref[0].detach(), atol=ATOL, rtol=RTOL)


def test_checkpoint_with_maximize_is_refused():
    p = torch.nn.Parameter(torch.zeros(3))
    ref_opt = torch.optim.AdamW([p], maximize=True)
    with pytest.raises(ValueError, match="does not implement maximize=True"):
        CPUAdam([p]).load_state_dict(ref_opt.state_dict())


def test_fused_adam_torch_path_matches_cpu_kernel():
    """The device path (torch's fused kernels) run on CPU tensors equals the C++ kernel."""
    from zero_optim._adam import torch_adam_step

    for bias_correction in (True, False):
        for adamw in (True, False):
            init = torch.randn(5000)
            ours = torch.nn.Parameter(init.clone())
            opt = FusedAdam(
                [ours],
                lr=1e-2,
                weight_decay=0.1,
                adam_w_mode=adamw,
                bias_correction=bias_correction,
            )
            p, m, v, step = init.clone(), torch.zeros(5000), torch.zeros(5000), torch.zeros(())
            for i in range(20):
                g = torch.randn(5000, generator=torch.Generator().manual_seed(i))
                ours.grad = g.clone()
                opt.step()
                step += 1
                torch_adam_step([p], [g.clone()], [m], [v], [step], opt.param_groups[0])
            torch.testing.assert_close(ours.detach(), p, atol=ATOL, rtol=RTOL)
            torch.testing.assert_close(opt.state[ours]["exp_avg_sq"], v, atol=ATOL, rtol=RTOL)


def test_fused_adam_set_grad_none():
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.ones(3)
    FusedAdam([p], set_grad_none=False).zero_grad()
    assert torch.equal(p.grad, torch.zeros(3))
    FusedAdam([p]).zero_grad()
    assert p.grad is None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_adam_on_cuda_matches_cpu():
    init = torch.randn(10000)
    gpu = torch.nn.Parameter(init.cuda())
    cpu = torch.nn.Parameter(init.clone())
    og, oc = (
        FusedAdam([gpu], lr=1e-2, weight_decay=0.1),
        FusedAdam([cpu], lr=1e-2, weight_decay=0.1),
    )
    for i in range(10):
        g = torch.randn(10000, generator=torch.Generator().manual_seed(i))
        gpu.grad, cpu.grad = g.cuda(), g.clone()
        og.step()
        oc.step()
    torch.testing.assert_close(gpu.detach().cpu(), cpu.detach(), atol=ATOL, rtol=RTOL)
    state = save_load(og.state_dict())
    og2 = FusedAdam([gpu], lr=1e-2)
    og2.load_state_dict(state)
    assert og2.state[gpu]["step"].device == gpu.device

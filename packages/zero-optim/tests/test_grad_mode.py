"""A CPU step is not run under ``torch.no_grad()`` (see ``CPUOptimizer.step``); check that
this changes nothing a user can see, even when the gradients themselves require grad."""

from __future__ import annotations

import torch

from zero_optim import CPUAdam, CPULion

ATOL, RTOL = 1e-6, 1e-5


def test_step_with_grads_that_require_grad_matches_torch_and_builds_no_graph():
    torch.manual_seed(0)
    ours = torch.nn.Parameter(torch.randn(37))
    ref = torch.nn.Parameter(ours.detach().clone())
    opt = CPUAdam([ours], lr=0.05, weight_decay=0.01)
    ref_opt = torch.optim.AdamW([ref], lr=0.05, weight_decay=0.01)
    x = torch.linspace(-1, 1, 37)
    for _ in range(5):
        for p in (ours, ref):
            (p.grad,) = torch.autograd.grad((p * x).sin().pow(2).sum(), p, create_graph=True)
        assert ours.grad.requires_grad  # a grad that is itself part of a graph
        # A strided grad goes through the copying path (grad.contiguous()) as well.
        ours.grad = torch.stack([ours.grad, ours.grad], 1)[:, 0]
        assert not ours.grad.is_contiguous()
        opt.step()
        ref_opt.step()
    torch.testing.assert_close(ours.detach(), ref.detach(), atol=ATOL, rtol=RTOL)
    assert ours.is_leaf and ours.requires_grad and ours.grad_fn is None
    for value in opt.state[ours].values():
        assert not value.requires_grad and value.grad_fn is None


def test_step_inside_no_grad_and_inference_mode_still_works():
    for context in (torch.no_grad, torch.inference_mode):
        p = torch.nn.Parameter(torch.ones(8))
        p.grad = torch.full((8,), 0.5)
        opt = CPULion([p], lr=0.1)
        with context():
            opt.step()
        torch.testing.assert_close(p.detach(), torch.full((8,), 0.9))

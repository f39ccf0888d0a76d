"""MoE layer: values and gradients against a loop-over-experts reference, PR-MoE, marks."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
from torch import nn

from reference_moe import reference_forward, reference_route
from zero_moe import MoE, compute_capacity, is_moe_param

D = 8


def _expert():
    return nn.Sequential(nn.Linear(D, 16), nn.GELU(), nn.Linear(16, D))


def _moe(num_experts=4, k=1, **kw):
    torch.manual_seed(0)
    kw.setdefault("use_rts", False)
    kw.setdefault("top2_2nd_expert_sampling", False)
    moe = MoE(D, _expert(), num_experts=num_experts, k=k, **kw)
    for i, expert in enumerate(moe.deepspeed_moe.experts.deepspeed_experts):
        torch.manual_seed(100 + i)  # experts start different, as after training
        for p in expert.parameters():
            nn.init.normal_(p, std=0.3)
    return moe


CASES = [
    pytest.param(4, 1, 1.0, True, id="top1"),
    pytest.param(4, 1, 0.5, True, id="top1-dropping"),
    pytest.param(4, 2, 0.5, True, id="top2-dropping"),
    pytest.param(4, 2, 1.0, False, id="top2-nodrop"),
    pytest.param(6, 3, 0.6, True, id="top3"),
    pytest.param(4, 4, 1.0, True, id="k=num_experts"),
]


@pytest.mark.parametrize(("experts", "k", "factor", "drop"), CASES)
@pytest.mark.parametrize("grouped", [True, False], ids=["grouped", "loop"])
def test_output_and_grads_equal_loop_reference(experts, k, factor, drop, grouped):
    moe = _moe(experts, k, capacity_factor=factor, drop_tokens=drop, min_capacity=0)
    moe.deepspeed_moe.experts.grouped = grouped
    x = torch.randn(3, 12, D, requires_grad=True)
    out, l_aux, counts = moe(x)

    tokens = x.reshape(-1, D)
    logits = moe.deepspeed_moe.gate.wg(tokens)
    capacity = compute_capacity(36, experts, factor, k, 0) if drop else 36
    kept, weights = reference_route(logits, k, capacity)
    experts_list = list(moe.deepspeed_moe.experts.deepspeed_experts)
    ref = reference_forward(tokens, experts_list, kept, weights).reshape(3, 12, D)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert counts.sum() == 36 * k

    params = [x, *moe.parameters()]
    grads = torch.autograd.grad(
        (out**2).sum() + l_aux, params, allow_unused=True, retain_graph=True
    )
    ref_grads = torch.autograd.grad((ref**2).sum() + l_aux, params, allow_unused=True)
    for g, r in zip(grads, ref_grads):
        if r is None:
            assert g is None or not g.any()
        else:
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_experts_without_tokens():
    moe = _moe(4, 1, drop_tokens=False)
    with torch.no_grad():
        moe.deepspeed_moe.gate.wg.weight.zero_()
        moe.deepspeed_moe.gate.wg.weight[2] = 1.0  # everyone goes to expert 2
    x = torch.rand(20, D) + 0.1
    out, _, counts = moe(x)
    assert counts.tolist() == [0, 0, 20, 0]
    (out.sum()).backward()
    experts = moe.deepspeed_moe.experts.deepspeed_experts
    ref = (
        experts[2](x)
        * torch.softmax(x.sum(1, keepdim=True) * torch.tensor([0, 0, 1, 0]), 1)[:, 2:3]
    )
    torch.testing.assert_close(out, ref)
    for i, expert in enumerate(experts):
        for p in expert.parameters():
            assert (p.grad is not None and p.grad.abs().sum() > 0) == (i == 2)


def test_dropped_tokens_output_zero():
    moe = _moe(4, 1, capacity_factor=0.25, min_capacity=0)  # capacity 1 of 16 tokens
    x = torch.randn(16, D)
    out, _, _ = moe(x)
    assert int((out.abs().sum(dim=1) > 0).sum()) <= 4


def test_residual_moe_mixes_dense_mlp_with_learned_coefficient():
    moe = _moe(4, 2, use_residual=True, drop_tokens=False)
    plain = _moe(4, 2, drop_tokens=False)
    plain.load_state_dict(
        {k: v for k, v in moe.state_dict().items() if k.startswith("deepspeed_moe.")}
    )
    x = torch.randn(2, 5, D)
    out, _, _ = moe(x)
    experts_out, _, _ = plain(x)
    coef = torch.softmax(x @ moe.coefficient.weight.t() + moe.coefficient.bias, dim=-1)
    expected = experts_out * coef[..., :1] + moe.mlp(x) * coef[..., 1:]
    torch.testing.assert_close(out, expected)
    assert not is_moe_param(moe.mlp[0].weight) and not is_moe_param(moe.coefficient.weight)


def test_deterministic_under_seed_with_all_noise():
    moe = _moe(4, 1, use_rts=True, noisy_gate_policy="RSample", capacity_factor=0.5)
    x = torch.randn(64, D)
    torch.manual_seed(7)
    a = moe(x)[0]
    torch.manual_seed(7)
    b = moe(x)[0]
    torch.manual_seed(8)
    c = moe(x)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_expert_parameters_are_marked_for_the_engine():
    moe = _moe(4, 2)
    expert_params = list(moe.deepspeed_moe.experts.parameters())
    assert len(expert_params) == 4 * 4
    for p in expert_params:
        assert p.allreduce is False and is_moe_param(p)
        assert p.group_name == "ep_size_1"
        assert p.zs_dp_group is None and p.zs_dp_group_ranks == [0]
    gate_weight = moe.deepspeed_moe.gate.wg.weight
    assert not hasattr(gate_weight, "allreduce") and not is_moe_param(gate_weight)


def test_state_dict_names_follow_deepspeed():
    keys = set(_moe(2, 1).state_dict())
    assert "deepspeed_moe.gate.wg.weight" in keys
    assert "deepspeed_moe.experts.deepspeed_experts.1.2.bias" in keys


def test_bfloat16_tokens_keep_their_dtype():
    moe = _moe(4, 2).to(torch.bfloat16)
    out, l_aux, _ = moe(torch.randn(10, D, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and l_aux.dtype == torch.float32


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"num_experts": 3, "ep_size": 2}, "num_experts=3 must be a positive multiple"),
        ({"num_experts": 4, "ep_size": 2}, "ep_size=2 must be a positive divisor of the world"),
        ({"num_experts": 4, "k": 5}, "k=5 must be between 1 and num_experts=4"),
    ],
    ids=["indivisible", "no-world", "k"],
)
def test_moe_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        MoE(D, _expert(), **kw)


def test_pyramid_residual_example_trains():
    example = Path(__file__).parents[1] / "examples" / "pyramid_residual_moe.py"
    result = runpy.run_path(str(example))["main"](steps=20)
    assert result["experts_per_layer"] == [2, 2, 4, 4]
    assert result["final_loss"] < 0.7 * result["first_loss"]

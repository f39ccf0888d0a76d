"""Expert parallelism on 2 gloo ranks: outputs and gradients equal the single-process MoE.

One spawn runs every case (process start-up dominates on a small machine). In each case
both ranks also build the single-process layer holding all experts, run it on both ranks'
tokens and back-propagate the mean of the two ranks' losses: that is the reference. The
distributed layer runs on its own rank's tokens only; afterwards expert gradients are
averaged over ``param.zs_dp_group`` and dense gradients over the world (what an engine
does), and must equal the reference's.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from harness import run_ranks
from zero_moe import (
    MoE,
    get_expert_data_parallel_group,
    get_expert_data_parallel_ranks,
    get_expert_parallel_group,
    get_expert_parallel_ranks,
    is_moe_param,
)

D = 8
E = 4
WORLD = 2

CASES = {
    "ep2-top1-drop-rts": {"ep_size": 2, "k": 1, "drop_tokens": True, "use_rts": True},
    "ep2-top1-jitter": {"ep_size": 2, "k": 1, "drop_tokens": True, "noisy_gate_policy": "Jitter"},
    "ep2-top2-nodrop": {"ep_size": 2, "k": 2, "drop_tokens": False},
    "ep2-top4-residual": {"ep_size": 2, "k": 4, "drop_tokens": True, "use_residual": True},
    "ep1-top2-drop": {"ep_size": 1, "k": 2, "drop_tokens": True},
}


def _build(ep_size: int, **kw) -> MoE:
    torch.manual_seed(0)
    expert = nn.Sequential(nn.Linear(D, 16), nn.GELU(), nn.Linear(16, D))
    return MoE(
        D, expert, num_experts=E, ep_size=ep_size, capacity_factor=0.75, min_capacity=0, **kw
    )


def _case(rank: int, ep_size: int, **kw) -> dict:
    full = _build(1, **kw)
    with torch.no_grad():
        for i, expert in enumerate(full.deepspeed_moe.experts.deepspeed_experts):
            for p in expert.parameters():
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(10 + i))
    model = _build(ep_size, **kw)
    local = E // ep_size
    first = (rank % ep_size) * local
    state = {}
    for name, value in full.state_dict().items():
        prefix = "deepspeed_moe.experts.deepspeed_experts."
        if name.startswith(prefix):
            i, rest = name[len(prefix) :].split(".", 1)
            if not first <= int(i) < first + local:
                continue
            name = f"{prefix}{int(i) - first}.{rest}"
        state[name] = value
    model.load_state_dict(state)

    xs = [torch.randn(24, D, generator=torch.Generator().manual_seed(r)) for r in range(WORLD)]
    targets = [
        torch.randn(24, D, generator=torch.Generator().manual_seed(50 + r)) for r in range(2)
    ]
    ref_x = [x.clone().requires_grad_() for x in xs]
    ref_loss, ref_out = 0.0, []
    for r in range(WORLD):
        torch.manual_seed(1000 + r)
        out, l_aux, _ = full(ref_x[r])
        ref_out.append(out.detach())
        ref_loss = ref_loss + ((out * targets[r]).sum() + 0.1 * l_aux) / WORLD
    ref_loss.backward()

    x = xs[rank].clone().requires_grad_()
    torch.manual_seed(1000 + rank)
    out, l_aux, counts = model(x)
    ((out * targets[rank]).sum() + 0.1 * l_aux).backward()
    for p in model.parameters():
        if p.grad is None:
            continue
        if is_moe_param(p):
            if p.zs_dp_group is not None:
                dist.all_reduce(p.grad, group=p.zs_dp_group)
                p.grad /= len(p.zs_dp_group_ranks)
        else:
            dist.all_reduce(p.grad)
            p.grad /= WORLD

    errors = {
        "output": (out - ref_out[rank]).abs().max().item(),
        "input grad": (x.grad / WORLD - ref_x[rank].grad).abs().max().item(),
    }
    ref_params = dict(full.named_parameters())
    for name, p in model.named_parameters():
        ref_name = name
        prefix = "deepspeed_moe.experts.deepspeed_experts."
        if name.startswith(prefix):
            i, rest = name[len(prefix) :].split(".", 1)
            ref_name = f"{prefix}{int(i) + first}.{rest}"
        ref_grad = ref_params[ref_name].grad
        got = p.grad if p.grad is not None else torch.zeros_like(p)
        want = ref_grad if ref_grad is not None else torch.zeros_like(p)
        errors[f"grad {ref_name}"] = (got - want).abs().max().item()
    return {
        "errors": errors,
        "grad norm": sum(float(p.grad.norm()) for p in model.parameters() if p.grad is not None),
        "counts": counts.tolist(),
    }


def _all_cases(rank: int) -> dict:
    results = {name: _case(rank, **kw) for name, kw in CASES.items()}
    model = _build(2)
    p = next(model.deepspeed_moe.experts.parameters())
    results["groups"] = {
        "ep2": get_expert_parallel_ranks(2),
        "edp2": get_expert_data_parallel_ranks(2),
        "ep1": get_expert_parallel_ranks("ep_size_1"),
        "edp1": get_expert_data_parallel_ranks("ep_size_1"),
        "ep2 group size": dist.get_world_size(get_expert_parallel_group(2)),
        "edp2 group": get_expert_data_parallel_group(2),
        "edp1 group size": dist.get_world_size(get_expert_data_parallel_group(1)),
        "param": (p.group_name, p.zs_dp_group, p.zs_dp_group_ranks),
    }
    return results


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return run_ranks(_all_cases)


@pytest.mark.parametrize("case", list(CASES))
def test_expert_parallel_equals_single_process(ranks, case):
    for rank, result in enumerate(ranks):
        errors = result[case]["errors"]
        assert len(errors) > 3
        worst = max(errors, key=errors.get)
        assert errors[worst] < 1e-5, f"rank {rank}: {worst} differs by {errors[worst]}"
        assert result[case]["grad norm"] > 0


def test_expert_process_groups(ranks):
    for rank, result in enumerate(ranks):
        groups = result["groups"]
        assert groups["ep2"] == [0, 1] and groups["edp2"] == [rank]
        assert groups["ep1"] == [rank] and groups["edp1"] == [0, 1]
        assert groups["ep2 group size"] == 2 and groups["edp2 group"] is None
        assert groups["edp1 group size"] == 2
        assert groups["param"] == ("ep_size_2", None, [rank])

"""is_moe_param and split_params_into_different_moe_groups_for_optimizer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zero_moe import MoE, is_moe_param, split_params_into_different_moe_groups_for_optimizer


def _model():
    torch.manual_seed(0)
    return nn.ModuleDict(
        {
            "embed": nn.Linear(4, 8),
            "moe": MoE(8, nn.Linear(8, 8), num_experts=3),
            "head": nn.Linear(8, 2),
        }
    )


def test_is_moe_param_reads_the_allreduce_mark():
    p = nn.Parameter(torch.zeros(2))
    assert not is_moe_param(p)
    p.allreduce = True
    assert not is_moe_param(p)
    p.allreduce = False
    assert is_moe_param(p)


def test_split_moves_expert_params_and_keeps_options():
    model = _model()
    expert_ids = {id(p) for p in model["moe"].deepspeed_moe.experts.parameters()}
    groups = split_params_into_different_moe_groups_for_optimizer(
        {"params": model.parameters(), "lr": 0.1, "weight_decay": 0.01}
    )
    assert [g["moe"] for g in groups] == [False, True]
    dense, experts = groups
    assert {id(p) for p in experts["params"]} == expert_ids
    assert experts["name"] == "ep_size_1" and experts["lr"] == 0.1
    assert experts["weight_decay"] == 0.01
    assert len(dense["params"]) == 4 + 1  # embed, head weights/biases, gate weight
    assert not {id(p) for p in dense["params"]} & expert_ids
    torch.optim.AdamW(groups)  # a valid torch optimizer definition


def test_split_several_groups_and_size_cap():
    model = _model()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    groups = split_params_into_different_moe_groups_for_optimizer(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        max_group_size=100,
    )
    moe = [g for g in groups if g["moe"]]
    # 3 expert weights of 64 elements each: one per group under a cap of 100; biases fit.
    assert [sum(p.numel() for p in g["params"]) for g in moe] == [64, 64, 64, 24]
    assert [g["weight_decay"] for g in moe] == [0.1, 0.1, 0.1, 0.0]
    total = sum(len(g["params"]) for g in groups)
    assert total == len(list(model.parameters()))


def test_split_rejects_other_types():
    with pytest.raises(TypeError, match="param_groups must be a dict or a list/tuple"):
        split_params_into_different_moe_groups_for_optimizer(iter([]))

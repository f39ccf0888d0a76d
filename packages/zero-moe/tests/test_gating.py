"""TopKGate: capacities, who keeps a slot, combine weights, aux loss, noise, determinism."""

from __future__ import annotations

import pytest
import torch

from reference_moe import reference_l_aux, reference_route
from zero_moe import TopKGate, compute_capacity


@pytest.mark.parametrize(
    ("tokens", "experts", "factor", "k", "min_capacity", "expected"),
    [
        (10, 4, 1.0, 1, 0, 3),  # ceil(2.5)
        (16, 4, 1.0, 2, 4, 8),  # top-2 doubles the slots
        (8, 8, 1.0, 1, 4, 4),  # min_capacity wins over 1
        (3, 2, 1.0, 1, 4, 3),  # never more slots than tokens
        (10, 3, 1.1, 1, 0, 4),  # ceil(11/3)
        (100, 8, 1.25, 1, 0, 16),  # ceil(15.625)
        (30, 10, 1.1, 1, 0, 4),  # 3.3 -> 4, read as decimal 1.1
        (20, 10, 1.5, 1, 0, 3),  # exactly 3, no binary round-up
        (64, 8, 2.0, 3, 0, 48),  # top-3
    ],
    ids=lambda v: str(v),
)
def test_capacity_by_hand(tokens, experts, factor, k, min_capacity, expected):
    assert compute_capacity(tokens, experts, factor, k, min_capacity) == expected


def _gate(e=4, k=1, d=8, **kw):
    torch.manual_seed(0)
    kw.setdefault("use_rts", False)
    kw.setdefault("top2_2nd_expert_sampling", False)
    return TopKGate(d, e, k=k, **kw)


def _as_sets(out):
    kept = [[] for _ in range(out.num_experts)]
    weights = [{} for _ in range(out.expert.shape[0])]
    for s in range(out.expert.shape[0]):
        for j in range(out.expert.shape[1]):
            if out.kept[s, j]:
                e = int(out.expert[s, j])
                kept[e].append(s)
                weights[s][e] = out.weight[s, j].item()
    return [sorted(v) for v in kept], weights


@pytest.mark.parametrize(
    ("k", "experts", "factor"),
    [(1, 4, 1.0), (1, 4, 0.5), (2, 4, 1.0), (2, 4, 0.5), (3, 4, 0.5), (4, 4, 1.0), (3, 6, 0.7)],
    ids=lambda v: str(v),
)
def test_routing_matches_loop_reference(k, experts, factor):
    gate = _gate(e=experts, k=k, capacity_factor=factor, min_capacity=0)
    logits = torch.randn(40, experts) * 2
    out = gate.route(logits)
    capacity = compute_capacity(40, experts, factor, k, 0)
    assert out.capacity == capacity
    ref_kept, ref_weights = reference_route(logits, k, capacity)
    kept, weights = _as_sets(out)
    assert kept == [sorted(v) for v in ref_kept]
    for s in range(40):
        assert weights[s].keys() == ref_weights[s].keys()
        for e, w in ref_weights[s].items():
            assert weights[s][e] == pytest.approx(float(w), rel=1e-6)
    # slots are distinct and within capacity for each expert
    for e in range(experts):
        slots = out.slot[out.kept & (out.expert == e)]
        assert len(set(slots.tolist())) == len(slots) and (slots < capacity).all()
    # the dense DeepSpeed-style tensors agree with the index form
    dense = out.combine_weights()
    assert dense.shape == (40, experts, capacity)
    assert torch.allclose(dense.sum(dim=(1, 2)), out.weight.sum(dim=1))
    assert torch.equal(out.dispatch_mask(), dense > 0)
    assert (
        out.exp_counts.tolist()
        == torch.bincount(logits.topk(k, dim=1).indices.flatten(), minlength=experts).tolist()
    )


@pytest.mark.parametrize("k", [1, 2, 3])
def test_aux_loss_by_hand(k):
    gate = _gate(e=5, k=k)
    logits = torch.randn(32, 5, requires_grad=True)
    out = gate.route(logits)
    assert out.l_aux.item() == pytest.approx(float(reference_l_aux(logits.detach(), k)), rel=1e-6)
    out.l_aux.backward()  # differentiable through the mean gate probabilities
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_aux_loss_is_one_for_uniform_gates_and_balanced_choices():
    gate = _gate(e=4, k=1)
    logits = torch.eye(4).repeat(5, 1) * 1e-6  # near-uniform probs, balanced argmax
    assert gate.route(logits).l_aux.item() == pytest.approx(1.0, rel=1e-4)


def test_no_drop_capacity_is_busiest_expert():
    gate = _gate(e=4, k=2, drop_tokens=False, capacity_factor=0.1)
    logits = torch.randn(50, 4)
    logits[:30, 2] += 5  # expert 2 is chosen by most tokens
    out = gate.route(logits)
    assert out.kept.all()
    assert out.capacity == int(out.exp_counts.max())
    assert torch.allclose(out.weight.sum(dim=1), torch.ones(50))


def test_eval_capacity_factor():
    gate = _gate(e=4, capacity_factor=1.0, eval_capacity_factor=2.0, min_capacity=0)
    logits = torch.randn(40, 4)
    assert gate.route(logits).capacity == 10
    gate.eval()
    assert gate.route(logits).capacity == 20


def test_random_token_selection_keeps_capacity_tokens_and_is_seeded():
    gate = _gate(e=4, k=1, use_rts=True, min_capacity=0)
    logits = torch.zeros(40, 4)
    logits[:, 1] = 1.0  # everyone wants expert 1; capacity 10
    torch.manual_seed(3)
    a = gate.route(logits)
    torch.manual_seed(3)
    b = gate.route(logits)
    torch.manual_seed(4)
    c = gate.route(logits)
    assert torch.equal(a.kept, b.kept) and torch.equal(a.slot, b.slot)
    assert int(a.kept.sum()) == 10 and int(c.kept.sum()) == 10
    assert not torch.equal(a.kept, c.kept)
    # without rts the first 10 tokens keep their slot
    first = _gate(e=4, k=1, min_capacity=0).route(logits)
    assert first.kept[:10].all() and not first.kept[10:].any()
    # and rts is not biased toward the start: over many seeds, the second half keeps ~half
    late = 0
    for seed in range(40):
        torch.manual_seed(seed)
        late += int(gate.route(logits).kept[20:].sum())
    assert 150 < late < 250  # expected 200 of 400


def test_rsample_chooses_with_noise_and_weights_stay_clean():
    gate = _gate(e=4, k=1, noisy_gate_policy="RSample", drop_tokens=False)
    logits = torch.randn(200, 4) * 0.3
    torch.manual_seed(1)
    train = gate.route(logits)
    assert not torch.equal(train.expert[:, 0], logits.argmax(dim=1))
    probs = logits.softmax(dim=1)
    assert torch.allclose(train.weight[:, 0], probs.gather(1, train.expert)[:, 0])
    gate.eval()
    assert torch.equal(gate.route(logits).expert[:, 0], logits.argmax(dim=1))


def test_jitter_only_in_training_and_seeded():
    gate = _gate(e=4, k=1, noisy_gate_policy="Jitter", drop_tokens=False)
    x = torch.randn(300, 8)
    clean = gate.route(gate.wg(x))
    torch.manual_seed(5)
    a = gate(x)
    torch.manual_seed(5)
    b = gate(x)
    assert torch.equal(a.weight, b.weight)
    assert not torch.allclose(a.weight, clean.weight)
    gate.eval()
    assert torch.allclose(gate(x).weight, clean.weight)


def test_top2_second_expert_sampling():
    gate = _gate(e=6, k=2, top2_2nd_expert_sampling=True, drop_tokens=False)
    logits = torch.randn(300, 6)
    torch.manual_seed(0)
    out = gate.route(logits)
    assert torch.equal(out.expert[:, 0], logits.argmax(dim=1))
    assert (out.expert[:, 0] != out.expert[:, 1]).all()
    second_best = logits.topk(2, dim=1).indices[:, 1]
    assert not torch.equal(out.expert[:, 1], second_best)  # sampled, not always 2nd best
    gate.eval()
    assert torch.equal(gate.route(logits).expert[:, 1], second_best)


def test_used_token_excludes_tokens():
    gate = _gate(e=4, k=2, drop_tokens=False)
    logits = torch.randn(12, 4)
    used = torch.tensor([1, 0] * 6)
    out = gate.route(logits, used)
    assert not out.kept[1::2].any() and out.kept[0::2].all()
    assert int(out.exp_counts.sum()) == 12  # 6 tokens x 2 choices


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"k": 0}, "k=0 must be between 1 and num_experts=4"),
        ({"k": 5}, "k=5 must be between 1 and num_experts=4"),
        ({"noisy_gate_policy": "Gaussian"}, "noisy_gate_policy='Gaussian' is not one of"),
    ],
    ids=["k0", "k-too-big", "policy"],
)
def test_gate_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        TopKGate(8, 4, **kw)

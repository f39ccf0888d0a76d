"""Step counters and the per-step checks on the fast path.

Each group's ``step`` counters are views of one buffer (see [Note: step counters as views of
one buffer]); these tests change the set of stepped params in every way a user can and
compare against ``torch.optim.AdamW`` doing the same, and check that states swapped between
steps still meet the full checks.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

from zero_optim import CPUAdam

ATOL, RTOL = 1e-6, 1e-5


def twin_params(shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ours = [torch.nn.Parameter(torch.randn(*s, generator=gen)) for s in shapes]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    return ours, ref


def set_grads(params, ref, step, skip=()):
    for i, (p, r) in enumerate(zip(params, ref)):
        if i in skip:
            p.grad = r.grad = None
            continue
        g = torch.sin(torch.arange(p.numel(), dtype=torch.float32) * (i + 1) + step).view_as(p)
        p.grad, r.grad = g.clone(), g.clone()


def assert_same(params, ref):
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.detach(), r.detach(), atol=ATOL, rtol=RTOL)


def test_changing_sets_of_stepped_params_count_like_torch():
    params, ref = twin_params([(4, 3), (7,), (2, 2), (5,)])
    opt = CPUAdam(params[:3], lr=0.05, weight_decay=0.1)
    torch_opt = torch.optim.AdamW(ref[:3], lr=0.05, weight_decay=0.1)
    schedule = [(), (1,), (0, 2), (), (1,), ()]
    for step, skip in enumerate(schedule):
        if step == 3:  # a group joins mid-run; its param starts at step 1
            opt.add_param_group({"params": [params[3]], "lr": 0.01})
            torch_opt.add_param_group({"params": [ref[3]], "lr": 0.01})
        set_grads(params, ref, step, skip)
        opt.step()
        torch_opt.step()
        assert_same(params, ref)
    for p, r in zip(params, ref):
        assert float(opt.state[p]["step"]) == float(torch_opt.state[r]["step"])
    assert [float(opt.state[p]["step"]) for p in params] == [5.0, 4.0, 5.0, 3.0]


def test_a_counter_replaced_or_edited_by_the_user_is_honoured():
    params, ref = twin_params([(6,), (3,)])
    opt = CPUAdam(params, lr=0.05)
    torch_opt = torch.optim.AdamW(ref, lr=0.05, weight_decay=0.0)
    set_grads(params, ref, 0)
    opt.step()
    torch_opt.step()
    opt.state[params[0]]["step"] = torch.tensor(10.0)  # replaced
    torch_opt.state[ref[0]]["step"] = torch.tensor(10.0)
    opt.state[params[1]]["step"].fill_(4.0)  # edited in place
    torch_opt.state[ref[1]]["step"].fill_(4.0)
    set_grads(params, ref, 1)
    opt.step()
    torch_opt.step()
    assert_same(params, ref)
    assert [float(opt.state[p]["step"]) for p in params] == [11.0, 5.0]


@pytest.mark.parametrize("how", ["deepcopy", "torch.save"])
def test_copied_optimizer_counts_on_its_own(how):
    """A deepcopy (which also keeps num_threads and the state dtype policy) or a reloaded
    checkpoint continues exactly as the original does, counting on its own."""
    params, ref = twin_params([(5,), (8,)])
    opt = CPUAdam(params, lr=0.05, num_threads=1)
    for step in range(3):
        set_grads(params, ref, step)
        opt.step()
    if how == "deepcopy":
        twin = copy.deepcopy(opt)
        twin_params_ = [p for g in twin.param_groups for p in g["params"]]
    else:
        buffer = io.BytesIO()
        torch.save(opt.state_dict(), buffer)
        twin_params_ = [torch.nn.Parameter(p.detach().clone()) for p in params]
        twin = CPUAdam(twin_params_, lr=0.05, num_threads=1)
        buffer.seek(0)
        twin.load_state_dict(torch.load(buffer))
    for step in range(3, 5):
        set_grads(params, ref, step)
        set_grads(twin_params_, ref, step)
        opt.step()
        twin.step()
    assert_same(params, twin_params_)
    assert [float(opt.state[p]["step"]) for p in params] == [5.0, 5.0]
    assert [float(twin.state[p]["step"]) for p in twin_params_] == [5.0, 5.0]
    assert (twin.num_threads, twin.fp32_optimizer_states) == (opt.num_threads, True)


def test_state_dict_counters_are_independent_scalars():
    params, ref = twin_params([(3,), (3,)])
    opt = CPUAdam(params, lr=0.05)
    set_grads(params, ref, 0)
    opt.step()
    saved = opt.state_dict()["state"]
    assert all(s["step"].dim() == 0 and s["step"].dtype == torch.float32 for s in saved.values())
    ref = [torch.nn.Parameter(p.detach().clone()) for p in params]
    torch_opt = torch.optim.AdamW(ref, lr=0.05, weight_decay=0.0)
    torch_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # not shared with ours
    set_grads(params, ref, 1)
    opt.step()
    torch_opt.step()
    assert_same(params, ref)


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda s: s.__setitem__("exp_avg", torch.zeros(10, 2)[:, 0]), "not contiguous"),
        (lambda s: s.__setitem__("exp_avg_sq", torch.zeros(11)), r"has shape \(11,\)"),
        (lambda s: s.__setitem__("exp_avg", torch.zeros(10, dtype=torch.float64)), "float64"),
        (lambda s: s.__setitem__("exp_avg", torch.zeros(10).to_sparse()), "sparse_coo"),
    ],
    ids=["strided", "shape", "dtype", "sparse"],
)
def test_state_swapped_between_steps_is_refused_and_nothing_moves(spoil, message):
    good, other = torch.nn.Parameter(torch.randn(10)), torch.nn.Parameter(torch.randn(10))
    opt = CPUAdam([good, other], lr=0.1)
    good.grad, other.grad = torch.ones(10), torch.ones(10)
    opt.step()
    spoil(opt.state[other])
    before = [good.detach().clone(), other.detach().clone()]
    steps = [float(opt.state[p]["step"]) for p in (good, other)]
    with pytest.raises((TypeError, ValueError), match=message):
        opt.step()
    assert torch.equal(good, before[0]) and torch.equal(other, before[1])
    assert [float(opt.state[p]["step"]) for p in (good, other)] == steps

"""FusedLamb against a plain LAMB written out formula by formula in float64."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from zero_optim._lamb import FusedLamb

# Odd lengths, so any vectorised torch kernel leaves a scalar tail.
SIZES = (1, 7, 1023, 4099)
STEPS = 20
# FusedLamb runs in fp32, the reference in float64: each step adds a few fp32 roundings of
# the update (relative ~1e-7) to params of magnitude ~1, accumulated over STEPS steps.
ATOL = 1e-5
RTOL = 1e-5
# Trust ratios are quotients of two fp32 norms over up to 4099 elements.
COEFF_RTOL = 1e-5


class RefState:
    def __init__(self, p: torch.Tensor) -> None:
        self.step = 0
        self.m = torch.zeros_like(p, dtype=torch.float64)
        self.v = torch.zeros_like(p, dtype=torch.float64)


def reference_lamb_step(params, grads, states, *, lr=1e-3, bias_correction=True,
                        betas=(0.9, 0.999), eps=1e-8, eps_inside_sqrt=False, weight_decay=0.0,
                        max_grad_norm=0.0, max_coeff=10.0, min_coeff=0.01):  # fmt: skip
    """One LAMB step in float64 over one group; updates ``params`` (float64) in place."""
    beta1, beta2 = betas
    if max_grad_norm > 0:
        total = math.sqrt(sum(float((g * g).sum()) for g in grads))
        scale = max_grad_norm / total if total > max_grad_norm else 1.0
        grads = [g * scale for g in grads]
    coeffs = []
    for p, g, st in zip(params, grads, states):
        st.step += 1
        st.m = beta1 * st.m + (1 - beta1) * g
        st.v = beta2 * st.v + (1 - beta2) * g * g
        bc1 = 1 - beta1**st.step if bias_correction else 1.0
        bc2 = 1 - beta2**st.step if bias_correction else 1.0
        m_hat, v_hat = st.m / bc1, st.v / bc2
        if eps_inside_sqrt:
            update = m_hat / torch.sqrt(v_hat + eps)
        else:
            update = m_hat / (torch.sqrt(v_hat) + eps)
        update = update + weight_decay * p
        w_norm = math.sqrt(float((p * p).sum()))
        u_norm = math.sqrt(float((update * update).sum()))
        trust = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
        trust = min(max(trust, min_coeff), max_coeff)
        p.sub_(lr * trust * update)
        coeffs.append(trust)
    return coeffs


def f32(x: float) -> float:
    """``x`` rounded to fp32, the precision of FusedLamb's trust ratios."""
    return torch.tensor(x, dtype=torch.float32).item()


def make_params(seed: int = 0, scale: float = 1.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(n, generator=gen) for n in SIZES]


def make_grads(steps: int, seed: int = 1, scale: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    return [[scale * torch.randn(n, generator=gen) for n in SIZES] for _ in range(steps)]


def compare_runs(params, grads, hyper) -> list[list[float]]:
    """Run FusedLamb and the reference side by side, checking every step; returns coeffs."""
    ours_p = [p.clone() for p in params]
    ref_p = [p.double() for p in params]
    ref_states = [RefState(p) for p in ref_p]
    opt = FusedLamb(ours_p, **hyper)
    history = []
    for step_grads in grads:
        for p, g in zip(ours_p, step_grads):
            p.grad = g.clone()
        opt.step()
        want = reference_lamb_step(ref_p, [g.double() for g in step_grads], ref_states, **hyper)
        got = opt.get_lamb_coeffs()
        assert len(got) == len(want)
        for c, w in zip(got, want):
            assert c == pytest.approx(w, rel=COEFF_RTOL)
        history.append(got)
    for p, q, st in zip(ours_p, ref_p, ref_states):
        torch.testing.assert_close(p, q.float(), atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(opt.state[p]["exp_avg"], st.m.float(), atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], st.v.float(), atol=ATOL, rtol=RTOL)
        assert opt.state[p]["step"].dtype == torch.float32
        assert opt.state[p]["step"].item() == len(grads)
    return history


CONFIGS = [
    pytest.param({}, id="defaults"),
    pytest.param({"lr": 1e-2, "weight_decay": 0.01}, id="weight_decay"),
    pytest.param({"lr": 1e-2, "eps": 1e-3, "eps_inside_sqrt": True}, id="eps_inside_sqrt"),
    pytest.param({"lr": 1e-2, "eps": 1e-3}, id="eps_outside_sqrt"),
    pytest.param({"lr": 1e-2, "bias_correction": False}, id="no_bias_correction"),
    pytest.param({"lr": 1e-2, "betas": (0.8, 0.9), "weight_decay": 0.1}, id="betas"),
]


@pytest.mark.parametrize("hyper", CONFIGS)
def test_matches_reference(hyper: dict) -> None:
    compare_runs(make_params(), make_grads(STEPS), hyper)


def test_max_grad_norm_clips_without_touching_grads() -> None:
    # Grads of norm ~ 10 * sqrt(5130) >> 1: every step is clipped. eps comparable to the
    # clipped grads makes the update depend on the grads' scale, so clipping shows in params.
    hyper = {"lr": 1e-2, "eps": 1e-3, "max_grad_norm": 1.0, "weight_decay": 0.01}
    grads = make_grads(STEPS, scale=10.0)
    compare_runs(make_params(), grads, hyper)

    params = make_params()
    opt = FusedLamb(params, **hyper)
    originals = [g.clone() for g in grads[0]]
    for p, g in zip(params, grads[0]):
        p.grad = g
    opt.step()
    for p, g in zip(params, originals):
        assert torch.equal(p.grad, g)
    # The moments saw the clipped grads: m = (1 - beta1) * g * max_grad_norm / ||g||.
    total = math.sqrt(sum(float((g.double() ** 2).sum()) for g in originals))
    for p, g in zip(params, originals):
        torch.testing.assert_close(opt.state[p]["exp_avg"], (0.1 * g.double() / total).float())


def test_max_grad_norm_above_the_norm_changes_nothing() -> None:
    grads = make_grads(5, scale=1e-3)
    hyper = {"lr": 1e-2, "eps": 1e-3}
    clipped, plain = make_params(), make_params()
    for params, extra in ((clipped, {"max_grad_norm": 1e3}), (plain, {})):
        opt = FusedLamb(params, **hyper, **extra)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            opt.step()
    for p, q in zip(clipped, plain):
        assert torch.equal(p, q)


def test_trust_ratio_clamped_at_max_coeff() -> None:
    # ||update|| ~ sqrt(n) (the first updates are ~ +-1 per element) while |p| >= 100 per
    # element, so ||p|| / ||update|| >= ~100 > max_coeff every step.
    gen = torch.Generator().manual_seed(5)
    params = [100.0 * (1.0 + torch.rand(n, generator=gen)) for n in SIZES]
    history = compare_runs(params, make_grads(5), {"lr": 1e-3, "max_coeff": 10.0})
    assert all(c == 10.0 for coeffs in history for c in coeffs)


def test_trust_ratio_clamped_at_min_coeff() -> None:
    # |p| <= 2e-5 per element against ||update|| ~ sqrt(n): the ratio is ~1e-5 < min_coeff.
    gen = torch.Generator().manual_seed(6)
    params = [1e-5 * (1.0 + torch.rand(n, generator=gen)) for n in SIZES]
    history = compare_runs(params, make_grads(5), {"lr": 1e-3, "min_coeff": 0.01})
    assert all(c == f32(0.01) for coeffs in history for c in coeffs)


def test_trust_ratio_mixes_bounds_and_ratio() -> None:
    # One tensor per regime in the same group: clamped high, clamped low, unclamped.
    gen = torch.Generator().manual_seed(7)
    params = [
        100.0 * (1.0 + torch.rand(7, generator=gen)),
        1e-5 * (1.0 + torch.rand(1023, generator=gen)),
        torch.randn(4099, generator=gen),
    ]
    opt = FusedLamb(params, lr=1e-3)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
    high, low, mid = opt.get_lamb_coeffs()
    assert high == 10.0
    assert low == f32(0.01)
    assert 0.01 < mid < 10.0


def test_zero_norms_give_trust_one() -> None:
    zero_param = torch.zeros(7)  # ||p|| = 0
    zero_grad = torch.randn(1023)  # zero grad and no weight decay: ||update|| = 0
    before = zero_grad.clone()
    opt = FusedLamb([zero_param, zero_grad], lr=1e-2)
    zero_param.grad = torch.randn(7)
    zero_grad.grad = torch.zeros(1023)
    opt.step()
    assert opt.get_lamb_coeffs() == [1.0, 1.0]
    assert torch.equal(zero_grad, before)
    assert not torch.equal(zero_param, torch.zeros(7))  # moved by lr * 1.0 * update


def test_zero_norm_trust_one_is_clamped() -> None:
    p = torch.zeros(7)
    opt = FusedLamb([p], lr=1e-2, min_coeff=2.0, max_coeff=5.0)
    p.grad = torch.randn(7)
    opt.step()
    assert opt.get_lamb_coeffs() == [2.0]


def test_get_lamb_coeffs_before_any_step() -> None:
    assert FusedLamb([torch.zeros(3)]).get_lamb_coeffs() == []


def test_param_groups_have_their_own_hyper_parameters() -> None:
    params = make_params()
    grads = make_grads(5)
    groups = [
        {"params": params[:2], "lr": 1e-2, "max_coeff": 0.5},
        {"params": params[2:], "weight_decay": 0.1, "eps_inside_sqrt": True},
    ]
    opt = FusedLamb(groups)
    ref_p = [p.double() for p in params]
    ref_states = [RefState(p) for p in ref_p]
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
        g64 = [g.double() for g in step_grads]
        want = reference_lamb_step(ref_p[:2], g64[:2], ref_states[:2], lr=1e-2, max_coeff=0.5)
        want += reference_lamb_step(
            ref_p[2:], g64[2:], ref_states[2:], weight_decay=0.1, eps_inside_sqrt=True
        )
        assert opt.get_lamb_coeffs() == pytest.approx(want, rel=COEFF_RTOL)
    for p, q in zip(params, ref_p):
        torch.testing.assert_close(p, q.float(), atol=ATOL, rtol=RTOL)


def test_params_without_grads_are_skipped() -> None:
    with_grad, without = make_params()[:2]
    before = without.clone()
    opt = FusedLamb([with_grad, without], lr=1e-2)
    with_grad.grad = torch.randn_like(with_grad)
    opt.step()
    assert torch.equal(without, before)
    assert without not in opt.state
    assert len(opt.get_lamb_coeffs()) == 1
    assert opt.state[with_grad]["step"].item() == 1


def test_state_dict_round_trip_is_exact() -> None:
    grads = make_grads(10)
    hyper = {"lr": 1e-2, "weight_decay": 0.01, "max_grad_norm": 5.0, "eps_inside_sqrt": True}
    first_p = make_params()
    first = FusedLamb(first_p, **hyper)
    for step_grads in grads[:5]:
        for p, g in zip(first_p, step_grads):
            p.grad = g.clone()
        first.step()
    second_p = [p.detach().clone() for p in first_p]
    second = FusedLamb(second_p)  # constructor defaults differ: the checkpoint must win
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    for key, value in hyper.items():
        assert second.param_groups[0][key] == value
    for step_grads in grads[5:]:
        for params, opt in ((first_p, first), (second_p, second)):
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            opt.step()
        assert first.get_lamb_coeffs() == second.get_lamb_coeffs()
    for p, q in zip(first_p, second_p):
        assert torch.equal(p, q)


def test_low_precision_params_track_fp32() -> None:
    # bf16 params keep bf16 states (torch's convention); norms are accumulated in fp32.
    params32 = make_params()
    params16 = [p.to(torch.bfloat16) for p in params32]
    opt32, opt16 = FusedLamb(params32, lr=1e-2), FusedLamb(params16, lr=1e-2)
    for step_grads in make_grads(5):
        for p, q, g in zip(params32, params16, step_grads):
            p.grad, q.grad = g.clone(), g.to(torch.bfloat16)
        opt32.step()
        opt16.step()
    for p, q in zip(params32, params16):
        assert opt16.state[q]["exp_avg"].dtype == torch.bfloat16
        torch.testing.assert_close(q.float(), p, atol=5e-2, rtol=2e-2)
    assert opt16.get_lamb_coeffs() == pytest.approx(opt32.get_lamb_coeffs(), rel=2e-2)


def test_sparse_grad_is_refused() -> None:
    p = torch.zeros(4)
    opt = FusedLamb([p])
    p.grad = torch.zeros(4).to_sparse()
    with pytest.raises(ValueError, match="sparse"):
        opt.step()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    hyper = {"lr": 1e-2, "weight_decay": 0.01, "max_grad_norm": 5.0}
    cpu_p = make_params()
    cuda_p = [p.cuda() for p in make_params()]
    cpu_opt, cuda_opt = FusedLamb(cpu_p, **hyper), FusedLamb(cuda_p, **hyper)
    for step_grads in make_grads(STEPS):
        for p, q, g in zip(cpu_p, cuda_p, step_grads):
            p.grad, q.grad = g.clone(), g.cuda()
        cpu_opt.step()
        cuda_opt.step()
        assert cuda_opt.get_lamb_coeffs() == pytest.approx(cpu_opt.get_lamb_coeffs(), rel=1e-5)
    for p, q in zip(cpu_p, cuda_p):
        torch.testing.assert_close(q.cpu(), p, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"amsgrad": True}, ValueError, "amsgrad"),
        ({"lr": -1e-3}, ValueError, "lr"),
        ({"lr": math.nan}, ValueError, "lr"),
        ({"betas": (1.0, 0.999)}, ValueError, r"betas\[0\]"),
        ({"betas": (0.9, 1.5)}, ValueError, r"betas\[1\]"),
        ({"betas": (-0.5, 0.999)}, ValueError, r"betas\[0\]"),
        ({"eps": -1e-8}, ValueError, "eps"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay"),
        ({"max_grad_norm": -1.0}, ValueError, "max_grad_norm"),
        ({"max_coeff": math.inf}, ValueError, "max_coeff"),
        ({"min_coeff": -0.1}, ValueError, "min_coeff"),
        ({"min_coeff": 1.0, "max_coeff": 0.5}, ValueError, "min_coeff must be <= max_coeff"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        FusedLamb([torch.zeros(3)], **kwargs)

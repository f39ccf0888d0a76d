"""Operator counts against hand-computed values (and torch's FlopCounterMode where the two
conventions agree: matrix products and convolutions without bias)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - torch's own spelling

from conftest import count, flop_counter_total
from zero_profiler import supported_operators

N, D_IN, D_OUT = 6, 10, 7


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("leading", [(N,), (2, 3, N)], ids=["2d", "4d-input"])
def test_linear(bias: bool, leading: tuple[int, ...]) -> None:
    x = torch.randn(*leading, D_IN)
    w = torch.randn(D_OUT, D_IN)
    b = torch.randn(D_OUT) if bias else None
    rows = math.prod(leading)
    prof = count(F.linear, x, w, b)
    macs = rows * D_IN * D_OUT
    assert prof.get_total_macs() == macs
    assert prof.get_total_flops() == 2 * macs + (rows * D_OUT if bias else 0)
    # FlopCounterMode counts the product only, so it agrees exactly without a bias
    assert flop_counter_total(F.linear, x, w, b) == 2 * macs


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda a, b: a @ b, id="operator-@"),
        pytest.param(torch.matmul, id="torch.matmul"),
        pytest.param(lambda a, b: a.matmul(b), id="tensor.matmul"),
        pytest.param(lambda a, b: torch.einsum("bij,bjk->bik", a, b), id="einsum"),
        pytest.param(torch.bmm, id="torch.bmm"),
    ],
)
def test_batched_products(call) -> None:
    a, b = torch.randn(3, 5, 4), torch.randn(3, 4, 6)
    prof = count(call, a, b)
    macs = 3 * 5 * 6 * 4
    assert (prof.get_total_macs(), prof.get_total_flops()) == (macs, 2 * macs)
    assert flop_counter_total(call, a, b) == 2 * macs


def test_broadcast_matmul_and_mm_mv_dot() -> None:
    a, b = torch.randn(2, 3, 5, 4), torch.randn(4, 6)  # folds into one (30 x 4) @ (4 x 6)
    assert count(torch.matmul, a, b).get_total_macs() == 2 * 3 * 5 * 6 * 4
    m, v = torch.randn(5, 4), torch.randn(4)
    assert count(torch.mv, m, v).get_total_flops() == 2 * 20
    assert count(torch.dot, v, v).get_total_flops() == 2 * 4
    assert count(torch.mm, m, m.t()).get_total_macs() == 5 * 5 * 4


@pytest.mark.parametrize("beta", [1.0, 0.0], ids=["beta1", "beta0"])
def test_addmm_baddbmm(beta: float) -> None:
    bias = torch.randn(5, 6)
    a, b = torch.randn(5, 4), torch.randn(4, 6)
    prof = count(lambda *t: torch.addmm(*t, beta=beta), bias, a, b)
    assert prof.get_total_flops() == 2 * 5 * 6 * 4 + (30 if beta else 0)
    ba, bb, bc = torch.randn(3, 5, 6), torch.randn(3, 5, 4), torch.randn(3, 4, 6)
    prof = count(lambda *t: torch.baddbmm(*t, beta=beta), ba, bb, bc)
    assert prof.get_total_macs() == 3 * 5 * 6 * 4
    assert prof.get_total_flops() == 2 * 3 * 5 * 6 * 4 + (90 if beta else 0)


def _conv_macs(out_numel: int, w_shape: tuple[int, ...]) -> int:
    return out_numel * w_shape[1] * math.prod(w_shape[2:])


@pytest.mark.parametrize(
    ("fn", "x_shape", "w_shape", "kw"),
    [
        pytest.param(F.conv1d, (2, 4, 17), (6, 4, 3), {}, id="conv1d"),
        pytest.param(F.conv2d, (2, 4, 9, 11), (6, 4, 3, 3), {"stride": 2, "padding": 1}, id="2d"),
        pytest.param(F.conv2d, (2, 4, 9, 9), (8, 2, 3, 3), {"groups": 2}, id="2d-groups"),
        pytest.param(F.conv2d, (1, 6, 8, 8), (6, 1, 3, 3), {"groups": 6}, id="2d-depthwise"),
        pytest.param(F.conv2d, (1, 3, 9, 9), (4, 3, 3, 3), {"dilation": 2}, id="2d-dilated"),
        pytest.param(F.conv3d, (1, 2, 5, 6, 7), (3, 2, 2, 3, 3), {}, id="conv3d"),
    ],
)
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_convolution(fn, x_shape, w_shape, kw, bias: bool) -> None:
    x, w = torch.randn(x_shape), torch.randn(w_shape)
    b = torch.randn(w_shape[0]) if bias else None
    out_numel = fn(x, w, b, **kw).numel()
    macs = _conv_macs(out_numel, w_shape)
    prof = count(lambda x, w: fn(x, w, b, **kw), x, w)
    assert prof.get_total_macs() == macs
    assert prof.get_total_flops() == 2 * macs + (out_numel if bias else 0)
    if not bias:
        assert flop_counter_total(lambda x, w: fn(x, w, None, **kw), x, w) == 2 * macs


@pytest.mark.parametrize(
    ("fn", "x_shape", "w_shape", "kw"),
    [
        pytest.param(F.conv_transpose1d, (2, 4, 7), (4, 3, 3), {"stride": 2}, id="t1d"),
        pytest.param(F.conv_transpose2d, (1, 4, 5, 5), (4, 6, 3, 3), {}, id="t2d"),
        pytest.param(F.conv_transpose2d, (1, 4, 5, 5), (4, 3, 3, 3), {"groups": 2}, id="t2d-g"),
        pytest.param(F.conv_transpose3d, (1, 2, 3, 4, 4), (2, 3, 2, 2, 2), {}, id="t3d"),
    ],
)
def test_transposed_convolution(fn, x_shape, w_shape, kw) -> None:
    """Each input element is scattered into C_out/groups * prod(kernel) outputs."""
    x, w = torch.randn(x_shape), torch.randn(w_shape)
    macs = math.prod(x_shape) * w_shape[1] * math.prod(w_shape[2:])
    prof = count(lambda x, w: fn(x, w, **kw), x, w)
    assert (prof.get_total_macs(), prof.get_total_flops()) == (macs, 2 * macs)
    assert flop_counter_total(lambda x, w: fn(x, w, **kw), x, w) == 2 * macs


B, H, L, E = 2, 3, 8, 4


def _explicit_attention(q, k, v):
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    return F.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1) @ v


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


@pytest.mark.parametrize("attention", [_explicit_attention, _sdpa], ids=["explicit", "sdpa"])
def test_attention_forward_and_backward(attention) -> None:
    """Fused SDPA counts what the same attention written out as bmm/mul/softmax/bmm counts."""
    q, k, v = (torch.randn(B, H, L, E, requires_grad=True) for _ in range(3))
    prof = count(attention, q, k, v, backward=True)
    scores = B * H * L * L
    macs = scores * (E + E)
    assert prof.get_total_macs() == macs
    assert prof.get_total_flops() == 2 * macs + scores * (1 + 5)  # scale + softmax
    assert prof.get_total_backward_macs() == 2 * macs
    # four products, the scale's backward (1) and the softmax's backward (4) per score
    assert prof.get_total_backward_flops() == 4 * macs + scores * 5


def test_sdpa_is_counted_where_flop_counter_agrees_on_products() -> None:
    q, k, v = (torch.randn(B, H, L, E) for _ in range(3))
    products = 2 * B * H * L * L * (E + E)
    assert flop_counter_total(_explicit_attention, q, k, v) == products
    assert count(_sdpa, q, k, v).get_total_macs() * 2 == products


@pytest.mark.parametrize(
    ("fn", "per_element"),
    [
        pytest.param(torch.relu, 1, id="relu"),
        pytest.param(F.gelu, 1, id="gelu"),
        pytest.param(F.silu, 1, id="silu"),
        pytest.param(torch.tanh, 1, id="tanh"),
        pytest.param(lambda x: x + 1, 1, id="add"),
        pytest.param(lambda x: x.mul(x), 1, id="mul-method"),
        pytest.param(lambda x: torch.exp(x), 1, id="exp"),
        pytest.param(lambda x: x.clone().mul_(3), 1, id="inplace-mul"),
        pytest.param(lambda x: torch.addcmul(x, x, x), 2, id="addcmul"),
        pytest.param(lambda x: F.softmax(x, -1), 5, id="softmax"),
        pytest.param(lambda x: F.log_softmax(x, -1), 5, id="log_softmax"),
        pytest.param(lambda x: F.layer_norm(x, x.shape[-1:]), 5, id="layer_norm"),
        pytest.param(
            lambda x: F.layer_norm(x, x.shape[-1:], torch.ones(6), torch.zeros(6)),
            7,
            id="layer_norm-affine",
        ),
        pytest.param(lambda x: F.group_norm(x, 2), 5, id="group_norm"),
        pytest.param(lambda x: x.sum(), 1, id="sum"),
        pytest.param(lambda x: x.var(), 3, id="var"),
        pytest.param(lambda x: x > 0, 1, id="compare"),
        pytest.param(lambda x: x.view(-1).t().contiguous(), 0, id="views"),
        pytest.param(lambda x: torch.cat([x, x]), 0, id="cat"),
    ],
)
def test_elementwise_and_reductions(fn, per_element: int) -> None:
    x = torch.randn(4, 6)
    prof = count(fn, x)
    assert prof.get_total_flops() == per_element * x.numel()
    assert prof.get_total_macs() == 0
    assert prof.unknown_operators() == {}


@pytest.mark.parametrize(
    ("fn", "flops"),
    [
        pytest.param(lambda x: F.max_pool2d(x, 2), 2 * 3 * 4 * 4 * 4, id="max_pool2d"),
        pytest.param(lambda x: F.avg_pool2d(x, 3, stride=1), 2 * 3 * 6 * 6 * 9, id="avg_pool2d"),
        pytest.param(lambda x: F.adaptive_avg_pool2d(x, 1), 2 * 3 * 8 * 8, id="adaptive_avg"),
    ],
)
def test_pooling(fn, flops: int) -> None:
    prof = count(fn, torch.randn(2, 3, 8, 8, requires_grad=True), backward=True)
    assert prof.get_total_flops() == flops
    assert prof.get_total_backward_flops() == 2 * 3 * 8 * 8  # one per input-gradient element
    assert prof.unknown_operators() == {}


def test_batch_norm_train_and_eval() -> None:
    x = torch.randn(4, 3, 5)
    mean, var = torch.zeros(3), torch.ones(3)
    w, b = torch.ones(3), torch.zeros(3)
    train = count(lambda x: F.batch_norm(x, mean.clone(), var.clone(), w, b, training=True), x)
    assert train.get_total_flops() == 7 * x.numel()
    infer = count(lambda x: F.batch_norm(x, mean, var, w, b, training=False), x)
    assert infer.get_total_flops() == 4 * x.numel()


def test_integer_ops_are_not_flops() -> None:
    idx = torch.arange(12)
    assert count(lambda i: (i * 2 + 1).sum(), idx).get_total_flops() == 0


def test_unknown_operator_is_listed_not_silently_zero() -> None:
    x = torch.randn(10)
    prof = count(lambda x: torch.sort(x).values * 2, x)
    assert prof.unknown_operators() == {"aten.sort.default": 1}
    assert prof.get_total_flops() == 10  # the mul; the sort is listed instead of guessed
    text = prof.print_model_profile(output_file=None)
    assert "aten.sort.default: 1 call (in Call)" in text


def test_flops_by_operator_sums_to_total() -> None:
    x, w = torch.randn(5, 4), torch.randn(3, 4)
    prof = count(lambda x, w: torch.relu(F.linear(x, w)), x, w)
    assert prof.flops_by_operator() == {"aten.mm.default": 2 * 5 * 3 * 4, "aten.relu.default": 15}


def test_supported_operators_names() -> None:
    ops = supported_operators()
    for name in ("mm", "addmm", "bmm", "convolution", "convolution_backward", "view"):
        assert name in ops
    assert "_scaled_dot_product_flash_attention_for_cpu" in ops


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_counts_match_cpu() -> None:
    """Fused CUDA attention kernels and cuBLAS products count like their CPU twins."""
    q, k, v = (torch.randn(B, H, L, E, requires_grad=True) for _ in range(3))
    cpu = count(_sdpa, q, k, v, backward=True)
    gpu = count(_sdpa, *(t.detach().cuda().requires_grad_() for t in (q, k, v)), backward=True)
    assert gpu.get_total_flops() == cpu.get_total_flops()
    assert gpu.get_total_backward_flops() == cpu.get_total_backward_flops()


def test_collectives_and_profiler_markers_are_free_not_unknown(tmp_path) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:

        def step(x: torch.Tensor) -> torch.Tensor:
            with torch.autograd.profiler.record_function("a range"):
                y = x * 2
            dist.all_reduce(y)
            return y

        prof = count(step, torch.randn(8))
    finally:
        dist.destroy_process_group()
    assert prof.unknown_operators() == {}
    assert prof.get_total_flops() == 8


def test_partitioned_parameters_count_their_full_size() -> None:
    """A ZeRO stage-3 parameter is empty between uses and carries ``ds_numel``."""
    from zero_profiler import FlopsProfiler

    model = torch.nn.Linear(4, 3)
    model.weight.ds_numel = 12
    model.weight.data = torch.empty(0)
    assert FlopsProfiler(model).get_total_params() == 12 + 3

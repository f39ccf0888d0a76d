"""Flop and MAC counts of individual ATen operators, from their arguments and results.

[Note: counting convention]
The profiler counts every ATen operator a model runs (forward and, in training, backward)
with the rules below. They are a convention, chosen to be simple to state and to check by
hand; they are not the number of machine instructions.

* **Matrix products** (``mm``, ``bmm``, ``addmm``, ``baddbmm``, ``mv``, ``dot``, convolutions
  of every dimension, grouped and transposed, and the two products inside fused attention)
  count one MAC per multiply-accumulate and **2 flops per MAC**. A product of an
  ``m x k`` by a ``k x n`` matrix is ``m*n*k`` MACs and ``2*m*n*k`` flops.
* **Bias and accumulate terms** fused into a product (``addmm``'s and ``baddbmm``'s
  ``input``, a convolution's bias) count **1 flop per output element**.
* **Elementwise arithmetic** (add, sub, mul, div, pow, sqrt, rsqrt, exp, log, tanh, sigmoid,
  relu, gelu, silu, clamp, maximum, comparisons, ...) counts **1 flop per output element**,
  whatever the function costs in instructions. Fused ``addcmul``/``addcdiv``/``lerp`` count 2.
  Activation backward ops (``gelu_backward``, ...) count 2 (derivative and product), except
  ``threshold_backward`` (ReLU's backward, a select) which counts 1.
* **Reductions** (sum, mean, amax, amin, prod, cumsum, argmax) count **1 flop per input
  element**; ``var``/``std`` count 3, vector norms 2.
* **Softmax** and log-softmax count **5 flops per element** (max, subtract, exp, sum,
  normalize); their backward ops count 4.
* **Normalization** (layer, group, batch norm in training) counts **5 flops per element**
  (mean, subtract, square, variance, scale) plus 1 for the weight and 1 for the bias when
  present; batch norm with running statistics counts 2 plus the affine terms. Their backward
  ops count 8 per element for the input gradient, 2 for the weight gradient and 1 for the
  bias gradient.
* **Fused scaled-dot-product attention** counts its two products (``Lq*Lk*(E+Ev)`` MACs per
  batch and head), plus 1 flop per score for the scaling and 5 for the softmax, which is
  exactly what the same attention written as ``bmm``, ``mul``, ``softmax``, ``bmm`` counts.
  Its backward counts the four products the gradients need (twice the forward MACs), 1 flop
  per score for the scaling and 4 for the softmax backward. Causal masking is not
  discounted (the explicit form computes the masked scores too), and the recomputation that
  memory-efficient kernels do in backward is not added: we count the operator's math, not a
  kernel's schedule.
* **Pooling** counts 1 flop per element of each window (``out.numel() * prod(kernel)``);
  adaptive pooling 1 per input element; pooling backward 1 per input-gradient element.
* **Losses**: ``mse_loss`` 3 flops per element (its backward 2), ``nll_loss`` 1 per target.
* **Data movement** (views, copies, ``cat``, indexing, gathers, embedding lookups, masked
  fills, random number generation, tensor creation) counts **0**, and is known to be 0.
  Scatter-adds (``embedding_dense_backward``, ``index_add``, accumulating ``index_put``)
  count 1 flop per added element.
* Ops on integer or boolean tensors count 0 (they are not floating-point operations), except
  comparisons of floating-point inputs.

Every other operator is *unknown*: it is counted as 0 but recorded by name, and the report
lists it, so a missing rule is visible instead of silently scoring nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["ZERO_FLOP_OPS", "Rule", "rule_for", "supported_operators"]

aten = torch.ops.aten

#: ``rule(args, kwargs, out) -> (flops, macs)``; ``args``/``kwargs`` as the op received them.
Rule = Callable[[tuple, dict, Any], tuple[int, int]]

_RULES: dict[str, Rule] = {}
#: Operators known to do no floating-point arithmetic (by ATen packet name).
ZERO_FLOP_OPS: frozenset[str] = frozenset(
    """
    view _unsafe_view reshape _reshape_alias view_as t transpose permute expand expand_as
    squeeze unsqueeze slice select split split_with_sizes unbind narrow as_strided alias
    detach clone contiguous _to_copy copy copy_ to cat stack empty empty_like empty_strided
    new_empty new_empty_strided new_zeros new_ones new_full zeros zeros_like ones ones_like
    full full_like fill fill_ zero zero_ arange linspace scalar_tensor lift_fresh
    lift_fresh_copy rand rand_like randn randn_like randint randint_like randperm bernoulli
    bernoulli_ normal normal_ uniform_ random_ exponential_ embedding index index_select gather
    scatter masked_fill masked_fill_ masked_select where tril triu tril_ triu_ select_backward
    slice_backward as_strided_scatter slice_scatter select_scatter diagonal diagonal_backward
    _local_scalar_dense repeat roll flip constant_pad_nd unfold view_as_real view_as_complex
    logical_not logical_and logical_or logical_xor bitwise_not bitwise_and bitwise_or
    bitwise_xor nonzero one_hot _assert_async _assert_tensor_metadata set_ resize_ is_same_size
    _has_compatible_shallow_copy_type _pin_memory record_stream sym_size sym_stride
    sym_numel _unsafe_index upsample_nearest1d upsample_nearest2d upsample_nearest3d
    pixel_shuffle pixel_unshuffle channel_shuffle im2col col2im
    _unsafe_view_copy view_copy permute_copy transpose_copy expand_copy t_copy unsqueeze_copy
    squeeze_copy detach_ alias_copy split_copy unbind_copy _conj _neg_view resolve_conj
    resolve_neg native_dropout_backward_mask
    """.split()  # noqa: SIM905 - a word list reads better than 140 quoted strings
)


def _register(*names: str) -> Callable[[Rule], Rule]:
    def decorate(rule: Rule) -> Rule:
        for name in names:
            _RULES[name] = rule
        return rule

    return decorate


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default) if kwargs else default


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _is_float(t: torch.Tensor | None) -> bool:
    return t is not None and (t.is_floating_point() or t.is_complex())


# -- matrix products ----------------------------------------------------------------------


def _mm_macs(a: torch.Tensor, b: torch.Tensor) -> int:
    return a.shape[0] * b.shape[1] * a.shape[1]


def _bmm_macs(a: torch.Tensor, b: torch.Tensor) -> int:
    return a.shape[0] * a.shape[1] * b.shape[2] * a.shape[2]


def _nonzero(value: Any) -> bool:
    return value is None or value != 0


@_register("mm")
def _mm(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    macs = _mm_macs(args[0], args[1])
    return 2 * macs, macs


@_register("addmm")
def _addmm(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    macs = _mm_macs(args[1], args[2])
    bias = out.numel() if _nonzero(_arg(args, kwargs, 3, "beta", 1)) else 0
    return 2 * macs + bias, macs


@_register("_addmm_activation")
def _addmm_activation(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    flops, macs = _addmm(args[:3], {}, out)
    return flops + out.numel(), macs


@_register("bmm")
def _bmm(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    macs = _bmm_macs(args[0], args[1])
    return 2 * macs, macs


@_register("baddbmm")
def _baddbmm(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    macs = _bmm_macs(args[1], args[2])
    bias = out.numel() if _nonzero(_arg(args, kwargs, 3, "beta", 1)) else 0
    return 2 * macs + bias, macs


@_register("addbmm")
def _addbmm(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    b1, b2 = args[1], args[2]
    macs = _bmm_macs(b1, b2)
    # the batch of products is also summed into one matrix: (batch - 1) adds per element
    summed = (b1.shape[0] - 1) * out.numel()
    bias = out.numel() if _nonzero(_arg(args, kwargs, 3, "beta", 1)) else 0
    return 2 * macs + summed + bias, macs


@_register("mv", "dot", "vdot")
def _mv(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    macs = args[0].numel()  # one multiply-accumulate per matrix (or vector) element
    return 2 * macs, macs


@_register("addmv")
def _addmv(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    macs = args[1].numel()
    bias = out.numel() if _nonzero(_arg(args, kwargs, 3, "beta", 1)) else 0
    return 2 * macs + bias, macs


@_register("matmul")
def _matmul(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    # Normally decomposed into mm/bmm before it reaches the profiler; kept for backends that
    # dispatch it whole. Every output element is a length-k dot product.
    k = args[0].shape[-1]
    macs = out.numel() * k
    return 2 * macs, macs


@_register("linear")
def _linear(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    weight = args[1]
    macs = out.numel() * weight.shape[-1]
    bias = out.numel() if _arg(args, kwargs, 2, "bias") is not None else 0
    return 2 * macs + bias, macs


# -- convolutions --------------------------------------------------------------------------


def _conv_macs(
    x_shape: Sequence[int], w_shape: Sequence[int], out_shape: Sequence[int], transposed: bool
) -> int:
    """MACs of one convolution.

    A regular convolution's weight is ``[C_out, C_in/groups, *kernel]`` and every output
    element is a dot product over ``C_in/groups * prod(kernel)`` inputs. A transposed
    convolution's weight is ``[C_in, C_out/groups, *kernel]`` and every *input* element is
    scattered into ``C_out/groups * prod(kernel)`` outputs, which is the same arithmetic
    read the other way round.
    """
    per_element = w_shape[1] * math.prod(w_shape[2:])
    return math.prod(x_shape if transposed else out_shape) * per_element


@_register("convolution", "_convolution")
def _convolution(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    x, w, bias = args[0], args[1], _arg(args, kwargs, 2, "bias")
    transposed = bool(_arg(args, kwargs, 6, "transposed", False))
    macs = _conv_macs(x.shape, w.shape, out.shape, transposed)
    return 2 * macs + (out.numel() if bias is not None else 0), macs


@_register("convolution_backward")
def _convolution_backward(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    grad_out, x, w = args[0], args[1], args[2]
    transposed = bool(_arg(args, kwargs, 7, "transposed", False))
    mask = _arg(args, kwargs, 10, "output_mask", (True, True, True))
    macs_one = _conv_macs(x.shape, w.shape, grad_out.shape, transposed)
    macs = macs_one * (int(bool(mask[0])) + int(bool(mask[1])))
    bias = grad_out.numel() if mask[2] else 0
    return 2 * macs + bias, macs


# -- attention -----------------------------------------------------------------------------


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads_dim: int) -> tuple:
    """(batch*heads, Lq, Lk, E, Ev) of an attention call; ``heads_dim`` is 1 for
    ``[B, H, L, E]`` layouts and 2 for ``[B, L, H, E]`` (the ``_flash_attention_forward``
    family). Grouped-query attention (fewer key/value heads) counts the query heads."""
    seq_dim = 3 - heads_dim
    bh = q.shape[0] * q.shape[heads_dim]
    return bh, q.shape[seq_dim], k.shape[seq_dim], q.shape[-1], v.shape[-1]


def _sdpa_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads_dim: int = 1):
    bh, lq, lk, e, ev = _attention(q, k, v, heads_dim)
    macs = bh * lq * lk * (e + ev)
    scores = bh * lq * lk
    return 2 * macs + 6 * scores, macs  # scale (1) + softmax (5) per score


def _sdpa_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads_dim: int = 1):
    bh, lq, lk, e, ev = _attention(q, k, v, heads_dim)
    macs = 2 * bh * lq * lk * (e + ev)
    scores = bh * lq * lk
    return 2 * macs + 5 * scores, macs  # scale (1) + softmax backward (4) per score


@_register(
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
)
def _sdpa(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    return _sdpa_forward(args[0], args[1], args[2])


@_register(
    "_scaled_dot_product_flash_attention_for_cpu_backward",
    "_scaled_dot_product_flash_attention_backward",
    "_scaled_dot_product_efficient_attention_backward",
    "_scaled_dot_product_cudnn_attention_backward",
    "_scaled_dot_product_fused_attention_overrideable_backward",
)
def _sdpa_bwd(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    return _sdpa_backward(args[1], args[2], args[3])  # args[0] is the output's gradient


@_register("_flash_attention_forward", "_efficient_attention_forward")
def _flash_fwd(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    return _sdpa_forward(args[0], args[1], args[2], heads_dim=2)


@_register("_flash_attention_backward", "_efficient_attention_backward")
def _flash_bwd(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    return _sdpa_backward(args[1], args[2], args[3], heads_dim=2)


# -- elementwise, reductions, normalization -----------------------------------------------


def _per_output(flops_per_element: int) -> Rule:
    """Rule for an op costing ``flops_per_element`` per floating-point output element."""

    def rule(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
        t = out if isinstance(out, torch.Tensor) else _first_tensor(out)
        return (flops_per_element * t.numel() if _is_float(t) else 0), 0

    return rule


def _per_input(flops_per_element: int) -> Rule:
    """Rule for an op costing ``flops_per_element`` per element of its first input, when that
    input is floating point (reductions, comparisons)."""

    def rule(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
        t = _first_tensor(args)
        return (flops_per_element * t.numel() if _is_float(t) else 0), 0

    return rule


def _with_inplace(names: str) -> list[str]:
    return [variant for name in names.split() for variant in (name, f"{name}_")]


_register(
    *_with_inplace(
        """add sub rsub mul div neg reciprocal pow sqrt rsqrt exp exp2 expm1 log log2 log10
        log1p sin cos tan asin acos atan atan2 sinh cosh tanh asinh acosh atanh sigmoid relu
        relu6 gelu silu mish elu celu selu leaky_relu hardtanh hardswish hardsigmoid softplus
        softshrink hardshrink threshold abs sign sgn clamp clamp_min clamp_max clip maximum
        minimum fmax fmin floor ceil round trunc frac remainder fmod erf erfc erfinv square
        true_divide floor_divide xlogy hypot copysign logit nan_to_num sinc heaviside
        logaddexp logaddexp2 float_power rrelu_with_noise"""
    ),
    "_prelu_kernel",
    "log_sigmoid_forward",
)(_per_output(1))
_register(*_with_inplace("addcmul addcdiv lerp"), "glu")(_per_output(2))
_register(
    "gelu_backward",
    "silu_backward",
    "sigmoid_backward",
    "tanh_backward",
    "elu_backward",
    "leaky_relu_backward",
    "hardtanh_backward",
    "hardswish_backward",
    "hardsigmoid_backward",
    "softplus_backward",
    "mish_backward",
    "log_sigmoid_backward",
    "glu_backward",
    "_prelu_kernel_backward",
)(_per_output(2))
_register("threshold_backward")(_per_output(1))
_register(*_with_inplace("eq ne lt le gt ge"), "isnan", "isinf", "isfinite", "isclose")(
    _per_input(1)
)
_register(
    "sum",
    "mean",
    "nansum",
    "nanmean",
    "amax",
    "amin",
    "max",
    "min",
    "aminmax",
    "prod",
    "cumsum",
    "cumprod",
    "argmax",
    "argmin",
    "logsumexp",
)(_per_input(1))
_register("var", "std", "var_mean", "std_mean")(_per_input(3))
_register("norm", "linalg_vector_norm", "frobenius_norm")(_per_input(2))
_register("_softmax", "_log_softmax", "_safe_softmax")(_per_output(5))
_register("_softmax_backward_data", "_log_softmax_backward_data")(_per_output(4))
_register("mse_loss")(_per_input(3))
_register("mse_loss_backward")(_per_input(2))


@_register("nll_loss_forward", "nll_loss2d_forward")
def _nll_loss(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    return _arg(args, kwargs, 1, "target").numel(), 0  # one (weighted) add per target


@_register("nll_loss_backward", "nll_loss2d_backward")
def _nll_loss_backward(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    return _arg(args, kwargs, 2, "target").numel(), 0  # one scaled write per target


@_register("native_dropout", "_fused_dropout")
def _dropout(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    train = _arg(args, kwargs, 2, "train", True)
    return (args[0].numel() if train is not False else 0), 0


_register("native_dropout_backward")(_per_output(1))


@_register("embedding_dense_backward", "embedding_backward")
def _embedding_backward(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    return args[0].numel(), 0  # every row of the output's gradient is added into the table


@_register("index_add", "index_add_", "scatter_add", "scatter_add_", "scatter_reduce")
def _scatter_add(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    source = args[3] if len(args) > 3 and isinstance(args[3], torch.Tensor) else args[-1]
    return (source.numel() if _is_float(source) else 0), 0


@_register("_index_put_impl_", "_index_put_impl", "index_put", "index_put_")
def _index_put(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    accumulate = _arg(args, kwargs, 3, "accumulate", False)
    values = args[2]
    return (values.numel() if accumulate and _is_float(values) else 0), 0


def _affine(args: tuple, kwargs: dict, weight_index: int, numel: int) -> int:
    weight = _arg(args, kwargs, weight_index, "weight")
    bias = _arg(args, kwargs, weight_index + 1, "bias")
    return numel * ((weight is not None) + (bias is not None))


@_register("native_layer_norm")
def _layer_norm(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    n = args[0].numel()
    return 5 * n + _affine(args, kwargs, 2, n), 0


@_register("native_group_norm")
def _group_norm(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    n = args[0].numel()
    return 5 * n + _affine(args, kwargs, 1, n), 0


@_register("native_batch_norm", "_native_batch_norm_legit", "cudnn_batch_norm", "miopen_batch_norm")
def _batch_norm(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    n = args[0].numel()
    training = _arg(args, kwargs, 5, "training", True)
    if len(args) == 7 and isinstance(args[3], bool):  # _native_batch_norm_legit without stats
        training = args[3]
    return (5 if training else 2) * n + _affine(args, kwargs, 1, n), 0


@_register("_native_batch_norm_legit_no_training")
def _batch_norm_eval(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    n = args[0].numel()
    return 2 * n + _affine(args, kwargs, 1, n), 0


def _norm_backward(grad: torch.Tensor, mask: Sequence[bool]) -> int:
    n = grad.numel()
    return n * (8 * bool(mask[0]) + 2 * bool(mask[1]) + 1 * bool(mask[2]))


@_register("native_layer_norm_backward")
def _layer_norm_backward(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    return _norm_backward(args[0], _arg(args, kwargs, 7, "output_mask", (True,) * 3)), 0


@_register("native_group_norm_backward")
def _group_norm_backward(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    return _norm_backward(args[0], _arg(args, kwargs, 9, "output_mask", (True,) * 3)), 0


@_register("native_batch_norm_backward", "cudnn_batch_norm_backward", "miopen_batch_norm_backward")
def _batch_norm_backward(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    mask = _arg(args, kwargs, 9, "output_mask", (True,) * 3)
    if not isinstance(mask, (list, tuple)):
        mask = (True,) * 3
    return _norm_backward(args[0], mask), 0


@_register("_fused_rms_norm")
def _rms_norm(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    n = args[0].numel()
    weight = _arg(args, kwargs, 2, "weight")
    return 4 * n + (n if weight is not None else 0), 0  # square, mean, rsqrt-scale, multiply


@_register(
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "max_pool2d_with_indices",
    "max_pool3d_with_indices",
)
def _pool(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    kernel = _arg(args, kwargs, 1, "kernel_size")
    first = out[0] if isinstance(out, (tuple, list)) else out
    if not _is_float(first):
        return 0, 0
    spatial = first.dim() - 2 if first.dim() > 2 else first.dim() - 1
    size = [kernel] * spatial if isinstance(kernel, int) else list(kernel)
    if len(size) == 1:
        size = size * spatial
    return first.numel() * math.prod(size), 0  # one add or compare per window element


@_register(
    "_adaptive_avg_pool2d",
    "_adaptive_avg_pool3d",
    "adaptive_avg_pool1d",
    "adaptive_max_pool2d",
    "adaptive_max_pool3d",
)
def _adaptive_pool(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    return (args[0].numel() if _is_float(args[0]) else 0), 0  # windows tile the input


_register(
    "avg_pool2d_backward",
    "avg_pool3d_backward",
    "max_pool2d_with_indices_backward",
    "max_pool3d_with_indices_backward",
    "_adaptive_avg_pool2d_backward",
    "_adaptive_avg_pool3d_backward",
    "adaptive_max_pool2d_backward",
    "adaptive_max_pool3d_backward",
)(_per_output(1))


def rule_for(name: str) -> Rule | None:
    """The rule for an ATen packet name (``"addmm"``), or None when there is none."""
    return _RULES.get(name)


def supported_operators() -> list[str]:
    """Every ATen operator (packet name) with a flop rule or known to cost nothing."""
    return sorted({*_RULES, *ZERO_FLOP_OPS})

// The optimizer math, written once and compiled once per instruction set.
// See [Note: one kernel source, several instruction sets] in common.hpp: this file must be
// included inside a per-ISA namespace (ZO_ISA_NS) and must not use standard-library
// templates, so every function it produces is private to that ISA's translation unit.
//
// The loops are plain element-wise code over `__restrict` pointers; compiled with -O3 and the
// ISA's flags they vectorize (conversions included: bf16 is integer shifts, fp16 uses the
// hardware converts where the ISA has them). Each element is read once and written once per
// step, which is the minimum traffic an optimizer step can have.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "common.hpp"

#ifndef ZO_ISA_NS
#error "define ZO_ISA_NS before including kernels_impl.hpp"
#endif

namespace zero_optim {
namespace ZO_ISA_NS {
namespace {

struct BFloat16 {
  std::uint16_t bits;
};
using Half = _Float16;

inline float bits_to_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline std::uint32_t float_to_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float load(float x) { return x; }
inline float load(BFloat16 x) { return bits_to_float(static_cast<std::uint32_t>(x.bits) << 16); }
inline float load(Half x) { return static_cast<float>(x); }

template <typename T>
inline T store(float x);

template <>
inline float store<float>(float x) {
  return x;
}

// Round to nearest even, as torch does; NaN stays a (quiet) NaN.
template <>
inline BFloat16 store<BFloat16>(float x) {
  const std::uint32_t u = float_to_bits(x);
  const std::uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const bool is_nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  BFloat16 out;
  out.bits = static_cast<std::uint16_t>(is_nan ? 0x7FC0u : rounded);
  return out;
}

template <>
inline Half store<Half>(float x) {
  return static_cast<Half>(x);
}

inline float sqrt_f(float x) { return __builtin_sqrtf(x); }

// sign() with torch's convention: 0 for 0, NaN for NaN.
inline float sign_f(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x * 0.0f); }

// ---------------------------------------------------------------------------------------
// Adam / AdamW, the arithmetic of torch.optim.Adam's single-tensor path, in fp32:
//   grad += l2 * param                      (Adam with L2; l2 = 0 for AdamW)
//   m = m + (1 - beta1) * (grad - m)        (torch's lerp)
//   v = v * beta2 + (1 - beta2) * grad * grad
//   param = param * decay                   (AdamW: 1 - lr * wd)
//   param = param - step_size * m / (sqrt(v) / sqrt(bias_correction2) + eps)
template <typename P, typename G, typename S, typename C, bool kL2>
void adam_loop(P* __restrict p, const G* __restrict g, S* __restrict m, S* __restrict v,
               C* __restrict copy, std::size_t n, const AdamScalars& s) {
  const float b1c = s.one_minus_beta1, b2 = s.beta2, b2c = s.one_minus_beta2;
  const float eps = s.eps, inv_bc2 = 1.0f / s.bias_correction2_sqrt, decay = s.decay, l2 = s.l2;
  const float neg_step = -s.step_size;
  for (std::size_t i = 0; i < n; ++i) {
    float param = load(p[i]);
    float grad = load(g[i]);
    if (kL2) grad = grad + l2 * param;
    float mi = load(m[i]);
    mi = mi + b1c * (grad - mi);
    float vi = load(v[i]);
    vi = vi * b2 + b2c * grad * grad;
    const float denom = sqrt_f(vi) * inv_bc2 + eps;
    param = param * decay;
    param = param + neg_step * (mi / denom);
    m[i] = store<S>(mi);
    v[i] = store<S>(vi);
    p[i] = store<P>(param);
    if (copy != nullptr) copy[i] = store<C>(param);
  }
}

template <typename P, typename G, typename S, typename C>
struct AdamOp {
  using Scalars = AdamScalars;
  static void run(const TensorSlots& t, const Scalars& s, std::size_t b, std::size_t e) {
    P* p = static_cast<P*>(t.param) + b;
    const G* g = static_cast<const G*>(t.grad) + b;
    S* m = static_cast<S*>(t.state_a) + b;
    S* v = static_cast<S*>(t.state_b) + b;
    C* c = t.copy == nullptr ? nullptr : static_cast<C*>(t.copy) + b;
    if (s.l2 != 0.0f) {
      adam_loop<P, G, S, C, true>(p, g, m, v, c, e - b, s);
    } else {
      adam_loop<P, G, S, C, false>(p, g, m, v, c, e - b, s);
    }
  }
};

// ---------------------------------------------------------------------------------------
// Adagrad, torch.optim.Adagrad's single-tensor path:
//   grad += l2 * param; sum = sum + grad * grad; param = param - clr * grad / (sqrt(sum) + eps)
template <typename P, typename G, typename S, typename C, bool kL2>
void adagrad_loop(P* __restrict p, const G* __restrict g, S* __restrict sum, C* __restrict copy,
                  std::size_t n, const AdagradScalars& s) {
  const float neg_clr = -s.clr, eps = s.eps, l2 = s.l2;
  for (std::size_t i = 0; i < n; ++i) {
    float param = load(p[i]);
    float grad = load(g[i]);
    if (kL2) grad = grad + l2 * param;
    float acc = load(sum[i]);
    acc = acc + grad * grad;
    const float std_dev = sqrt_f(acc) + eps;
    param = param + neg_clr * (grad / std_dev);
    sum[i] = store<S>(acc);
    p[i] = store<P>(param);
    if (copy != nullptr) copy[i] = store<C>(param);
  }
}

template <typename P, typename G, typename S, typename C>
struct AdagradOp {
  using Scalars = AdagradScalars;
  static void run(const TensorSlots& t, const Scalars& s, std::size_t b, std::size_t e) {
    P* p = static_cast<P*>(t.param) + b;
    const G* g = static_cast<const G*>(t.grad) + b;
    S* sum = static_cast<S*>(t.state_a) + b;
    C* c = t.copy == nullptr ? nullptr : static_cast<C*>(t.copy) + b;
    if (s.l2 != 0.0f) {
      adagrad_loop<P, G, S, C, true>(p, g, sum, c, e - b, s);
    } else {
      adagrad_loop<P, G, S, C, false>(p, g, sum, c, e - b, s);
    }
  }
};

// ---------------------------------------------------------------------------------------
// Lion (Chen et al. 2023), decoupled weight decay:
//   update = sign(beta1 * m + (1 - beta1) * grad)
//   param = param * decay - lr * update;   m = beta2 * m + (1 - beta2) * grad
template <typename P, typename G, typename S, typename C>
struct LionOp {
  using Scalars = LionScalars;
  static void run(const TensorSlots& t, const Scalars& s, std::size_t b, std::size_t e) {
    P* __restrict p = static_cast<P*>(t.param) + b;
    const G* __restrict g = static_cast<const G*>(t.grad) + b;
    S* __restrict m = static_cast<S*>(t.state_a) + b;
    C* __restrict c = t.copy == nullptr ? nullptr : static_cast<C*>(t.copy) + b;
    const float lr = s.lr, b1 = s.beta1, b1c = s.one_minus_beta1, b2 = s.beta2;
    const float b2c = s.one_minus_beta2, decay = s.decay;
    const std::size_t n = e - b;
    for (std::size_t i = 0; i < n; ++i) {
      const float grad = load(g[i]);
      const float mi = load(m[i]);
      const float update = sign_f(b1 * mi + b1c * grad);
      const float param = load(p[i]) * decay - lr * update;
      m[i] = store<S>(b2 * mi + b2c * grad);
      p[i] = store<P>(param);
      if (c != nullptr) c[i] = store<C>(param);
    }
  }
};

// ---------------------------------------------------------------------------------------
// Dtype dispatch. Supported combinations (checked again by the caller before dispatch):
//   param fp32: grad fp32/bf16/fp16, state fp32, copy none/bf16/fp16
//   param bf16 or fp16: grad fp32 or the param's dtype, state fp32 or the param's dtype,
//   no copy.
template <template <typename, typename, typename, typename> class Op, typename P, typename G,
          typename S>
void with_copy(const TensorSlots& t, const DTypes& d, const typename Op<P, G, S, float>::Scalars& s,
               std::size_t b, std::size_t e) {
  switch (d.copy) {
    case DType::kBFloat16:
      return Op<P, G, S, BFloat16>::run(t, s, b, e);
    case DType::kFloat16:
      return Op<P, G, S, Half>::run(t, s, b, e);
    default:
      return Op<P, G, S, float>::run(t, s, b, e);  // kNone: copy pointer is null
  }
}

template <template <typename, typename, typename, typename> class Op, typename Scalars>
void dispatch(const TensorSlots& t, const DTypes& d, const Scalars& s, std::size_t b,
              std::size_t e) {
  const bool state32 = d.state == DType::kFloat32;
  const bool grad32 = d.grad == DType::kFloat32;
  switch (d.param) {
    case DType::kFloat32:
      if (d.grad == DType::kBFloat16) return with_copy<Op, float, BFloat16, float>(t, d, s, b, e);
      if (d.grad == DType::kFloat16) return with_copy<Op, float, Half, float>(t, d, s, b, e);
      return with_copy<Op, float, float, float>(t, d, s, b, e);
    case DType::kBFloat16:
      if (grad32 && state32) return Op<BFloat16, float, float, float>::run(t, s, b, e);
      if (grad32) return Op<BFloat16, float, BFloat16, float>::run(t, s, b, e);
      if (state32) return Op<BFloat16, BFloat16, float, float>::run(t, s, b, e);
      return Op<BFloat16, BFloat16, BFloat16, float>::run(t, s, b, e);
    case DType::kFloat16:
      if (grad32 && state32) return Op<Half, float, float, float>::run(t, s, b, e);
      if (grad32) return Op<Half, float, Half, float>::run(t, s, b, e);
      if (state32) return Op<Half, Half, float, float>::run(t, s, b, e);
      return Op<Half, Half, Half, float>::run(t, s, b, e);
    default:
      return;
  }
}

void adam(const TensorSlots& t, const DTypes& d, const AdamScalars& s, std::size_t b,
          std::size_t e) {
  dispatch<AdamOp>(t, d, s, b, e);
}

void adagrad(const TensorSlots& t, const DTypes& d, const AdagradScalars& s, std::size_t b,
             std::size_t e) {
  dispatch<AdagradOp>(t, d, s, b, e);
}

void lion(const TensorSlots& t, const DTypes& d, const LionScalars& s, std::size_t b,
          std::size_t e) {
  dispatch<LionOp>(t, d, s, b, e);
}

}  // namespace
}  // namespace ZO_ISA_NS
}  // namespace zero_optim

// Defines the accessor for this ISA's kernel table, e.g. zero_optim::kernels_avx2().
#define ZO_DEFINE_KERNEL_TABLE(ACCESSOR, NAME)                                        \
  namespace zero_optim {                                                               \
  const KernelTable* ACCESSOR() {                                                      \
    static const KernelTable table{NAME, &ZO_ISA_NS::adam, &ZO_ISA_NS::adagrad,        \
                                   &ZO_ISA_NS::lion};                                  \
    return &table;                                                                     \
  }                                                                                    \
  }

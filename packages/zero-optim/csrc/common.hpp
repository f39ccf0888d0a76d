// Types shared by the dispatcher and every per-ISA kernel translation unit.
//
// [Note: one kernel source, several instruction sets]
// kernels_impl.hpp is compiled once per instruction set (scalar baseline, AVX2, AVX-512,
// NEON), each time with that ISA's compiler flags and inside its own namespace, so no inline
// function or template instance built with AVX flags can be merged by the linker into code
// that runs on a CPU without them. This header therefore holds only plain structs: nothing
// here is compiled into machine code differently per ISA.
#pragma once

#include <cstddef>
#include <cstdint>

namespace zero_optim {

// Element types crossing from Python. The numbers are part of the Python/C++ contract.
enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2, kNone = 3 };

// One tensor's buffers for one optimizer step. Pointers were validated by Python (CPU,
// contiguous, `numel` elements of the declared dtype, alive for the call).
struct TensorSlots {
  void* param;
  const void* grad;
  void* state_a;  // Adam: exp_avg; Adagrad: state_sum; Lion: exp_avg
  void* state_b;  // Adam: exp_avg_sq; otherwise unused (nullptr)
  void* copy;     // optional low-precision copy of the updated param (nullptr if none)
  std::size_t numel;
};

// Dtypes shared by every tensor of one call.
struct DTypes {
  DType param;
  DType grad;
  DType state;
  DType copy;  // kNone when no copy is written
};

// Hyper-parameters of one Adam step, already reduced to per-step scalars by the caller.
struct AdamScalars {
  float beta1;
  float beta2;
  float one_minus_beta1;
  float one_minus_beta2;
  float eps;
  float step_size;          // lr / bias_correction1
  float bias_correction2_sqrt;  // sqrt(1 - beta2^step), 1 without bias correction
  float decay;              // AdamW: 1 - lr * weight_decay; Adam (L2): 1
  float l2;                 // Adam (L2): weight_decay; AdamW: 0
};

struct AdagradScalars {
  float clr;  // lr / (1 + (step - 1) * lr_decay)
  float eps;
  float l2;   // weight_decay (added to the gradient, as torch.optim.Adagrad does)
};

struct LionScalars {
  float lr;
  float beta1;
  float one_minus_beta1;
  float beta2;
  float one_minus_beta2;
  float decay;  // 1 - lr * weight_decay
};

// A kernel updates elements [begin, end) of one tensor.
using AdamKernel = void (*)(const TensorSlots&, const DTypes&, const AdamScalars&, std::size_t,
                            std::size_t);
using AdagradKernel = void (*)(const TensorSlots&, const DTypes&, const AdagradScalars&,
                               std::size_t, std::size_t);
using LionKernel = void (*)(const TensorSlots&, const DTypes&, const LionScalars&, std::size_t,
                            std::size_t);

struct KernelTable {
  const char* isa;
  AdamKernel adam;
  AdagradKernel adagrad;
  LionKernel lion;
};

// Each ISA translation unit defines one of these (declared for all; defined only where built).
const KernelTable* kernels_baseline();  // compiler default for the target (SSE2 on x86-64)
const KernelTable* kernels_avx2();
const KernelTable* kernels_avx512();
const KernelTable* kernels_neon();

}  // namespace zero_optim

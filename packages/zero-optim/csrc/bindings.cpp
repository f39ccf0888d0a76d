// Python bindings. Tensors arrive as integer addresses plus element counts: Python has
// already checked device, contiguity, dtype and shape, so this module never links torch.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.hpp"
#include "cpu.hpp"
#include "parallel.hpp"

namespace py = pybind11;
using zero_optim::DType;
using zero_optim::DTypes;
using zero_optim::TensorSlots;

namespace {

// Below this many elements per thread, waking another thread costs more than it saves.
constexpr std::size_t kMinPerThread = std::size_t{1} << 15;
// Thread ranges start on multiples of this many elements (a 64-byte line of fp32 or more).
constexpr std::size_t kAlign = 64;

DType to_dtype(int code, const char* what) {
  if (code < 0 || code > 3) throw std::invalid_argument(std::string("bad dtype code for ") + what);
  return static_cast<DType>(code);
}

void check_dtypes(const DTypes& d, bool needs_state) {
  const bool low = d.param == DType::kBFloat16 || d.param == DType::kFloat16;
  if (d.param == DType::kNone) throw std::invalid_argument("param dtype must be a float type");
  if (d.grad == DType::kNone) throw std::invalid_argument("grad dtype must be a float type");
  if (needs_state && d.state != DType::kFloat32 && d.state != d.param) {
    throw std::invalid_argument("optimizer states must be fp32 or the param dtype");
  }
  if (low && d.grad != DType::kFloat32 && d.grad != d.param) {
    throw std::invalid_argument("grads of a low-precision param must be fp32 or its dtype");
  }
  if (low && d.copy != DType::kNone) {
    throw std::invalid_argument("a low-precision copy can only be written from fp32 params");
  }
  if (d.copy == DType::kFloat32) {
    throw std::invalid_argument("the param copy must be bf16 or fp16");
  }
}

std::vector<TensorSlots> to_slots(const std::vector<std::uintptr_t>& params,
                                  const std::vector<std::uintptr_t>& grads,
                                  const std::vector<std::uintptr_t>& state_a,
                                  const std::vector<std::uintptr_t>& state_b,
                                  const std::vector<std::uintptr_t>& copies,
                                  const std::vector<std::size_t>& numels, bool two_states) {
  const std::size_t n = params.size();
  if (grads.size() != n || state_a.size() != n || copies.size() != n || numels.size() != n ||
      (two_states && state_b.size() != n)) {
    throw std::invalid_argument("every per-tensor list must have one entry per param");
  }
  std::vector<TensorSlots> slots(n);
  for (std::size_t i = 0; i < n; ++i) {
    if (numels[i] > 0 && (params[i] == 0 || grads[i] == 0 || state_a[i] == 0 ||
                          (two_states && state_b[i] == 0))) {
      throw std::invalid_argument("null buffer for a non-empty tensor");
    }
    slots[i] = TensorSlots{reinterpret_cast<void*>(params[i]),
                           reinterpret_cast<const void*>(grads[i]),
                           reinterpret_cast<void*>(state_a[i]),
                           two_states ? reinterpret_cast<void*>(state_b[i]) : nullptr,
                           reinterpret_cast<void*>(copies[i]), numels[i]};
  }
  return slots;
}

// Splits the concatenation of all tensors into `threads` equal, aligned element ranges and
// runs `kernel` over each range's pieces; returns the number of threads used.
template <typename Kernel, typename Scalars>
int run_parallel(const std::vector<TensorSlots>& slots, const DTypes& d, const Scalars& s,
                 Kernel kernel, int threads) {
  std::vector<std::size_t> starts(slots.size() + 1, 0);
  for (std::size_t i = 0; i < slots.size(); ++i) starts[i + 1] = starts[i] + slots[i].numel;
  const std::size_t total = starts.back();
  if (total == 0) return 0;
  const std::size_t useful = std::max<std::size_t>(1, total / kMinPerThread);
  const int n = static_cast<int>(std::min<std::size_t>(std::max(threads, 1), useful));
  auto bound = [&](int t) -> std::size_t {
    if (t >= n) return total;
    const std::size_t raw = total * static_cast<std::size_t>(t) / static_cast<std::size_t>(n);
    return std::min(total, raw / kAlign * kAlign);
  };
  const std::function<void(int)> task = [&](int t) {
    std::size_t begin = bound(t);
    const std::size_t end = bound(t + 1);
    // first tensor whose range contains `begin`
    std::size_t i = static_cast<std::size_t>(
        std::upper_bound(starts.begin(), starts.end(), begin) - starts.begin() - 1);
    while (begin < end && i < slots.size()) {
      const std::size_t stop = std::min(end, starts[i + 1]);
      if (stop > begin) kernel(slots[i], d, s, begin - starts[i], stop - starts[i]);
      begin = stop;
      ++i;
    }
  };
  return zero_optim::parallel_run(n, task);
}

int adam_step(const std::vector<std::uintptr_t>& params, const std::vector<std::uintptr_t>& grads,
              const std::vector<std::uintptr_t>& exp_avgs,
              const std::vector<std::uintptr_t>& exp_avg_sqs,
              const std::vector<std::uintptr_t>& copies, const std::vector<std::size_t>& numels,
              int param_dtype, int grad_dtype, int state_dtype, int copy_dtype, float beta1,
              float beta2, float one_minus_beta1, float one_minus_beta2, float eps,
              float step_size, float bias_correction2_sqrt, float decay, float l2, int threads) {
  const DTypes d{to_dtype(param_dtype, "param"), to_dtype(grad_dtype, "grad"),
                 to_dtype(state_dtype, "state"), to_dtype(copy_dtype, "copy")};
  check_dtypes(d, true);
  const auto slots = to_slots(params, grads, exp_avgs, exp_avg_sqs, copies, numels, true);
  const zero_optim::AdamScalars s{beta1, beta2, one_minus_beta1, one_minus_beta2, eps,
                                  step_size, bias_correction2_sqrt, decay, l2};
  const auto kernel = zero_optim::active_table()->adam;
  py::gil_scoped_release release;
  return run_parallel(slots, d, s, kernel, threads);
}

int adagrad_step(const std::vector<std::uintptr_t>& params,
                 const std::vector<std::uintptr_t>& grads,
                 const std::vector<std::uintptr_t>& sums,
                 const std::vector<std::uintptr_t>& copies, const std::vector<std::size_t>& numels,
                 int param_dtype, int grad_dtype, int state_dtype, int copy_dtype, float clr,
                 float eps, float l2, int threads) {
  const DTypes d{to_dtype(param_dtype, "param"), to_dtype(grad_dtype, "grad"),
                 to_dtype(state_dtype, "state"), to_dtype(copy_dtype, "copy")};
  check_dtypes(d, true);
  const auto slots = to_slots(params, grads, sums, {}, copies, numels, false);
  const zero_optim::AdagradScalars s{clr, eps, l2};
  const auto kernel = zero_optim::active_table()->adagrad;
  py::gil_scoped_release release;
  return run_parallel(slots, d, s, kernel, threads);
}

int lion_step(const std::vector<std::uintptr_t>& params, const std::vector<std::uintptr_t>& grads,
              const std::vector<std::uintptr_t>& exp_avgs,
              const std::vector<std::uintptr_t>& copies, const std::vector<std::size_t>& numels,
              int param_dtype, int grad_dtype, int state_dtype, int copy_dtype, float lr,
              float beta1, float one_minus_beta1, float beta2, float one_minus_beta2, float decay,
              int threads) {
  const DTypes d{to_dtype(param_dtype, "param"), to_dtype(grad_dtype, "grad"),
                 to_dtype(state_dtype, "state"), to_dtype(copy_dtype, "copy")};
  check_dtypes(d, true);
  const auto slots = to_slots(params, grads, exp_avgs, {}, copies, numels, false);
  const zero_optim::LionScalars s{lr, beta1, one_minus_beta1, beta2, one_minus_beta2, decay};
  const auto kernel = zero_optim::active_table()->lion;
  py::gil_scoped_release release;
  return run_parallel(slots, d, s, kernel, threads);
}

py::dict cpu_features() {
  py::dict out;
  py::list compiled;
  py::list usable;
  for (const auto* table : zero_optim::compiled_tables()) {
    compiled.append(table->isa);
    if (zero_optim::cpu_supports(table->isa)) usable.append(table->isa);
  }
  out["isa"] = zero_optim::active_table()->isa;
  out["compiled"] = compiled;
  out["supported"] = usable;
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "zero-optim's compiled kernels (no torch inside; see zero_optim._native)";
  m.def("adam_step", &adam_step);
  m.def("adagrad_step", &adagrad_step);
  m.def("lion_step", &lion_step);
  m.def("cpu_features", &cpu_features);
  m.def("select_isa", [](const std::string& isa) { zero_optim::select_table(isa); });
}

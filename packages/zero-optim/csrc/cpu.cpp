#include "cpu.hpp"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace zero_optim {

std::vector<const KernelTable*> compiled_tables() {
  std::vector<const KernelTable*> tables;
#ifdef ZO_HAVE_AVX512
  tables.push_back(kernels_avx512());
#endif
#ifdef ZO_HAVE_AVX2
  tables.push_back(kernels_avx2());
#endif
#ifdef ZO_HAVE_NEON
  tables.push_back(kernels_neon());
#endif
  tables.push_back(kernels_baseline());
  return tables;
}

bool cpu_supports(const std::string& isa) {
  if (isa == "baseline") return true;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == "avx2") return avx2;
  if (isa == "avx512") {
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
#endif
#if defined(__aarch64__)
  if (isa == "neon") return true;  // Advanced SIMD is part of the AArch64 baseline
#endif
  return false;
}

namespace {

std::atomic<const KernelTable*> g_active{nullptr};

const KernelTable* find_table(const std::string& isa) {
  for (const KernelTable* table : compiled_tables()) {
    if (isa == table->isa) return table;
  }
  return nullptr;
}

const KernelTable* choose() {
  if (const char* forced = std::getenv("ZERO_OPTIM_ISA")) {
    const KernelTable* table = find_table(forced);
    if (table != nullptr && cpu_supports(forced)) return table;
  }
  for (const KernelTable* table : compiled_tables()) {
    if (cpu_supports(table->isa)) return table;
  }
  return kernels_baseline();
}

}  // namespace

const KernelTable* active_table() {
  const KernelTable* table = g_active.load();
  if (table == nullptr) {
    table = choose();
    g_active.store(table);
  }
  return table;
}

void select_table(const std::string& isa) {
  const KernelTable* table = find_table(isa);
  if (table == nullptr) {
    throw std::invalid_argument("kernel set '" + isa + "' is not built into this extension");
  }
  if (!cpu_supports(isa)) {
    throw std::invalid_argument("this CPU cannot run the '" + isa + "' kernels");
  }
  g_active.store(table);
}

}  // namespace zero_optim

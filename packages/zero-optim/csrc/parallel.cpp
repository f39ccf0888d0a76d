#include "parallel.hpp"

#include <omp.h>
#include <pthread.h>

#include <atomic>

namespace zero_optim {
namespace {

std::atomic<bool> g_used_parallel{false};
std::atomic<bool> g_bad_fork{false};

void mark_child_after_fork() {
  if (g_used_parallel.load()) g_bad_fork.store(true);
}

const bool g_registered = [] {
  pthread_atfork(nullptr, nullptr, &mark_child_after_fork);
  return true;
}();

}  // namespace

int parallel_run(int n, const std::function<void(int)>& task) {
  (void)g_registered;
  if (n <= 1 || g_bad_fork.load()) {
    for (int i = 0; i < n; ++i) task(i);
    return 1;
  }
  g_used_parallel.store(true);
  int used = 1;
#pragma omp parallel num_threads(n)
  {
    // The runtime may grant fewer threads than asked: each takes every k-th range.
    const int threads = omp_get_num_threads();
    for (int i = omp_get_thread_num(); i < n; i += threads) task(i);
#pragma omp single nowait
    used = threads;
  }
  return used;
}

}  // namespace zero_optim

// A small persistent thread pool for the optimizer step.
//
// One step is a few milliseconds of memory-bound work split into equal element ranges, one
// per thread; the caller's thread takes a share too. Threads are created on first use and
// kept, so a step costs one wake-up per worker rather than a thread creation. After fork()
// the child starts a fresh pool (the parent's threads do not exist there).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace zero_optim {

class ThreadPool {
 public:
  // The process-wide pool.
  static ThreadPool& instance();

  // Calls task(i) for i in [0, n) on n threads (the caller runs i == 0) and returns when all
  // are done. Calls from several threads are serialized.
  void run(int n, const std::function<void(int)>& task);

  int size() const { return static_cast<int>(workers_.size()) + 1; }

 private:
  ThreadPool() = default;
  void grow(int total);
  void work(int index);

  std::mutex run_mutex_;  // one run() at a time
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* task_ = nullptr;
  int active_ = 0;         // workers taking part in the current run (indices 1..active_)
  int remaining_ = 0;      // workers of the current run not yet finished
  std::uint64_t generation_ = 0;
};

}  // namespace zero_optim

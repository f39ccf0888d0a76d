#include "pool.hpp"

#include <pthread.h>

namespace zero_optim {
namespace {

ThreadPool* g_pool = nullptr;

void reset_after_fork() {
  // The parent's worker threads do not exist in the child: abandon (leak) the old pool
  // object, whose std::thread handles must not be joined or destroyed here.
  g_pool = nullptr;
}

}  // namespace

ThreadPool& ThreadPool::instance() {
  static const bool registered = [] {
    pthread_atfork(nullptr, nullptr, &reset_after_fork);
    return true;
  }();
  (void)registered;
  if (g_pool == nullptr) g_pool = new ThreadPool();  // never destroyed: workers sleep at exit
  return *g_pool;
}

void ThreadPool::grow(int total) {
  while (size() < total) {
    const int index = size();
    workers_.emplace_back([this, index] { work(index); });
  }
}

void ThreadPool::work(int index) {
  std::uint64_t seen = 0;
  for (;;) {
    const std::function<void(int)>* task;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return generation_ != seen && index <= active_; });
      seen = generation_;
      task = task_;
    }
    (*task)(index);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (--remaining_ == 0) done_.notify_one();
    }
  }
}

void ThreadPool::run(int n, const std::function<void(int)>& task) {
  if (n <= 1) {
    task(0);
    return;
  }
  std::lock_guard<std::mutex> serial(run_mutex_);
  grow(n);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    task_ = &task;
    active_ = n - 1;
    remaining_ = n - 1;
    ++generation_;
  }
  wake_.notify_all();
  task(0);
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [&] { return remaining_ == 0; });
  active_ = 0;
}

}  // namespace zero_optim

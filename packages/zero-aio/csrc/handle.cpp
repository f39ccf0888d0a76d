#include "handle.hpp"

#include <algorithm>
#include <stdexcept>

#include "build_info.hpp"

namespace zero_aio {

namespace {

std::unique_ptr<Engine> make_engine(const Config& c) {
  switch (c.backend) {
    case Backend::kLibaio:
#if ZA_HAVE_LIBAIO
      return make_libaio_engine(c.queue_depth, c.single_submit, c.overlap_events);
#else
      throw std::invalid_argument(std::string("libaio backend not built: ") +
                                  build_info::kLibaioReason);
#endif
    case Backend::kIoUring:
#if ZA_HAVE_IO_URING
      return make_uring_engine(c.queue_depth, c.single_submit, c.overlap_events);
#else
      throw std::invalid_argument(std::string("io_uring backend not built: ") +
                                  build_info::kIoUringReason);
#endif
    case Backend::kThreads:
      break;
  }
  return make_threads_engine();
}

}  // namespace

Handle::Handle(const Config& config) : config_(config) {
  if (config_.block_size == 0 || config_.block_size > (std::size_t{1} << 30)) {
    throw std::invalid_argument("block_size must be in [1, 2**30] bytes");
  }
  if (config_.queue_depth < 1) throw std::invalid_argument("queue_depth must be >= 1");
  if (config_.intra_op_parallelism < 1) {
    throw std::invalid_argument("intra_op_parallelism must be >= 1");
  }
  // Engines are made here, on the calling thread, so a refused backend fails the constructor.
  for (int i = 0; i < config_.intra_op_parallelism; ++i) engines_.push_back(make_engine(config_));
  for (auto& engine : engines_) threads_.emplace_back(&Handle::worker, this, engine.get());
}

Handle::~Handle() {
  // Operations still queued write into (or read from) buffers the caller handed us: finish
  // them before the threads go, exactly as wait() would, but without raising.
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void Handle::worker(Engine* engine) {
  for (;;) {
    Task task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !tasks_.empty(); });
      if (tasks_.empty()) return;  // stopping, and nothing left to do
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    std::vector<Failure> failures;
    Operation& op = *task.op;
    engine->run(op.file, op.pieces.data() + task.begin, task.end - task.begin, failures);
    {
      std::lock_guard<std::mutex> lock(op.mu);
      op.failures.insert(op.failures.end(), failures.begin(), failures.end());
      --op.tasks_left;
    }
    op.cv.notify_all();
  }
}

std::shared_ptr<Operation> Handle::start(const std::string& path, std::uintptr_t addr,
                                         std::size_t nbytes, std::int64_t offset,
                                         bool is_read) {
  auto op = std::make_shared<Operation>();
  op->file = open_for(path, is_read, offset, nbytes);
  op->pieces = plan(reinterpret_cast<char*>(addr), nbytes, offset, config_.block_size,
                    op->file.direct.get() >= 0);
  const std::size_t n = op->pieces.size();
  const std::size_t runs = std::min<std::size_t>(n, engines_.size());
  op->tasks_left = runs;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (std::size_t r = 0; r < runs; ++r) tasks_.push_back(Task{op, n * r / runs, n * (r + 1) / runs});
  }
  cv_.notify_all();
  return op;
}

void Handle::finish(const std::shared_ptr<Operation>& op) {
  std::unique_lock<std::mutex> lock(op->mu);
  op->cv.wait(lock, [&] { return op->tasks_left == 0; });
  if (!op->failures.empty()) throw FailedIo(op->failures);
}

void Handle::submit(const std::string& path, std::uintptr_t addr, std::size_t nbytes,
                    std::int64_t offset, bool is_read) {
  auto op = start(path, addr, nbytes, offset, is_read);
  std::lock_guard<std::mutex> lock(pending_mu_);
  pending_.push_back(std::move(op));
}

void Handle::drain() noexcept {
  try {
    wait();
  } catch (...) {  // nobody is left to report to; the caller asked to drop the handle
  }
}

int Handle::wait() {
  std::vector<std::shared_ptr<Operation>> ops;
  {
    std::lock_guard<std::mutex> lock(pending_mu_);
    ops.swap(pending_);
  }
  std::vector<Failure> failures;
  for (const auto& op : ops) {
    try {
      finish(op);
    } catch (const FailedIo& e) {
      failures.insert(failures.end(), e.failures().begin(), e.failures().end());
    }
  }
  if (!failures.empty()) throw FailedIo(std::move(failures));
  return static_cast<int>(ops.size());
}

}  // namespace zero_aio

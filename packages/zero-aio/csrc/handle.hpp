// An aio handle: its worker threads, their engines, and the operations in flight.
//
// [Note: one operation, several workers]
// A pread or pwrite call is one operation: its file is opened (and, for reads, its length
// checked) on the calling thread, so a missing directory or a short file fails at the call.
// Its pieces (see transfer.hpp) are then cut into at most intra_op_parallelism contiguous
// runs, each a task for one worker; a worker hands its run to its engine, which keeps up to
// queue_depth requests in flight. The operation is done when all its tasks are; failures
// from all of them are gathered, none is dropped. Everything belongs to the handle: the
// worker threads are joined, and their libaio contexts / io_uring rings destroyed, when the
// handle is destroyed (after its operations finished: the destructor waits for them).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine.hpp"
#include "transfer.hpp"

namespace zero_aio {

struct Config {
  std::size_t block_size = 1 << 20;
  int queue_depth = 128;
  bool single_submit = false;
  bool overlap_events = false;  // see make_libaio_engine
  int intra_op_parallelism = 1;
  Backend backend = Backend::kThreads;
};

struct Operation {
  OpenFile file;
  std::vector<Piece> pieces;
  std::mutex mu;
  std::condition_variable cv;
  std::size_t tasks_left = 0;
  std::vector<Failure> failures;
};

class Handle {
 public:
  explicit Handle(const Config& config);  // throws std::system_error if the backend is refused
  ~Handle();
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;

  // Opens the file and queues the transfer; throws FailedIo when the file cannot be used.
  std::shared_ptr<Operation> start(const std::string& path, std::uintptr_t addr,
                                   std::size_t nbytes, std::int64_t offset, bool is_read);
  // Blocks until `op` is done; throws FailedIo with its failures.
  static void finish(const std::shared_ptr<Operation>& op);

  // Queue an asynchronous operation / wait for all of them: returns how many completed and
  // throws FailedIo (after every one of them is done) if any failed.
  void submit(const std::string& path, std::uintptr_t addr, std::size_t nbytes,
              std::int64_t offset, bool is_read);
  int wait();
  // Waits for every queued operation, dropping failures (for a handle being destroyed).
  void drain() noexcept;

  const Config& config() const { return config_; }

 private:
  struct Task {
    std::shared_ptr<Operation> op;
    std::size_t begin;
    std::size_t end;
  };
  void worker(Engine* engine);

  Config config_;
  std::vector<std::unique_ptr<Engine>> engines_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> tasks_;
  bool stopping_ = false;
  std::mutex pending_mu_;
  std::vector<std::shared_ptr<Operation>> pending_;
};

}  // namespace zero_aio

// A backend's per-worker engine: moves a run of pieces of one open file, recording failures.
//
// Each worker thread of a handle owns one engine (and with it one libaio context or io_uring
// ring), so engines need no locking and die with their handle. An engine never throws from
// run(): every failure becomes a Failure naming the path, the offset and the errno.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "transfer.hpp"

namespace zero_aio {

enum class Backend { kThreads, kLibaio, kIoUring };

const char* backend_name(Backend b);

class Engine {
 public:
  virtual ~Engine() = default;
  virtual void run(const OpenFile& file, const Piece* pieces, std::size_t n,
                   std::vector<Failure>& out) = 0;
};

// Blocking pread/pwrite, one piece after another (always built).
std::unique_ptr<Engine> make_threads_engine();
// Up to queue_depth requests in flight; single_submit submits them one by one instead of in
// batches. overlap_events (DeepSpeed's "overlap submission and completion events") refills
// each slot as soon as its request completes; without it a whole batch of queue_depth
// requests completes before the next batch is submitted. Both throw std::system_error when
// the kernel refuses to set the queue up.
std::unique_ptr<Engine> make_libaio_engine(int queue_depth, bool single_submit,
                                           bool overlap_events);
std::unique_ptr<Engine> make_uring_engine(int queue_depth, bool single_submit,
                                          bool overlap_events);

}  // namespace zero_aio

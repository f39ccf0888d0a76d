// io_uring (through liburing): one ring of queue_depth entries per worker. Partial results
// are finished as in libaio; see [Note: asynchronous backends and their partial results].
#include <liburing.h>

#include <cerrno>
#include <system_error>

#include "engine.hpp"

namespace zero_aio {
namespace {

class UringEngine final : public Engine {
 public:
  UringEngine(int depth, bool single_submit, bool overlap_events)
      : depth_(depth), single_submit_(single_submit), overlap_events_(overlap_events) {
    const int r = io_uring_queue_init(static_cast<unsigned>(depth), &ring_, 0);
    if (r < 0) {
      throw std::system_error(-r, std::generic_category(),
                              "io_uring_queue_init(" + std::to_string(depth) + ")");
    }
  }
  ~UringEngine() override { io_uring_queue_exit(&ring_); }
  UringEngine(const UringEngine&) = delete;
  UringEngine& operator=(const UringEngine&) = delete;

  void run(const OpenFile& file, const Piece* pieces, std::size_t n,
           std::vector<Failure>& out) override {
    if (broken_ != 0) {  // see submit(): never reuse a ring that may hold stale entries
      for (std::size_t i = 0; i < n; ++i) out.push_back(failure_for(file, pieces[i], broken_, 0));
      out.back().what += " (io_uring ring unusable after an earlier submit failure)";
      return;
    }
    std::size_t next = 0;
    int inflight = 0;
    int queued = 0;
    while (next < n || inflight > 0) {
      // Without overlap_events a batch is refilled only once all of it has completed.
      const bool refill = overlap_events_ || inflight == 0;
      while (refill && broken_ == 0 && next < n && inflight + queued < depth_) {
        io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
        if (sqe == nullptr) break;
        const Piece& p = pieces[next];
        const int fd = p.direct && file.direct.get() >= 0 ? file.direct.get() : file.buffered.get();
        if (file.is_read) {
          io_uring_prep_read(sqe, fd, p.buf, static_cast<unsigned>(p.len),
                             static_cast<__u64>(p.offset));
        } else {
          io_uring_prep_write(sqe, fd, p.buf, static_cast<unsigned>(p.len),
                              static_cast<__u64>(p.offset));
        }
        io_uring_sqe_set_data(sqe, reinterpret_cast<void*>(static_cast<std::uintptr_t>(next)));
        ++next;
        ++queued;
        if (single_submit_) submit(file, pieces, next, queued, inflight, out);
      }
      if (queued > 0) submit(file, pieces, next, queued, inflight, out);
      if (broken_ != 0 && next < n) {  // finish what was never queued with blocking I/O
        for (; next < n; ++next) transfer_blocking(file, pieces[next], out);
      }
      if (inflight == 0) continue;
      io_uring_cqe* cqe = nullptr;
      const int w = io_uring_wait_cqe(&ring_, &cqe);
      if (w == -EINTR) continue;
      if (w < 0) {
        out.push_back(Failure{-w, file.path, pieces[0].offset, 0, "io_uring_wait_cqe"});
        broken_ = -w;
        return;
      }
      const Piece& p = pieces[reinterpret_cast<std::uintptr_t>(io_uring_cqe_get_data(cqe))];
      const int res = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      --inflight;
      if (res == -EINVAL && p.direct) {
        transfer_blocking(file, Piece{p.buf, p.len, p.offset, false}, out);
      } else if (res < 0) {
        out.push_back(failure_for(file, p, -res, 0));
      } else if (static_cast<std::size_t>(res) < p.len) {
        transfer_blocking(file, p, out, static_cast<std::size_t>(res));
      }
    }
  }

 private:
  // Submits the `queued` entries (pieces [next - queued, next)). When the kernel refuses,
  // they are recorded as failed and the ring is marked broken: its unsubmitted entries point
  // at this call's buffers and must never be submitted later.
  void submit(const OpenFile& file, const Piece* pieces, std::size_t next, int& queued,
              int& inflight, std::vector<Failure>& out) {
    int r;
    do {
      r = io_uring_submit(&ring_);
    } while (r == -EINTR || r == -EAGAIN);
    if (r < 0) {
      for (std::size_t i = next - static_cast<std::size_t>(queued); i < next; ++i) {
        out.push_back(failure_for(file, pieces[i], -r, 0));
        out.back().what += " (io_uring_submit)";
      }
      broken_ = -r;
      queued = 0;
      return;
    }
    inflight += r;
    queued -= r;
  }

  io_uring ring_{};
  int depth_;
  bool single_submit_;
  bool overlap_events_;
  int broken_ = 0;  // errno of a failure that left the ring unusable
};

}  // namespace

std::unique_ptr<Engine> make_uring_engine(int queue_depth, bool single_submit,
                                          bool overlap_events) {
  return std::make_unique<UringEngine>(queue_depth, single_submit, overlap_events);
}

}  // namespace zero_aio

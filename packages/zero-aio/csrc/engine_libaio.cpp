// libaio: queue_depth iocbs in flight per worker, completions reaped with io_getevents.
//
// [Note: asynchronous backends and their partial results]
// A completion may move fewer bytes than asked (end of file, a signal) or fail with EINVAL
// when the file system refuses this O_DIRECT request; the rest of such a piece is finished
// by transfer_blocking, which resumes, falls back to buffered I/O, or records the short
// read. So both queue backends report exactly what the threads backend reports.
#include <libaio.h>

#include <cerrno>
#include <system_error>

#include "engine.hpp"

namespace zero_aio {
namespace {

class LibaioEngine final : public Engine {
 public:
  LibaioEngine(int depth, bool single_submit, bool overlap_events)
      : depth_(depth),
        single_submit_(single_submit),
        overlap_events_(overlap_events),
        cbs_(static_cast<std::size_t>(depth)) {
    const int r = io_setup(depth, &ctx_);
    if (r < 0) {
      throw std::system_error(-r, std::generic_category(),
                              "io_setup(" + std::to_string(depth) + ")");
    }
  }
  ~LibaioEngine() override { io_destroy(ctx_); }
  LibaioEngine(const LibaioEngine&) = delete;
  LibaioEngine& operator=(const LibaioEngine&) = delete;

  void run(const OpenFile& file, const Piece* pieces, std::size_t n,
           std::vector<Failure>& out) override {
    std::vector<int> free_slots;
    for (int s = depth_ - 1; s >= 0; --s) free_slots.push_back(s);
    std::vector<std::size_t> piece_of(static_cast<std::size_t>(depth_));
    std::vector<iocb*> batch;
    std::vector<io_event> events(static_cast<std::size_t>(depth_));
    std::size_t next = 0;
    int inflight = 0;
    while (next < n || inflight > 0) {
      batch.clear();
      // Without overlap_events a batch is refilled only once all of it has completed.
      const bool refill = overlap_events_ || inflight == 0;
      while (refill && next < n && !free_slots.empty()) {
        const Piece& p = pieces[next];
        const int s = free_slots.back();
        free_slots.pop_back();
        iocb* cb = &cbs_[static_cast<std::size_t>(s)];
        const int fd = p.direct && file.direct.get() >= 0 ? file.direct.get() : file.buffered.get();
        if (file.is_read) {
          io_prep_pread(cb, fd, p.buf, p.len, p.offset);
        } else {
          io_prep_pwrite(cb, fd, p.buf, p.len, p.offset);
        }
        cb->data = reinterpret_cast<void*>(static_cast<std::uintptr_t>(s));
        piece_of[static_cast<std::size_t>(s)] = next++;
        batch.push_back(cb);
        if (single_submit_) inflight += submit(file, pieces, piece_of, batch, free_slots, out);
      }
      inflight += submit(file, pieces, piece_of, batch, free_slots, out);
      if (inflight == 0) continue;
      const int got =
          io_getevents(ctx_, overlap_events_ ? 1 : inflight, depth_, events.data(), nullptr);
      if (got == -EINTR) continue;
      if (got < 0) {  // the context is unusable; io_destroy in the destructor reaps what is left
        out.push_back(Failure{-got, file.path, pieces[0].offset, 0, "io_getevents"});
        return;
      }
      for (int e = 0; e < got; ++e) {
        const auto s = static_cast<int>(reinterpret_cast<std::uintptr_t>(events[e].data));
        const Piece& p = pieces[piece_of[static_cast<std::size_t>(s)]];
        const auto res = static_cast<long>(events[e].res);
        if (res < 0 && res == -EINVAL && p.direct) {
          transfer_blocking(file, Piece{p.buf, p.len, p.offset, false}, out);
        } else if (res < 0) {
          out.push_back(failure_for(file, p, static_cast<int>(-res), 0));
        } else if (static_cast<std::size_t>(res) < p.len) {
          transfer_blocking(file, p, out, static_cast<std::size_t>(res));
        }
        free_slots.push_back(s);
        --inflight;
      }
    }
  }

 private:
  // Submits `batch`; whatever the kernel does not take is done with blocking I/O.
  int submit(const OpenFile& file, const Piece* pieces, const std::vector<std::size_t>& piece_of,
             std::vector<iocb*>& batch, std::vector<int>& free_slots, std::vector<Failure>& out) {
    if (batch.empty()) return 0;
    int r;
    do {
      r = io_submit(ctx_, static_cast<long>(batch.size()), batch.data());
    } while (r == -EINTR || r == -EAGAIN);
    const int taken = r < 0 ? 0 : r;
    for (std::size_t i = static_cast<std::size_t>(taken); i < batch.size(); ++i) {
      const auto s = static_cast<int>(reinterpret_cast<std::uintptr_t>(batch[i]->data));
      transfer_blocking(file, pieces[piece_of[static_cast<std::size_t>(s)]], out);
      free_slots.push_back(s);
    }
    batch.clear();
    return taken;
  }

  io_context_t ctx_{};
  int depth_;
  bool single_submit_;
  bool overlap_events_;
  std::vector<iocb> cbs_;
};

}  // namespace

std::unique_ptr<Engine> make_libaio_engine(int queue_depth, bool single_submit,
                                           bool overlap_events) {
  return std::make_unique<LibaioEngine>(queue_depth, single_submit, overlap_events);
}

}  // namespace zero_aio

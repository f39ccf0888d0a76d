#include "engine.hpp"

namespace zero_aio {

const char* backend_name(Backend b) {
  switch (b) {
    case Backend::kLibaio: return "libaio";
    case Backend::kIoUring: return "io_uring";
    case Backend::kThreads: break;
  }
  return "threads";
}

namespace {

class ThreadsEngine final : public Engine {
 public:
  void run(const OpenFile& file, const Piece* pieces, std::size_t n,
           std::vector<Failure>& out) override {
    for (std::size_t i = 0; i < n; ++i) transfer_blocking(file, pieces[i], out);
  }
};

}  // namespace

std::unique_ptr<Engine> make_threads_engine() { return std::make_unique<ThreadsEngine>(); }

}  // namespace zero_aio

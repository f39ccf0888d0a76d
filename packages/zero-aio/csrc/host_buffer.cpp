#include "host_buffer.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <new>

namespace zero_aio {

namespace {

constexpr std::size_t kHugePage = std::size_t{2} << 20;

std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }

}  // namespace

HostBuffer::HostBuffer(std::size_t nbytes, bool lock) : size_(nbytes) {
  const long sys_page = ::sysconf(_SC_PAGESIZE);
  const std::size_t page = sys_page > 0 ? static_cast<std::size_t>(sys_page) : 4096;
  mapped_ = round_up(nbytes == 0 ? 1 : nbytes, page);
  // See [Note: huge pages for I/O buffers]: map 2 MiB more than needed, keep the 2 MiB-aligned
  // part, give the rest back.
  const bool want_huge = mapped_ >= kHugePage;
  const std::size_t reserve = want_huge ? mapped_ + kHugePage : mapped_;
  void* raw = ::mmap(nullptr, reserve, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  auto* start = static_cast<char*>(raw);
  if (want_huge) {
    const auto addr = reinterpret_cast<std::uintptr_t>(raw);
    const std::size_t head = round_up(addr, kHugePage) - addr;
    const std::size_t tail = reserve - head - mapped_;
    if (head != 0) ::munmap(raw, head);
    if (tail != 0) ::munmap(start + head + mapped_, tail);
    start += head;
    huge_ = ::madvise(start, mapped_, MADV_HUGEPAGE) == 0;
  }
  data_ = start;
  // Fault every page in now (the kernel zero-fills it), not inside the first transfer; with
  // huge pages the first touch of each 2 MiB maps all of it.
  auto* touch = static_cast<volatile char*>(data_);
  for (std::size_t at = 0; at < mapped_; at += page) touch[at] = 0;
  if (lock) locked_ = ::mlock(data_, mapped_) == 0;
}

HostBuffer::~HostBuffer() {
  if (locked_) ::munlock(data_, mapped_);
  ::munmap(data_, mapped_);
}

}  // namespace zero_aio

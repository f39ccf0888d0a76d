// Host memory for I/O: page-aligned, backed by huge pages when large, locked on request.
//
// [Note: why the buffer owns the memory, not the handle]
// DeepSpeed's new_cpu_locked_tensor hands out a tensor over memory the handle frees in
// free_cpu_locked_tensor, so a tensor used after that reads freed memory. Here the memory
// belongs to a HostBuffer that exposes the buffer protocol; torch.frombuffer keeps it alive
// for as long as any tensor (or view) over it exists, and its destructor unlocks and unmaps
// it. free_cpu_locked_tensor only forgets the handle's reference.
//
// [Note: huge pages for I/O buffers]
// An O_DIRECT request is a list of physical memory segments. Over 4 KiB pages, which the
// kernel hands out scattered, a 1 MiB request is up to 256 segments: more than many devices
// take in one request (virtio-blk here: 254), so the block layer splits it, and a
// virtualised disk's host walks one descriptor per segment. How scattered a buffer is
// depends on the state of physical memory when it was allocated, so the same engine
// measured up to 1.9x apart from one buffer to the next (see the zero-aio README). A
// transparent huge page is 2 MiB of physically contiguous memory, so a request inside one
// is one segment. Buffers of at least 2 MiB are therefore mapped 2 MiB-aligned and
// madvise(MADV_HUGEPAGE)d before their pages are touched. Where the kernel has THP off
// ("never") or no free 2 MiB blocks, the same code gets ordinary pages: slower, still right.
#pragma once

#include <cstddef>

namespace zero_aio {

class HostBuffer {
 public:
  // nbytes of zero-filled memory, every page faulted in now; `lock` mlocks it when
  // RLIMIT_MEMLOCK allows. Throws std::bad_alloc.
  HostBuffer(std::size_t nbytes, bool lock);
  ~HostBuffer();
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;

  void* data() const { return data_; }
  std::size_t size() const { return size_; }
  bool locked() const { return locked_; }  // false when not asked, or mlock was refused
  bool huge_pages_advised() const { return huge_; }  // 2 MiB-aligned and MADV_HUGEPAGE accepted

 private:
  void* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t mapped_ = 0;  // bytes mapped at data_ (size_ rounded up to whole pages)
  bool locked_ = false;
  bool huge_ = false;
};

}  // namespace zero_aio

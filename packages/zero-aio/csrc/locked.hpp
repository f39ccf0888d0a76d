// Page-aligned host memory, pinned in RAM with mlock when the limits allow it.
//
// [Note: why the buffer owns the memory, not the handle]
// DeepSpeed's new_cpu_locked_tensor hands out a tensor over memory the handle frees in
// free_cpu_locked_tensor, so a tensor used after that reads freed memory. Here the memory
// belongs to a LockedBuffer that exposes the buffer protocol; torch.frombuffer keeps it
// alive for as long as any tensor (or view) over it exists, and its destructor unlocks and
// frees it. free_cpu_locked_tensor only forgets the handle's reference.
#pragma once

#include <cstddef>

namespace zero_aio {

class LockedBuffer {
 public:
  explicit LockedBuffer(std::size_t nbytes);  // throws std::bad_alloc
  ~LockedBuffer();
  LockedBuffer(const LockedBuffer&) = delete;
  LockedBuffer& operator=(const LockedBuffer&) = delete;

  void* data() const { return data_; }
  std::size_t size() const { return size_; }
  bool locked() const { return locked_; }  // false when mlock was refused (RLIMIT_MEMLOCK)

 private:
  void* data_ = nullptr;
  std::size_t size_ = 0;
  bool locked_ = false;
};

}  // namespace zero_aio

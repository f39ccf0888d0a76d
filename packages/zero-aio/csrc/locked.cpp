#include "locked.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <new>

namespace zero_aio {

LockedBuffer::LockedBuffer(std::size_t nbytes) : size_(nbytes) {
  const long page = ::sysconf(_SC_PAGESIZE);
  const std::size_t align = page > 0 ? static_cast<std::size_t>(page) : 4096;
  const std::size_t rounded = nbytes == 0 ? align : (nbytes + align - 1) / align * align;
  if (::posix_memalign(&data_, align, rounded) != 0) throw std::bad_alloc();
  std::memset(data_, 0, rounded);  // touch every page now, not during the first read into it
  locked_ = ::mlock(data_, rounded) == 0;
}

LockedBuffer::~LockedBuffer() {
  if (locked_) ::munlock(data_, size_ == 0 ? 1 : size_);
  std::free(data_);
}

}  // namespace zero_aio

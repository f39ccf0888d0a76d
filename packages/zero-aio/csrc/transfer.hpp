// One file transfer split into pieces, and the blocking pread/pwrite every backend falls back on.
//
// [Note: O_DIRECT and unaligned requests]
// O_DIRECT bypasses the page cache (what NVMe offload wants: no double buffering, no cache
// pollution), but the kernel refuses it unless the buffer address, the file offset and the
// length are all multiples of the device's logical block size. We use kDirectAlign = 4096,
// a multiple of every logical block size in practice (512 or 4096), instead of asking the
// block device (which may be a partition, a dm device or absent, as on tmpfs). A request
// [offset, offset + n) is split into an unaligned head up to the first 4096 boundary, an
// aligned middle and an unaligned tail; the middle goes through the O_DIRECT descriptor when
// the buffer lines up with the file (buffer % 4096 == offset % 4096), head and tail through
// an ordinary buffered descriptor. Linux keeps the two coherent (a direct write invalidates
// the cached pages it covers). When the file system refuses O_DIRECT (tmpfs, some FUSE
// mounts), or a direct transfer fails with EINVAL, the piece is retried buffered.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

namespace zero_aio {

inline constexpr std::size_t kDirectAlign = 4096;

// A contiguous run of bytes moved by one request.
struct Piece {
  char* buf;
  std::size_t len;
  std::int64_t offset;
  bool direct;  // through the O_DIRECT descriptor (all three of buf, len, offset aligned)
};

// What went wrong with a part of a transfer. err == 0 never appears: a short read (the file
// ended early) is reported as ENODATA with its own message.
struct Failure {
  int err;
  std::string path;
  std::int64_t offset;
  std::size_t length;
  std::string what;  // "read", "write", "open", ... plus detail
};

// Thrown (and turned into a Python OSError by the bindings) when an operation failed.
class FailedIo : public std::exception {
 public:
  explicit FailedIo(std::vector<Failure> failures) : failures_(std::move(failures)) {}
  const char* what() const noexcept override { return "zero_aio I/O failure"; }
  const std::vector<Failure>& failures() const { return failures_; }

 private:
  std::vector<Failure> failures_;
};

// Owns one file descriptor; closed on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  UniqueFd& operator=(UniqueFd&& o) noexcept;
  ~UniqueFd();
  int get() const { return fd_; }

 private:
  int fd_ = -1;
};

// The open descriptors of one operation (one pread or pwrite call of a handle).
struct OpenFile {
  std::string path;
  bool is_read = true;
  UniqueFd buffered;
  UniqueFd direct;  // get() == -1 when the file system refuses O_DIRECT
};

// Opens `path` for one transfer of `nbytes` at `offset`. Reads check the file is long
// enough; writes create the file (mode 0644, never truncated). Throws FailedIo.
OpenFile open_for(const std::string& path, bool is_read, std::int64_t offset, std::size_t nbytes);

// Splits [offset, offset + nbytes) of `buf` into pieces of at most block_size bytes, with the
// aligned middle marked direct when `direct_ok` (see the Note above).
std::vector<Piece> plan(char* buf, std::size_t nbytes, std::int64_t offset,
                        std::size_t block_size, bool direct_ok);

// Moves one piece with blocking pread/pwrite, resuming after partial transfers and EINTR.
// Returns true on success; otherwise appends a Failure and returns false. `done` bytes of
// the piece were already moved by an asynchronous backend.
bool transfer_blocking(const OpenFile& file, const Piece& piece, std::vector<Failure>& out,
                       std::size_t done = 0);

// A Failure for `piece` from a -errno style result.
Failure failure_for(const OpenFile& file, const Piece& piece, int err, std::size_t done);

}  // namespace zero_aio

// CRC-32C (Castagnoli), the checksum of zero_aio's tensor files.
//
// [Note: why CRC-32C]
// A checksum per tensor must be cheap next to the disk (several GB/s), catch torn and
// misdirected writes, and be recomputable by anyone from the documented format. CRC-32C is
// in hardware on x86-64 (SSE4.2) and ARMv8 (the CRC extension), is what iSCSI, ext4 and
// Btrfs use, and has well-known test vectors. One tensor is split over threads and the
// partial CRCs are joined with crc32c_combine, so the result equals the serial CRC.
#pragma once

#include <cstddef>
#include <cstdint>

namespace zero_aio {

// The CRC-32C of `n` bytes at `data`, continuing from `crc` (0 for a fresh start).
std::uint32_t crc32c(std::uint32_t crc, const void* data, std::size_t n);

// The CRC of A followed by B, from crc(A), crc(B) and B's length.
std::uint32_t crc32c_combine(std::uint32_t crc_a, std::uint32_t crc_b, std::size_t len_b);

// crc32c(0, data, n) computed by up to `threads` threads.
std::uint32_t crc32c_parallel(const void* data, std::size_t n, int threads);

// "sse4.2" or "software": what crc32c() runs on this CPU.
const char* crc32c_implementation();

}  // namespace zero_aio

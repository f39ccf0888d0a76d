#include "checksum.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace zero_aio {
namespace {

constexpr std::uint32_t kPoly = 0x82F63B78u;  // CRC-32C, bit-reflected

// Slicing-by-8 tables: table[k][b] is the CRC contribution of byte b followed by k zero bytes.
struct Tables {
  std::array<std::array<std::uint32_t, 256>, 8> t{};
  Tables() {
    for (std::uint32_t b = 0; b < 256; ++b) {
      std::uint32_t c = b;
      for (int i = 0; i < 8; ++i) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
      t[0][b] = c;
    }
    for (std::size_t k = 1; k < 8; ++k) {
      for (std::size_t b = 0; b < 256; ++b) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xFF];
    }
  }
};

const Tables& tables() {
  static const Tables tables;
  return tables;
}

// Both take and return the raw (not inverted) register.
std::uint32_t crc_software(std::uint32_t c, const unsigned char* p, std::size_t n) {
  const auto& t = tables().t;
  while (n >= 8) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);  // little-endian: the byte order the tables assume
    w ^= c;
    c = t[7][w & 0xFF] ^ t[6][(w >> 8) & 0xFF] ^ t[5][(w >> 16) & 0xFF] ^
        t[4][(w >> 24) & 0xFF] ^ t[3][(w >> 32) & 0xFF] ^ t[2][(w >> 40) & 0xFF] ^
        t[1][(w >> 48) & 0xFF] ^ t[0][w >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) c = (c >> 8) ^ t[0][(c ^ *p++) & 0xFF];
  return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) std::uint32_t crc_sse42(std::uint32_t c, const unsigned char* p,
                                                          std::size_t n) {
  std::uint64_t c64 = c;
  while (n >= 8) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    c64 = _mm_crc32_u64(c64, w);
    p += 8;
    n -= 8;
  }
  auto c32 = static_cast<std::uint32_t>(c64);
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}

bool have_sse42() {
  static const bool yes = __builtin_cpu_supports("sse4.2");
  return yes;
}
#endif

// a * b modulo the CRC polynomial, both as bit-reflected polynomials (x^0 is the top bit).
std::uint32_t multiply_mod_poly(std::uint32_t a, std::uint32_t b) {
  std::uint32_t product = 0;
  for (std::uint32_t bit = 1u << 31; bit != 0; bit >>= 1) {
    if (a & bit) product ^= b;
    b = (b & 1) ? (b >> 1) ^ kPoly : b >> 1;
  }
  return product;
}

// x^(8 * nbytes) modulo the polynomial, by square-and-multiply over the bits of nbytes.
std::uint32_t x_pow_8n(std::size_t nbytes) {
  std::uint32_t result = 1u << 31;  // x^0
  std::uint32_t square = 1u << 23;  // x^8 (one byte)
  while (nbytes != 0) {
    if (nbytes & 1) result = multiply_mod_poly(result, square);
    square = multiply_mod_poly(square, square);
    nbytes >>= 1;
  }
  return result;
}

}  // namespace

std::uint32_t crc32c(std::uint32_t crc, const void* data, std::size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  std::uint32_t c = ~crc;
#if defined(__x86_64__)
  if (have_sse42()) return ~crc_sse42(c, p, n);
#endif
  return ~crc_software(c, p, n);
}

std::uint32_t crc32c_combine(std::uint32_t crc_a, std::uint32_t crc_b, std::size_t len_b) {
  // The pre- and post-inversion cancel out, as for zlib's crc32_combine: shifting crc(A) by
  // len_b zero bytes and adding crc(B) gives crc(A || B).
  return multiply_mod_poly(x_pow_8n(len_b), crc_a) ^ crc_b;
}

std::uint32_t crc32c_parallel(const void* data, std::size_t n, int threads) {
  constexpr std::size_t kMinPerThread = std::size_t{4} << 20;  // below this a thread costs more
  const std::size_t by_size = std::max<std::size_t>(1, n / kMinPerThread);
  const auto parts = static_cast<std::size_t>(
      std::clamp<std::size_t>(static_cast<std::size_t>(std::max(threads, 1)), 1, by_size));
  if (parts == 1) return crc32c(0, data, n);
  const auto* p = static_cast<const unsigned char*>(data);
  std::vector<std::uint32_t> crcs(parts);
  std::vector<std::size_t> bounds(parts + 1);
  for (std::size_t i = 0; i <= parts; ++i) bounds[i] = n * i / parts;
  std::vector<std::thread> pool;
  for (std::size_t i = 1; i < parts; ++i) {
    pool.emplace_back([&, i] { crcs[i] = crc32c(0, p + bounds[i], bounds[i + 1] - bounds[i]); });
  }
  crcs[0] = crc32c(0, p, bounds[1]);
  for (auto& t : pool) t.join();
  std::uint32_t crc = crcs[0];
  for (std::size_t i = 1; i < parts; ++i) {
    crc = crc32c_combine(crc, crcs[i], bounds[i + 1] - bounds[i]);
  }
  return crc;
}

const char* crc32c_implementation() {
#if defined(__x86_64__)
  if (have_sse42()) return "sse4.2";
#endif
  return "software";
}

}  // namespace zero_aio

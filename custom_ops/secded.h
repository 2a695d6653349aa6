// secded.h: the extended Hamming SECDED code of ECC words, shared by the CPU kernel and the CUDA kernel.
//
// A word of k data bits (8, 16, 32 or 64) is stored with r + 1 check bits,
// r the smallest with 2^r >= k + r + 1: the codes (13,8), (22,16), (39,32)
// and (72,64).  Hamming positions 1 .. k + r hold the code: the powers of two
// are check bits 0 .. r-1, the others the data bits in ascending order; check
// bit r is the overall parity of the codeword (even).  Decoding: syndrome 0
// and even parity, clean; odd parity, one error at the syndrome's position
// (corrected); even parity and a non-zero syndrome, or a syndrome outside the
// code, two or more errors (detected, not corrected).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define ONNXFLIP_HD __host__ __device__ __forceinline__
#else
#define ONNXFLIP_HD inline
#endif

namespace onnxflip {

constexpr int kMaxHammingBits = 7;  // r of the (72,64) code

// The code of one word size, derived on the host by make_secded().
struct Secded {
  int data_bits;                      // k
  int hamming_bits;                   // r; the codeword has k + r + 1 bits
  uint64_t cover[kMaxHammingBits];    // data bits whose Hamming position has bit j set (check bit j)
  int8_t data_at[1 << kMaxHammingBits];  // data bit at a Hamming position; -1 at a check bit or beyond the code
};

// Check bits (r + 1) of a word of k <= 64 data bits; 0 for k = 0 (no ECC), with r = 0.
constexpr Secded make_secded(int data_bits) {
  Secded code{};
  code.data_bits = data_bits;
  int r = 0;
  while (data_bits > 0 && (1 << r) < data_bits + r + 1) ++r;
  code.hamming_bits = r;
  for (int s = 0; s < (1 << kMaxHammingBits); ++s) code.data_at[s] = -1;
  int data = 0;
  for (int position = 1; data < data_bits; ++position) {
    if ((position & (position - 1)) == 0) continue;  // a power of two: a check bit
    code.data_at[position] = static_cast<int8_t>(data);
    for (int j = 0; j < r; ++j) {
      if ((position >> j) & 1) code.cover[j] |= uint64_t{1} << data;
    }
    ++data;
  }
  return code;
}

ONNXFLIP_HD int parity64(uint64_t x) {
#if defined(__CUDA_ARCH__)
  return __popcll(x) & 1;
#else
  return __builtin_popcountll(x) & 1;
#endif
}

// The r Hamming check bits of data (bit j: check bit j), without the overall parity.
ONNXFLIP_HD uint32_t hamming_checks(const Secded& code, uint64_t data) {
  uint32_t checks = 0;
  for (int j = 0; j < code.hamming_bits; ++j) checks |= static_cast<uint32_t>(parity64(data & code.cover[j])) << j;
  return checks;
}

// The r + 1 check bits stored with data: the Hamming checks, then the overall parity at bit r.
ONNXFLIP_HD uint32_t secded_encode(const Secded& code, uint64_t data) {
  const uint32_t checks = hamming_checks(code, data);
  const int overall = parity64(data) ^ parity64(checks);
  return checks | (static_cast<uint32_t>(overall) << code.hamming_bits);
}

enum class Decoded : int { kClean = 0, kCorrected = 1, kDetected = 2 };

// Decodes a read codeword: corrects one wrong data bit in place, or reports two or more as detected.
ONNXFLIP_HD Decoded secded_decode(const Secded& code, uint64_t& data, uint32_t checks) {
  const uint32_t hamming_mask = (1u << code.hamming_bits) - 1u;
  const uint32_t syndrome = hamming_checks(code, data) ^ (checks & hamming_mask);
  const int odd = parity64(data) ^ parity64(checks);  // the overall bit included: 0 when consistent
  if (!odd) return syndrome == 0 ? Decoded::kClean : Decoded::kDetected;
  if ((syndrome & (syndrome - 1)) == 0) return Decoded::kCorrected;  // 0 or a power of two: a check bit
  const int bit = code.data_at[syndrome];
  if (bit < 0) return Decoded::kDetected;  // beyond the code: three or more errors
  data ^= uint64_t{1} << bit;
  return Decoded::kCorrected;
}

}  // namespace onnxflip

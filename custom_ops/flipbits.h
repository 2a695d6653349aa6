// flipbits.h: the FlipBits fault model, shared by the CPU kernel and the CUDA kernel.
//
// Every bit position allowed by the mask flips independently: a 0 becomes 1
// with probability p01, a 1 becomes 0 with probability p10.  The tensor is cut
// into blocks of kBlockElems elements; each block seeds a Philox4x32-10
// generator from (seed, stream, run, block index), draws the gaps between
// flipped positions from a geometric distribution (thinned by the bit's value
// when p01 != p10), and so costs O(elements + flips), independent of how many
// threads or which device run it.  Only IEEE +, *, / and floor are used on the
// random path, and compilation forbids FMA contraction, so the CPU and CUDA
// builds draw the same flips bit for bit.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define ONNXFLIP_HD __host__ __device__ __forceinline__
#else
#define ONNXFLIP_HD inline
#endif

namespace onnxflip {

constexpr int64_t kBlockElems = 1024;
static_assert(kBlockElems * 64 <= (int64_t{1} << 32), "block positions must fit in 32 bits");

enum class NonFinite : int { kKeep = 0, kZero = 1, kNanToNum = 2 };
enum class Randomness : int { kFixed = 0, kPerRun = 1 };

// How the bits of an element type encode values, for the nonfinite policy.
struct Format {
  int width;      // bits per element
  int exp_bits;   // 0 for integer types
  int mant_bits;
  bool has_inf;   // false for float8 e4m3fn, whose only non-finite value is NaN
};

// Everything a kernel needs, derived once on the host from the node's settings.
struct FlipPlan {
  uint64_t seed;
  uint32_t stream;
  uint32_t run;
  uint64_t mask;
  int mask_bits;             // number of set bits in mask
  uint8_t positions[64];     // the set bits of mask, ascending
  double inv_log1m_pmax;     // 1 / log(1 - max(p01, p10)); -0.0 when the max is 1
  bool active;               // some flip can happen
  bool asymmetric;           // p01 != p10: thin candidates by bit value
  uint64_t accept[2];        // candidate at a 0 (1) bit is kept when u32 < accept[0] ([1])
  Format format;
  NonFinite nonfinite;
};

// Philox4x32-10 (Salmon et al., SC'11): counter-based, so any block's stream
// can be produced directly from its index.
ONNXFLIP_HD void philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]) {
  uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
  uint32_t k0 = key[0], k1 = key[1];
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// The random numbers of one block, in a fixed order.
struct BlockRng {
  uint32_t key[2];
  uint32_t counter[4];
  uint32_t buffer[4];
  int used;

  ONNXFLIP_HD BlockRng(const FlipPlan& plan, uint64_t block) : used(4) {
    key[0] = static_cast<uint32_t>(plan.seed);
    key[1] = static_cast<uint32_t>(plan.seed >> 32);
    counter[0] = 0;
    counter[1] = static_cast<uint32_t>(block);
    counter[2] = plan.stream ^ (static_cast<uint32_t>(block >> 32) * 0x85EBCA6Bu);
    counter[3] = plan.run;
  }

  ONNXFLIP_HD uint32_t next_u32() {
    if (used == 4) {
      philox4x32_10(counter, key, buffer);
      ++counter[0];
      used = 0;
    }
    return buffer[used++];
  }

  // Uniform in (0, 1] with 53 random bits.
  ONNXFLIP_HD double next_unit() {
    const uint64_t hi = next_u32();
    const uint64_t lo = next_u32();
    const uint64_t bits = (hi << 21) ^ (lo >> 11);
    return static_cast<double>(bits + 1) * (1.0 / 9007199254740992.0);
  }
};

ONNXFLIP_HD uint64_t double_to_bits(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(x));
#else
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
#endif
}

ONNXFLIP_HD double bits_to_double(uint64_t bits) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(bits));
#else
  double x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
#endif
}

// Natural log of x in (0, 1], from +, *, / alone: x = m * 2^e with m in
// [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m - 1) / (m + 1).
ONNXFLIP_HD double portable_log(double x) {
  uint64_t bits = double_to_bits(x);
  int exponent = static_cast<int>((bits >> 52) & 0x7FF) - 1023;
  double m = bits_to_double((bits & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull);
  if (m > 1.4142135623730951) {
    m = m * 0.5;
    exponent += 1;
  }
  const double s = (m - 1.0) / (m + 1.0);
  const double z = s * s;
  double series = 1.0 / 23.0;
  for (int k = 10; k >= 0; --k) series = series * z + 1.0 / (2.0 * k + 1.0);
  return static_cast<double>(exponent) * 0.6931471805599453 + 2.0 * s * series;
}

// Number of unflipped candidate positions before the next flip.
ONNXFLIP_HD double draw_gap(BlockRng& rng, double inv_log1m) {
  const double gap = floor(portable_log(rng.next_unit()) * inv_log1m);
  return gap > 0.0 ? gap : 0.0;  // -0.0 when u == 1 or the probability is 1
}

template <typename U>
ONNXFLIP_HD U apply_nonfinite(U v, const Format& f, NonFinite policy) {
  if (policy == NonFinite::kKeep || f.exp_bits == 0) return v;
  const U one = 1;
  const U mant_mask = static_cast<U>((one << f.mant_bits) - one);
  const U exp_mask = static_cast<U>(((one << f.exp_bits) - one) << f.mant_bits);
  const U sign = static_cast<U>(one << (f.width - 1));
  if ((v & exp_mask) != exp_mask) return v;                 // finite
  const bool is_nan = f.has_inf ? (v & mant_mask) != 0 : (v & mant_mask) == mant_mask;
  if (!f.has_inf && !is_nan) return v;                      // e4m3fn: exponent all ones is finite
  if (policy == NonFinite::kZero || is_nan) return 0;
  // +-inf -> +-largest finite: exponent one below all ones, mantissa all ones.
  const U largest = static_cast<U>((exp_mask - (one << f.mant_bits)) | mant_mask);
  return static_cast<U>((v & sign) | largest);
}

// Flip the bits of out[0..count), the elements of block `block`, in place.
template <typename U>
ONNXFLIP_HD void flip_block(U* out, int64_t count, uint64_t block, const FlipPlan& plan) {
  if (!plan.active || count <= 0) return;
  BlockRng rng(plan, block);
  // Positions in a block are below kBlockElems * 64 = 2^16: 32-bit division suffices.
  const uint32_t per_elem = static_cast<uint32_t>(plan.mask_bits);
  const double total = static_cast<double>(count) * static_cast<double>(per_elem);
  double next = draw_gap(rng, plan.inv_log1m_pmax);
  int64_t current = -1;
  while (next < total) {
    const uint32_t pos = static_cast<uint32_t>(next);
    const int64_t elem = static_cast<int64_t>(pos / per_elem);
    const U bit = static_cast<U>(U(1) << plan.positions[pos % per_elem]);
    bool keep = true;
    if (plan.asymmetric) {
      const int value = (out[elem] & bit) != 0;
      keep = rng.next_u32() < plan.accept[value];
    }
    if (keep) {
      if (elem != current) {
        if (current >= 0) out[current] = apply_nonfinite(out[current], plan.format, plan.nonfinite);
        current = elem;
      }
      out[elem] = static_cast<U>(out[elem] ^ bit);
    }
    next = next + 1.0 + draw_gap(rng, plan.inv_log1m_pmax);
  }
  if (current >= 0) out[current] = apply_nonfinite(out[current], plan.format, plan.nonfinite);
}

}  // namespace onnxflip

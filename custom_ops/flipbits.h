// flipbits.h: the FlipBits fault models (flips, stuck-at cells, SECDED words), shared by the CPU and CUDA kernels.
//
// Every bit position allowed by the mask flips independently: a 0 becomes 1
// with probability p01, a 1 becomes 0 with probability p10.  Independently, a
// cell is stuck at 0 with probability s0 or at 1 with probability s1 (one or
// the other, never both: s0 + s1 <= 1), and reads its stuck value whatever
// was written or flipped.  With ECC the stored word is a SECDED codeword
// (secded.h): flips and stuck cells hit its data bits (those of the mask) and
// all its check bits, and the word is decoded on read.
//
// The tensor is cut into blocks of kBlockElems elements; each block seeds a
// Philox4x32-10 generator from (seed, stream, run, block index) for the flips
// and from (stuck_seed, stream, block index) for the stuck cells (stuck_seed is
// the seed unless given apart), which are thus the same at every run, and draws the gaps between faulty positions from a
// geometric distribution (flips thinned by the bit's value when p01 != p10).
// A block costs O(elements + faults), independent of how many threads or
// which device run it; words no fault reaches are not decoded (their
// syndrome is zero).  Only IEEE +, *, / and floor are used on the random
// path, and compilation forbids FMA contraction, so the CPU and CUDA builds
// draw the same faults bit for bit.
//
// Faults are drawn by the logical (row-major, as the shape says) index of an
// element; a Layout maps that index to where the element lies in memory, so
// that a tensor ONNX Runtime holds in its blocked NCHWc layout (channels in
// blocks of 8 or 16, padded) gets the faults of the same tensor in NCHW, and
// its padding channels are neither flipped nor counted.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "secded.h"

namespace onnxflip {

constexpr int64_t kBlockElems = 1024;
static_assert(kBlockElems * 72 <= (int64_t{1} << 32), "block positions must fit in 32 bits");
static_assert(kBlockElems % 8 == 0, "an ECC word of 64 bits must not straddle two blocks");

enum class NonFinite : int { kKeep = 0, kZero = 1, kNanToNum = 2 };
enum class Randomness : int { kFixed = 0, kPerRun = 1 };
// none: values stored as they are; secded: each value is one SECDED word; secded64: 64-bit words of 64 / width values.
enum class Ecc : int { kNone = 0, kSecded = 1, kSecded64 = 2 };
enum class OnDetected : int { kKeep = 0, kZero = 1 };
// The words counted per run: an optional second output int64[3] in this order.
enum Count : int { kCorrected = 0, kDetected = 1, kSilent = 2, kCountKinds = 3 };

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
  uint64_t stuck_seed;       // keys the stuck cells: the stuck_seed input, else seed
  uint32_t stream;
  uint32_t run;
  uint64_t mask;
  int mask_bits;             // number of set bits in mask
  uint8_t positions[64];     // the set bits of mask, ascending
  double inv_log1m_pmax;     // 1 / log(1 - max(p01, p10)); -0.0 when the max is 1
  bool active;               // some fault can happen (flips or stuck cells)
  bool flips;                // some flip can happen
  bool asymmetric;           // p01 != p10: thin candidates by bit value
  uint64_t accept[2];        // candidate at a 0 (1) bit is kept when u32 < accept[0] ([1])
  bool stuck;                // some cell is stuck
  double inv_log1m_stuck;    // 1 / log(1 - (s0 + s1)); -0.0 when the sum is 1
  uint64_t stuck_one;        // a stuck cell holds 1 when u32 < stuck_one (probability s1 / (s0 + s1))
  Ecc ecc;
  OnDetected on_detected;
  int word_values;           // values per stored word: 1, or 64 / width for secded64
  uint32_t word_positions;   // fault positions per word: word_values * mask_bits data bits, then the check bits
  Secded code;               // data_bits 0 without ECC
  Format format;
  NonFinite nonfinite;
};

// Where the elements of a tensor lie: as its logical shape says (block 0), or in NCHWc blocks of `block`
// channels: logical [N, channels, spatial] at ((n * ceil(channels / block) + c / block) * spatial + s) * block
// + c % block.
struct Layout {
  int64_t block;     // 0: plain
  int64_t channels;  // logical channels
  int64_t spatial;   // elements per channel and image
};

ONNXFLIP_HD int64_t physical_index(const Layout& layout, int64_t logical) {
  if (layout.block == 0) return logical;
  const int64_t per_image = layout.channels * layout.spatial;
  const int64_t n = logical / per_image;
  const int64_t c = (logical - n * per_image) / layout.spatial;
  const int64_t s = logical - n * per_image - c * layout.spatial;
  const int64_t blocks = (layout.channels + layout.block - 1) / layout.block;
  return ((n * blocks + c / layout.block) * layout.spatial + s) * layout.block + c % layout.block;
}

// The elements of one fault block: element i is at(i).
template <typename U>
struct PlainElements {
  U* first;
  ONNXFLIP_HD U& operator()(int64_t i) const { return first[i]; }
};

template <typename U>
struct LaidOutElements {
  U* data;        // the whole tensor
  int64_t begin;  // logical index of the block's first element
  Layout layout;
  ONNXFLIP_HD U& operator()(int64_t i) const { return data[physical_index(layout, begin + i)]; }
};

// The random stream of the stuck cells starts here in Philox's first counter word, far above any flip stream.
constexpr uint32_t kStuckDomain = 0x80000000u;

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

  // A block draws fewer than 2^18 numbers per run, so the flip (domain 0) and stuck streams never meet.
  ONNXFLIP_HD BlockRng(uint64_t seed, const FlipPlan& plan, uint64_t block, uint32_t run, uint32_t domain)
      : used(4) {
    key[0] = static_cast<uint32_t>(seed);
    key[1] = static_cast<uint32_t>(seed >> 32);
    counter[0] = domain;
    counter[1] = static_cast<uint32_t>(block);
    counter[2] = plan.stream ^ (static_cast<uint32_t>(block >> 32) * 0x85EBCA6Bu);
    counter[3] = run;
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

// A stored word while it is read: data bits 0..63 (the word's values packed from bit 0) and check bits.
// A codeword bit below 64 is a data bit, 64 + j is check bit j.
struct Codeword {
  uint64_t data;
  uint32_t checks;

  ONNXFLIP_HD int bit(int index) const {
    return index < 64 ? static_cast<int>((data >> index) & 1) : static_cast<int>((checks >> (index - 64)) & 1);
  }
  ONNXFLIP_HD void toggle(int index) {
    if (index < 64) {
      data ^= uint64_t{1} << index;
    } else {
      checks ^= 1u << (index - 64);
    }
  }
  ONNXFLIP_HD void set(int index, int value) {
    if (bit(index) != value) toggle(index);
  }
};

// The codeword bit at fault position `offset` of a word: the mask's bits of each value, then the check bits.
ONNXFLIP_HD int codeword_bit(const FlipPlan& plan, uint32_t offset) {
  const uint32_t per_value = static_cast<uint32_t>(plan.mask_bits);
  const uint32_t data_positions = per_value * static_cast<uint32_t>(plan.word_values);
  if (offset >= data_positions) return 64 + static_cast<int>(offset - data_positions);
  return static_cast<int>(offset / per_value) * plan.format.width + plan.positions[offset % per_value];
}

// The values at(first .. first + values) that exist (below count), packed; absent ones read as zero.
template <typename U, typename At>
ONNXFLIP_HD uint64_t load_word(const At& at, int64_t first, int64_t count, int values) {
  uint64_t data = 0;
  for (int v = 0; v < values && first + v < count; ++v) {
    data |= static_cast<uint64_t>(at(first + v)) << (v * static_cast<int>(sizeof(U)) * 8);
  }
  return data;
}

// Writes back the values of a word that changed, through the nonfinite policy.
template <typename U, typename At>
ONNXFLIP_HD void store_word(const At& at, int64_t first, int64_t count, uint64_t data, uint64_t written,
                            const FlipPlan& plan) {
  constexpr int width = static_cast<int>(sizeof(U)) * 8;
  for (int v = 0; v < plan.word_values && first + v < count; ++v) {
    const U value = static_cast<U>(data >> (v * width));
    if (value != static_cast<U>(written >> (v * width))) at(first + v) = apply_nonfinite(value, plan.format, plan.nonfinite);
  }
}

// Applies the plan's faults to at(0..count), the elements of block `block`, in place, and adds the words
// read corrected, detected or silently wrong to counts (without ECC, every changed value is silent).
template <typename U, typename At>
ONNXFLIP_HD void fault_elements(const At& out, int64_t count, uint64_t block, const FlipPlan& plan,
                                int64_t counts[kCountKinds]) {
  if (!plan.active || count <= 0) return;
  const int64_t words = (count + plan.word_values - 1) / plan.word_values;
  const double per_word = static_cast<double>(plan.word_positions);
  const double total = static_cast<double>(words) * per_word;  // below 2^17: exact, as are all positions
  BlockRng flip_rng(plan.seed, plan, block, plan.run, 0);
  BlockRng stuck_rng(plan.stuck_seed, plan, block, 0, kStuckDomain);  // no run: the same stuck cells at every run
  double next_flip = plan.flips ? draw_gap(flip_rng, plan.inv_log1m_pmax) : total;
  double next_stuck = plan.stuck ? draw_gap(stuck_rng, plan.inv_log1m_stuck) : total;
  while (next_flip < total || next_stuck < total) {
    const uint32_t word = static_cast<uint32_t>(next_flip < next_stuck ? next_flip : next_stuck) / plan.word_positions;
    const double base = static_cast<double>(word) * per_word;
    const double end = base + per_word;
    const int64_t first = static_cast<int64_t>(word) * plan.word_values;
    const uint64_t written = load_word<U>(out, first, count, plan.word_values);
    const Codeword stored{written, plan.code.data_bits ? secded_encode(plan.code, written) : 0u};
    Codeword read = stored;
    for (; next_flip < end; next_flip = next_flip + 1.0 + draw_gap(flip_rng, plan.inv_log1m_pmax)) {
      const int bit = codeword_bit(plan, static_cast<uint32_t>(next_flip - base));
      if (plan.asymmetric && !(flip_rng.next_u32() < plan.accept[read.bit(bit)])) continue;
      read.toggle(bit);
    }
    for (; next_stuck < end; next_stuck = next_stuck + 1.0 + draw_gap(stuck_rng, plan.inv_log1m_stuck)) {
      const int bit = codeword_bit(plan, static_cast<uint32_t>(next_stuck - base));
      read.set(bit, stuck_rng.next_u32() < plan.stuck_one);  // after the flips: a stuck cell ignores them
    }
    if (read.data == stored.data && read.checks == stored.checks) continue;
    if (plan.code.data_bits == 0) {
      ++counts[kSilent];
    } else if (secded_decode(plan.code, read.data, read.checks) == Decoded::kDetected) {
      ++counts[kDetected];
      if (plan.on_detected == OnDetected::kZero) read.data = 0;
    } else {
      ++counts[read.data == written ? kCorrected : kSilent];
    }
    store_word<U>(out, first, count, read.data, written, plan);
  }
}

// fault_elements on out[0..count), a block stored as its shape says.
template <typename U>
ONNXFLIP_HD void fault_block(U* out, int64_t count, uint64_t block, const FlipPlan& plan, int64_t counts[kCountKinds]) {
  fault_elements<U>(PlainElements<U>{out}, count, block, plan, counts);
}

}  // namespace onnxflip

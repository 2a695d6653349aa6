// secded.cc: the SECDED code of secded.h behind C entry points, so that tests check it against a reference.
#include <cstdint>

#include "contract.h"

namespace {

bool valid(int data_bits) { return data_bits == 8 || data_bits == 16 || data_bits == 32 || data_bits == 64; }

onnxflip::Secded code_of(int data_bits) {
  static const onnxflip::Secded codes[4] = {onnxflip::make_secded(8), onnxflip::make_secded(16),
                                            onnxflip::make_secded(32), onnxflip::make_secded(64)};
  return codes[data_bits == 8 ? 0 : data_bits == 16 ? 1 : data_bits == 32 ? 2 : 3];
}

}  // namespace

// The check bits (Hamming bits 0..r-1, overall parity at bit r) stored with a word of data_bits (8, 16, 32, 64);
// -1 for another width.
extern "C" __attribute__((visibility("default"))) int64_t onnxflip_secded_encode(int32_t data_bits, uint64_t data) {
  if (!valid(data_bits)) return -1;
  return onnxflip::secded_encode(code_of(data_bits), data);
}

// Decodes a read codeword in place: 0 clean, 1 corrected, 2 detected (not corrected); -1 for another width.
extern "C" __attribute__((visibility("default"))) int32_t onnxflip_secded_decode(int32_t data_bits, uint64_t* data,
                                                                                uint32_t checks) {
  if (!valid(data_bits)) return -1;
  return static_cast<int32_t>(onnxflip::secded_decode(code_of(data_bits), *data, checks));
}

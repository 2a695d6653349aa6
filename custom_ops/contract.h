// contract.h: the FlipBits operator's contract, stated once: element types, enum attributes, attributes, inputs.
//
// register.cc registers one op per element type listed here, the settings parser
// reads attributes and enums through these tables, the C entry points check
// their arguments against them, and onnxflip_contract() exports them as JSON so
// that Python asks the library instead of mirroring it.
#pragma once

#include <cstddef>
#include <cstdint>

#include <onnxruntime_c_api.h>

#include "flipbits.h"

namespace onnxflip {

constexpr const char* kDomain = "onnxflip";
constexpr const char* kOpType = "FlipBits";
constexpr int kOpVersion = 1;

// An element type FlipBits takes: its ONNX code (ORT's enum has the same values), name and bit layout.
struct ElementType {
  ONNXTensorElementDataType onnx_type;
  const char* name;
  Format format;  // width, exponent bits, mantissa bits, has_inf
};

constexpr ElementType kElementTypes[] = {
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, "float16", {16, 5, 10, true}},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16, "bfloat16", {16, 8, 7, true}},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "float32", {32, 8, 23, true}},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE, "float64", {64, 11, 52, true}},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT8E4M3FN, "float8_e4m3fn", {8, 4, 3, false}},  // NaN only, no inf
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT8E5M2, "float8_e5m2", {8, 5, 2, true}},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, "int8", {8, 0, 0, false}},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, "uint8", {8, 0, 0, false}},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16, "int16", {16, 0, 0, false}},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, "int32", {32, 0, 0, false}},
};

// The entry of an ONNX type code, or nullptr when FlipBits does not take it.
constexpr const ElementType* find_element_type(int onnx_type) {
  for (const ElementType& t : kElementTypes) {
    if (static_cast<int>(t.onnx_type) == onnx_type) return &t;
  }
  return nullptr;
}

// A string attribute's value and the code it stands for (the C entry point takes the code).
template <typename Enum>
struct EnumName {
  const char* name;
  Enum value;
};

constexpr EnumName<Randomness> kRandomnessNames[] = {{"fixed", Randomness::kFixed}, {"per_run", Randomness::kPerRun}};
constexpr EnumName<NonFinite> kNonFiniteNames[] = {
    {"keep", NonFinite::kKeep}, {"zero", NonFinite::kZero}, {"nan_to_num", NonFinite::kNanToNum}};
constexpr EnumName<Ecc> kEccNames[] = {{"none", Ecc::kNone}, {"secded", Ecc::kSecded}, {"secded64", Ecc::kSecded64}};
constexpr EnumName<OnDetected> kOnDetectedNames[] = {{"keep", OnDetected::kKeep}, {"zero", OnDetected::kZero}};
constexpr EnumName<Count> kCountNames[] = {
    {"corrected", kCorrected}, {"detected", kDetected}, {"silent", kSilent}};  // the counts output, by index

// The data bits of the word an ECC mode stores a value of `width` bits in; 0 where the mode cannot store it.
constexpr int ecc_word_bits(Ecc ecc, int width) {
  const bool known = width == 8 || width == 16 || width == 32 || width == 64;
  if (!known) return 0;
  return ecc == Ecc::kSecded ? width : ecc == Ecc::kSecded64 ? 64 : 0;
}

// Attribute names, and the attributes with their defaults as JSON values (null: all bits of the type).
constexpr const char* kAttrP01 = "p01";
constexpr const char* kAttrP10 = "p10";
constexpr const char* kAttrSeed = "seed";
constexpr const char* kAttrStream = "stream";
constexpr const char* kAttrBitmask = "bitmask";
constexpr const char* kAttrRandomness = "randomness";
constexpr const char* kAttrNonFinite = "nonfinite";
constexpr const char* kAttrS0 = "s0";
constexpr const char* kAttrS1 = "s1";
constexpr const char* kAttrEcc = "ecc";
constexpr const char* kAttrOnDetected = "on_detected";
// X's memory layout: 0, as its shape says; b > 0, NCHWc blocks of b channels (ONNX Runtime's CPU convolutions),
// X's dimension 1 being `channels` (the logical ones) rounded up to b.
constexpr const char* kAttrNchwcBlock = "nchwc_block";
constexpr const char* kAttrChannels = "channels";

struct Attribute {
  const char* name;
  const char* type;           // ONNX attribute type: float, int or string
  const char* default_json;
};

constexpr Attribute kAttributes[] = {
    {kAttrP01, "float", "0.0"},          {kAttrP10, "float", "0.0"},
    {kAttrSeed, "int", "0"},             {kAttrStream, "int", "0"},
    {kAttrBitmask, "int", "null"},       {kAttrRandomness, "string", "\"fixed\""},
    {kAttrNonFinite, "string", "\"keep\""},  {kAttrS0, "float", "0.0"},
    {kAttrS1, "float", "0.0"},           {kAttrEcc, "string", "\"none\""},
    {kAttrOnDetected, "string", "\"keep\""},
    {kAttrNchwcBlock, "int", "0"},      {kAttrChannels, "int", "0"},
};

// Inputs: X, then the optional scalars that, when present and non-empty, take precedence over the attributes.
// stuck_seed has no attribute: absent or empty, the stuck cells are keyed by the seed.
enum Input : size_t { kX = 0, kP01 = 1, kP10 = 2, kSeed = 3, kS0 = 4, kS1 = 5, kStuckSeed = 6, kInputCount = 7 };

struct InputSpec {
  const char* name;
  ONNXTensorElementDataType type;  // UNDEFINED: the op's element type T
  bool optional;
};

constexpr InputSpec kInputs[kInputCount] = {
    {"X", ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED, false},
    {kAttrP01, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, true},
    {kAttrP10, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, true},
    {kAttrSeed, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, true},
    {kAttrS0, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, true},
    {kAttrS1, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, true},
    {"stuck_seed", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, true},
};

// Outputs: Y, and optionally the words of this run read corrected, detected and silently wrong (kCountNames).
enum Output : size_t { kY = 0, kCounts = 1, kOutputCount = 2 };

constexpr InputSpec kOutputs[kOutputCount] = {
    {"Y", ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED, false},
    {"counts", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, true},
};

// The C entry points that run the kernel without ONNX Runtime: onnxflip_cpu_flip_bits (flipbits_cpu.cc) on host
// memory, and onnxflip_cuda_flip_bits (cuda/flipbits_cuda.cc, in a library built with CUDA) on device memory.
// Their parameters in order with their C types, so that a caller through a foreign-function interface (Python's
// ctypes) passes them by name.  The CPU entry returns 0 or -1 for invalid settings; the CUDA entry also a CUDA error
// code.
struct Parameter {
  const char* name;
  const char* c_type;
};

// The parameters both entries take, in order; the CUDA entry adds its stream after them.
#define ONNXFLIP_ENTRY_PARAMETERS                                                                              \
  {"x", "const void*"}, {"y", "void*"}, {"count", "int64_t"}, {"onnx_type", "int32_t"}, {kAttrP01, "double"},   \
      {kAttrP10, "double"}, {kAttrSeed, "int64_t"}, {"stream_id", "int64_t"}, {"run", "uint32_t"},               \
      {"mask", "uint64_t"}, {kAttrNonFinite, "int32_t"}, {kAttrS0, "double"}, {kAttrS1, "double"},               \
      {"stuck_seed", "int64_t"}, {kAttrEcc, "int32_t"}, {kAttrOnDetected, "int32_t"}, {"counts", "int64_t*"}

constexpr const char* kCpuEntryName = "onnxflip_cpu_flip_bits";
constexpr Parameter kCpuEntryParameters[] = {ONNXFLIP_ENTRY_PARAMETERS};

constexpr const char* kCudaEntryName = "onnxflip_cuda_flip_bits";
constexpr Parameter kCudaEntryParameters[] = {ONNXFLIP_ENTRY_PARAMETERS, {"cuda_stream", "void*"}};

#undef ONNXFLIP_ENTRY_PARAMETERS

}  // namespace onnxflip

// The contract above as one JSON object (domain, op_type, version, element_types, enums, attributes, inputs,
// outputs, ecc_codes: for each ECC mode and element width, the data and check bits of its stored word;
// cpu_entry, cuda_entry: the name and parameters of the host and CUDA entry points).
// The string is owned by the library and lives as long as it is loaded.
extern "C" __attribute__((visibility("default"))) const char* onnxflip_contract(void);

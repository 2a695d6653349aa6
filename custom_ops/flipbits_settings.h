// flipbits_settings.h: a FlipBits node's attributes and scalar inputs, checked, as a FlipPlan.
#pragma once

#include <cstdint>
#include <string>

#include <onnxruntime_cxx_api.h>  // built with ORT_API_MANUAL_INIT

#include "flipbits.h"

namespace onnxflip {

constexpr const char* kDomain = "onnxflip";
constexpr const char* kOpType = "FlipBits";

// Input indices: X, then the optional scalars that override the attributes.
enum Input : size_t { kX = 0, kP01 = 1, kP10 = 2, kSeed = 3, kInputCount = 4 };

// The bit layout of an ONNX element type; width 0 for types FlipBits does not take.
Format format_of(ONNXTensorElementDataType type);

struct FlipSettings {
  double p01 = 0.0;
  double p10 = 0.0;
  int64_t seed = 0;
  int64_t stream = 0;
  uint64_t mask = 0;  // all bits of the type when the attribute is absent
  Randomness randomness = Randomness::kFixed;
  NonFinite nonfinite = NonFinite::kKeep;
};

// Thrown for settings a user must fix; the message names the node.
struct SettingsError {
  std::string message;
};

// Reads and checks the attributes at session creation.
FlipSettings read_attributes(const Ort::ConstKernelInfo& info, const Format& format, const std::string& node);

// Applies the scalar inputs that are present (they take precedence) and checks them.
FlipSettings with_inputs(FlipSettings settings, Ort::KernelContext& context, const std::string& node);

// Everything a kernel needs to flip one tensor in one run.
FlipPlan make_plan(const FlipSettings& settings, const Format& format, uint32_t run);

}  // namespace onnxflip

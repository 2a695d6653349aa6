// flipbits_settings.h: a FlipBits node's attributes and scalar inputs, checked, as a FlipPlan.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <onnxruntime_cxx_api.h>  // built with ORT_API_MANUAL_INIT

#include "contract.h"
#include "flipbits.h"

namespace onnxflip {

struct FlipSettings {
  double p01 = 0.0;
  double p10 = 0.0;
  int64_t seed = 0;
  bool has_stuck_seed = false;  // the stuck_seed input was given: it keys the stuck cells instead of seed
  int64_t stuck_seed = 0;
  int64_t stream = 0;
  uint64_t mask = 0;  // all bits of the type when the attribute is absent
  Randomness randomness = Randomness::kFixed;
  NonFinite nonfinite = NonFinite::kKeep;
  double s0 = 0.0;  // probability that a cell is stuck at 0
  double s1 = 0.0;  // ... at 1 (s0 + s1 <= 1: a cell is stuck at one value)
  Ecc ecc = Ecc::kNone;
  OnDetected on_detected = OnDetected::kKeep;
  int64_t nchwc_block = 0;  // X in NCHWc blocks of this many channels; 0: as its shape says
  int64_t channels = 0;     // the logical channels of an NCHWc X
};

// Where the elements of X lie (see Layout), and how many there are logically; throws SettingsError where X's
// shape does not fit the node's layout.
Layout layout_of(const FlipSettings& settings, const std::vector<int64_t>& shape, const std::string& node,
                 int64_t& logical_count);

// The contract's (kRandomnessNames, kNonFiniteNames, ...) value for a name; false when the name is not there.
template <typename Enum, size_t N>
bool enum_value(const EnumName<Enum> (&names)[N], const std::string& text, Enum& out) {
  for (const EnumName<Enum>& entry : names) {
    if (text == entry.name) {
      out = entry.value;
      return true;
    }
  }
  return false;
}

// Whether a code is one of the contract's values of the enum (the C entry point takes codes).
template <typename Enum, size_t N>
bool is_enum_code(const EnumName<Enum> (&names)[N], int code) {
  for (const EnumName<Enum>& entry : names) {
    if (static_cast<int>(entry.value) == code) return true;
  }
  return false;
}

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

// The plan of a C entry point's arguments (onnx_type, nonfinite, ecc and on_detected are codes from
// onnxflip_contract(); `run` is used as given; stuck_seed keys the stuck cells), checked as the operator checks its
// attributes; false for invalid settings.  The rates are rounded to float32, the precision of the operator's inputs,
// so that the same rates draw the same faults as the operator does.
bool entry_plan(int32_t onnx_type, double p01, double p10, int64_t seed, int64_t stream_id, uint32_t run,
                uint64_t mask, int32_t nonfinite, double s0, double s1, int64_t stuck_seed, int32_t ecc,
                int32_t on_detected, FlipPlan& plan);

}  // namespace onnxflip

// flipbits_settings.cc: parses and validates FlipBits settings, and derives the sampling constants.
#include "flipbits_settings.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

namespace onnxflip {
namespace {

std::string describe(const std::string& node) { return "FlipBits node '" + node + "': "; }

void check_probability(double p, const char* name, const std::string& node) {
  if (!(p >= 0.0 && p <= 1.0)) {
    std::ostringstream msg;
    msg << describe(node) << name << " = " << p << " is not a probability in [0, 1]";
    throw SettingsError{msg.str()};
  }
}

// s0 + s1 <= 1, up to the rounding of two float32 values.
void check_stuck(double s0, double s1, const std::string& node) {
  if (s0 + s1 > 1.0 + 1e-6) {
    std::ostringstream msg;
    msg << describe(node) << "s0 + s1 = " << s0 + s1 << " exceeds 1 (a cell is stuck at 0 or at 1, not both)";
    throw SettingsError{msg.str()};
  }
}

template <typename T>
bool attribute(const Ort::ConstKernelInfo& info, const char* name, T& out) {
  // ORT reports a missing attribute as an error status; absence means "use the default".
  try {
    out = info.GetAttribute<T>(name);
    return true;
  } catch (const Ort::Exception&) {
    return false;
  }
}

template <typename T>
bool scalar_input(Ort::KernelContext& context, size_t index, T& out, const char* name, const std::string& node) {
  if (index >= context.GetInputCount()) return false;
  Ort::ConstValue value = context.GetInput(index);
  if (value == nullptr) return false;
  const size_t count = value.GetTensorTypeAndShapeInfo().GetElementCount();
  if (count == 0) return false;
  if (count != 1) throw SettingsError{describe(node) + "input " + name + " must hold one value"};
  out = value.GetTensorData<T>()[0];
  return true;
}

// "'a', 'b' or 'c'": the names an enum attribute takes, for error messages.
template <typename Enum, size_t N>
std::string choices(const EnumName<Enum> (&names)[N]) {
  std::string out;
  for (size_t i = 0; i < N; ++i) {
    out += (i == 0 ? "'" : (i + 1 == N ? " or '" : ", '")) + std::string(names[i].name) + "'";
  }
  return out;
}

template <typename Enum, size_t N>
void read_enum(const Ort::ConstKernelInfo& info, const char* name, const EnumName<Enum> (&names)[N], Enum& out,
               const std::string& node) {
  std::string text;
  if (attribute(info, name, text) && !enum_value(names, text, out)) {
    throw SettingsError{describe(node) + name + " '" + text + "' is not " + choices(names)};
  }
}

}  // namespace

FlipSettings read_attributes(const Ort::ConstKernelInfo& info, const Format& format, const std::string& node) {
  FlipSettings s;
  float p = 0.0f;
  if (attribute(info, kAttrP01, p)) s.p01 = p;
  if (attribute(info, kAttrP10, p)) s.p10 = p;
  check_probability(s.p01, "attribute p01", node);
  check_probability(s.p10, "attribute p10", node);
  attribute(info, kAttrSeed, s.seed);
  attribute(info, kAttrStream, s.stream);
  if (s.stream < 0 || s.stream > std::numeric_limits<uint32_t>::max()) {
    throw SettingsError{describe(node) + "attribute stream must be in [0, 2^32)"};
  }
  const uint64_t all = format.width == 64 ? ~uint64_t{0} : ((uint64_t{1} << format.width) - 1);
  int64_t mask = 0;
  s.mask = attribute(info, kAttrBitmask, mask) ? static_cast<uint64_t>(mask) : all;
  if ((s.mask & ~all) != 0) {
    std::ostringstream msg;
    msg << describe(node) << "bitmask 0x" << std::hex << s.mask << " has bits outside the " << std::dec
        << format.width << "-bit element type";
    throw SettingsError{msg.str()};
  }
  read_enum(info, kAttrRandomness, kRandomnessNames, s.randomness, node);
  read_enum(info, kAttrNonFinite, kNonFiniteNames, s.nonfinite, node);
  if (attribute(info, kAttrS0, p)) s.s0 = p;
  if (attribute(info, kAttrS1, p)) s.s1 = p;
  check_probability(s.s0, "attribute s0", node);
  check_probability(s.s1, "attribute s1", node);
  check_stuck(s.s0, s.s1, node);
  read_enum(info, kAttrEcc, kEccNames, s.ecc, node);
  read_enum(info, kAttrOnDetected, kOnDetectedNames, s.on_detected, node);
  if (s.ecc != Ecc::kNone && ecc_word_bits(s.ecc, format.width) == 0) {
    throw SettingsError{describe(node) + "ecc cannot protect " + std::to_string(format.width) + "-bit values"};
  }
  attribute(info, kAttrNchwcBlock, s.nchwc_block);
  attribute(info, kAttrChannels, s.channels);
  if (s.nchwc_block < 0 || (s.nchwc_block > 0 && s.channels <= 0)) {
    throw SettingsError{describe(node) + "an NCHWc layout needs nchwc_block > 0 and channels > 0"};
  }
  return s;
}

Layout layout_of(const FlipSettings& s, const std::vector<int64_t>& shape, const std::string& node,
                 int64_t& logical_count) {
  int64_t count = 1;
  for (int64_t d : shape) count *= d;
  logical_count = count;
  if (s.nchwc_block == 0) return Layout{0, 0, 0};
  const int64_t padded = (s.channels + s.nchwc_block - 1) / s.nchwc_block * s.nchwc_block;
  if (shape.size() < 2 || shape[1] != padded) {
    throw SettingsError{describe(node) + "X must have " + std::to_string(padded) + " channels (" +
                        std::to_string(s.channels) + " in blocks of " + std::to_string(s.nchwc_block) + ")"};
  }
  int64_t spatial = 1;
  for (size_t i = 2; i < shape.size(); ++i) spatial *= shape[i];
  logical_count = shape[0] * s.channels * spatial;
  return Layout{s.nchwc_block, s.channels, spatial};
}

FlipSettings with_inputs(FlipSettings s, Ort::KernelContext& context, const std::string& node) {
  float p = 0.0f;
  if (scalar_input(context, kP01, p, kInputs[kP01].name, node)) {
    s.p01 = p;
    check_probability(s.p01, "input p01", node);
  }
  if (scalar_input(context, kP10, p, kInputs[kP10].name, node)) {
    s.p10 = p;
    check_probability(s.p10, "input p10", node);
  }
  scalar_input(context, kSeed, s.seed, kInputs[kSeed].name, node);
  const bool s0 = scalar_input(context, kS0, p, kInputs[kS0].name, node);
  if (s0) {
    s.s0 = p;
    check_probability(s.s0, "input s0", node);
  }
  const bool s1 = scalar_input(context, kS1, p, kInputs[kS1].name, node);
  if (s1) {
    s.s1 = p;
    check_probability(s.s1, "input s1", node);
  }
  if (s0 || s1) check_stuck(s.s0, s.s1, node);
  s.has_stuck_seed = scalar_input(context, kStuckSeed, s.stuck_seed, kInputs[kStuckSeed].name, node);
  return s;
}

FlipPlan make_plan(const FlipSettings& s, const Format& format, uint32_t run) {
  FlipPlan plan{};
  plan.seed = static_cast<uint64_t>(s.seed);
  plan.stuck_seed = static_cast<uint64_t>(s.has_stuck_seed ? s.stuck_seed : s.seed);
  plan.stream = static_cast<uint32_t>(s.stream);
  plan.run = s.randomness == Randomness::kPerRun ? run : 0;
  plan.mask = s.mask;
  plan.mask_bits = 0;
  for (int bit = 0; bit < format.width; ++bit) {
    if ((s.mask >> bit) & 1) plan.positions[plan.mask_bits++] = static_cast<uint8_t>(bit);
  }
  const double pmax = std::max(s.p01, s.p10);
  plan.inv_log1m_pmax = 1.0 / std::log1p(-pmax);
  plan.ecc = s.ecc;
  plan.on_detected = s.on_detected;
  plan.code = make_secded(ecc_word_bits(s.ecc, format.width));
  plan.word_values = s.ecc == Ecc::kSecded64 ? 64 / format.width : 1;
  const int check_bits = plan.code.data_bits ? plan.code.hamming_bits + 1 : 0;
  plan.word_positions = static_cast<uint32_t>(plan.word_values * plan.mask_bits + check_bits);
  plan.flips = plan.word_positions > 0 && pmax > 0.0 && (pmax == 1.0 || std::isfinite(plan.inv_log1m_pmax));
  plan.asymmetric = s.p01 != s.p10;
  const double scale = 4294967296.0;  // 2^32: a u32 below accept[v] happens with probability p/pmax
  plan.accept[0] = pmax > 0.0 ? static_cast<uint64_t>(std::ceil(s.p01 / pmax * scale)) : 0;
  plan.accept[1] = pmax > 0.0 ? static_cast<uint64_t>(std::ceil(s.p10 / pmax * scale)) : 0;
  const double stuck = std::min(s.s0 + s.s1, 1.0);
  plan.inv_log1m_stuck = 1.0 / std::log1p(-stuck);
  plan.stuck = plan.word_positions > 0 && stuck > 0.0 && (stuck == 1.0 || std::isfinite(plan.inv_log1m_stuck));
  plan.stuck_one = stuck > 0.0 ? static_cast<uint64_t>(std::ceil(std::min(s.s1 / stuck, 1.0) * scale)) : 0;
  plan.active = plan.flips || plan.stuck;
  plan.format = format;
  plan.nonfinite = s.nonfinite;
  return plan;
}

bool entry_plan(int32_t onnx_type, double p01, double p10, int64_t seed, int64_t stream_id, uint32_t run,
                uint64_t mask, int32_t nonfinite, double s0, double s1, int64_t stuck_seed, int32_t ecc,
                int32_t on_detected, FlipPlan& plan) {
  const ElementType* element = find_element_type(onnx_type);
  if (element == nullptr || !is_enum_code(kNonFiniteNames, nonfinite) || !is_enum_code(kEccNames, ecc) ||
      !is_enum_code(kOnDetectedNames, on_detected)) {
    return false;
  }
  const Format format = element->format;
  const uint64_t all = format.width == 64 ? ~uint64_t{0} : ((uint64_t{1} << format.width) - 1);
  if (!(p01 >= 0.0 && p01 <= 1.0) || !(p10 >= 0.0 && p10 <= 1.0) || (mask & ~all) != 0 || stream_id < 0 ||
      stream_id > 0xFFFFFFFFll || !(s0 >= 0.0 && s1 >= 0.0 && s0 + s1 <= 1.0 + 1e-6) ||
      (ecc != static_cast<int32_t>(Ecc::kNone) && ecc_word_bits(static_cast<Ecc>(ecc), format.width) == 0)) {
    return false;
  }
  FlipSettings settings;
  settings.p01 = static_cast<float>(p01);
  settings.p10 = static_cast<float>(p10);
  settings.seed = seed;
  settings.stream = stream_id;
  settings.mask = mask;
  settings.randomness = Randomness::kPerRun;  // `run` is used as given
  settings.nonfinite = static_cast<NonFinite>(nonfinite);
  settings.s0 = static_cast<float>(s0);
  settings.s1 = static_cast<float>(s1);
  settings.has_stuck_seed = true;  // callers pass the seed when they have no other
  settings.stuck_seed = stuck_seed;
  settings.ecc = static_cast<Ecc>(ecc);
  settings.on_detected = static_cast<OnDetected>(on_detected);
  plan = make_plan(settings, format, run);
  return true;
}

}  // namespace onnxflip

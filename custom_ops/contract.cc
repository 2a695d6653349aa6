// contract.cc: onnxflip_contract(), the operator's contract (contract.h) as JSON for Python to read.
#include "contract.h"

#include <string>

namespace onnxflip {
namespace {

std::string quoted(const char* text) { return std::string("\"") + text + "\""; }

template <typename Enum, size_t N>
std::string enum_json(const EnumName<Enum> (&names)[N]) {
  std::string out = "{";
  for (size_t i = 0; i < N; ++i) {
    if (i) out += ", ";
    out += quoted(names[i].name) + ": " + std::to_string(static_cast<int>(names[i].value));
  }
  return out + "}";
}

std::string specs_json(const InputSpec* specs, size_t count) {
  std::string out = "[";
  for (size_t i = 0; i < count; ++i) {
    const InputSpec& in = specs[i];
    out += i ? ", " : "";
    out += "{\"name\": " + quoted(in.name) + ", \"onnx_type\": " +
           (in.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED ? std::string("\"T\"")
                                                               : std::to_string(static_cast<int>(in.type))) +
           ", \"optional\": " + (in.optional ? "true" : "false") + "}";
  }
  return out + "]";
}

// {"name": "onnxflip_cuda_flip_bits", "parameters": [{"name": "x", "c_type": "const void*"}, ...]}
template <size_t N>
std::string entry_json(const char* name, const Parameter (&parameters)[N]) {
  std::string out = "{\"name\": " + quoted(name) + ", \"parameters\": [";
  bool first = true;
  for (const Parameter& p : parameters) {
    out += (first ? "" : ", ") + std::string("{\"name\": ") + quoted(p.name) + ", \"c_type\": " + quoted(p.c_type) + "}";
    first = false;
  }
  return out + "]}";
}

// {"secded": {"8": [8, 5], ...}, ...}: per ECC mode and element width, the stored word's data and check bits.
std::string ecc_codes_json() {
  std::string out = "{";
  bool first_mode = true;
  for (const EnumName<Ecc>& mode : kEccNames) {
    if (mode.value == Ecc::kNone) continue;
    out += (first_mode ? "" : ", ") + quoted(mode.name) + ": {";
    first_mode = false;
    bool first = true;
    for (int width : {8, 16, 32, 64}) {
      const int data = ecc_word_bits(mode.value, width);
      if (data == 0) continue;
      const Secded code = make_secded(data);
      out += (first ? "" : ", ") + quoted(std::to_string(width).c_str()) + ": [" + std::to_string(data) + ", " +
             std::to_string(code.hamming_bits + 1) + "]";
      first = false;
    }
    out += "}";
  }
  return out + "}";
}

std::string contract_json() {
  std::string out = "{\"domain\": " + quoted(kDomain) + ", \"op_type\": " + quoted(kOpType) +
                    ", \"version\": " + std::to_string(kOpVersion) + ", \"element_types\": [";
  bool first = true;
  for (const ElementType& t : kElementTypes) {
    out += first ? "" : ", ";
    first = false;
    out += "{\"name\": " + quoted(t.name) + ", \"onnx_type\": " + std::to_string(static_cast<int>(t.onnx_type)) +
           ", \"width\": " + std::to_string(t.format.width) + ", \"exponent_bits\": " +
           std::to_string(t.format.exp_bits) + ", \"mantissa_bits\": " + std::to_string(t.format.mant_bits) +
           ", \"has_inf\": " + (t.format.has_inf ? "true" : "false") + "}";
  }
  out += "], \"enums\": {" + quoted(kAttrRandomness) + ": " + enum_json(kRandomnessNames) + ", " +
         quoted(kAttrNonFinite) + ": " + enum_json(kNonFiniteNames) + ", " + quoted(kAttrEcc) + ": " +
         enum_json(kEccNames) + ", " + quoted(kAttrOnDetected) + ": " + enum_json(kOnDetectedNames) + ", " +
         quoted("counts") + ": " + enum_json(kCountNames) + "}, \"attributes\": [";
  first = true;
  for (const Attribute& a : kAttributes) {
    out += first ? "" : ", ";
    first = false;
    out += "{\"name\": " + quoted(a.name) + ", \"type\": " + quoted(a.type) + ", \"default\": " + a.default_json + "}";
  }
  out += "], \"inputs\": " + specs_json(kInputs, kInputCount) + ", \"outputs\": " +
         specs_json(kOutputs, kOutputCount) + ", \"ecc_codes\": " + ecc_codes_json() +
         ", \"cpu_entry\": " + entry_json(kCpuEntryName, kCpuEntryParameters) +
         ", \"cuda_entry\": " + entry_json(kCudaEntryName, kCudaEntryParameters);
  return out + "}";
}

}  // namespace
}  // namespace onnxflip

extern "C" const char* onnxflip_contract(void) {
  static const std::string json = onnxflip::contract_json();
  return json.c_str();
}

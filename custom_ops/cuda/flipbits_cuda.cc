// flipbits_cuda.cc: the ORT CUDA kernel and a C entry point that run the CUDA launcher on ORT's or the caller's stream.
#include "flipbits_cuda.h"

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

#include "flipbits_launch.h"

namespace onnxflip {

OrtStatusPtr FlipBitsCudaKernel::ComputeV2(OrtKernelContext* raw_context) {
  return guarded([&] {
    Ort::KernelContext context{raw_context};
    if (settings_.nchwc_block != 0) {  // a layout of ONNX Runtime's CPU convolutions
      throw SettingsError{"FlipBits node '" + node_ + "': an NCHWc layout (nchwc_block) runs on the CPU only"};
    }
    const FlipPlan plan = plan_for(context);
    Ort::ConstValue x = context.GetInput(kX);
    const auto info = x.GetTensorTypeAndShapeInfo();
    Ort::UnownedValue y = context.GetOutput(0, info.GetShape());
    const int err = launch_flip_bits(x.GetTensorRawData(), y.GetTensorMutableRawData(),
                                     static_cast<int64_t>(info.GetElementCount()), format_.width / 8, plan,
                                     counts_output(context), context.GetGPUComputeStream());
    if (err != cudaSuccess) {
      throw std::runtime_error("FlipBits node '" + node_ + "': CUDA error " +
                               cudaGetErrorString(static_cast<cudaError_t>(err)));
    }
  });
}

}  // namespace onnxflip

// Runs FlipBits on device memory with an explicit stream, for callers without ORT's CUDA provider
// (torch or CuPy tensors); stuck_seed keys the stuck cells (pass seed for the operator's default).  onnx_type, nonfinite, ecc and on_detected are codes from onnxflip_contract();
// counts, when not null, is device memory for the int64[3] word counts.  The rates are rounded to float32,
// the precision of the operator's inputs, so that the same rates draw the same faults as the operator does.
// Returns 0, a cudaError_t value, or -1 for invalid settings.  Its parameters, in this order and with these names,
// are kCudaEntryParameters of contract.h, which onnxflip_contract() exports: change both together.
extern "C" __attribute__((visibility("default"))) int onnxflip_cuda_flip_bits(
    const void* x, void* y, int64_t count, int32_t onnx_type, double p01, double p10, int64_t seed, int64_t stream_id,
    uint32_t run, uint64_t mask, int32_t nonfinite, double s0, double s1, int64_t stuck_seed, int32_t ecc,
    int32_t on_detected, int64_t* counts, void* cuda_stream) {
  using namespace onnxflip;
  const ElementType* element = find_element_type(onnx_type);
  if (element == nullptr || !is_enum_code(kNonFiniteNames, nonfinite) || !is_enum_code(kEccNames, ecc) ||
      !is_enum_code(kOnDetectedNames, on_detected)) {
    return -1;
  }
  const Format format = element->format;
  const uint64_t all = format.width == 64 ? ~uint64_t{0} : ((uint64_t{1} << format.width) - 1);
  if (!(p01 >= 0.0 && p01 <= 1.0) || !(p10 >= 0.0 && p10 <= 1.0) || (mask & ~all) != 0 || stream_id < 0 ||
      stream_id > 0xFFFFFFFFll || !(s0 >= 0.0 && s1 >= 0.0 && s0 + s1 <= 1.0 + 1e-6) ||
      (ecc != static_cast<int32_t>(Ecc::kNone) && ecc_word_bits(static_cast<Ecc>(ecc), format.width) == 0)) {
    return -1;
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
  return launch_flip_bits(x, y, count, format.width / 8, make_plan(settings, format, run), counts, cuda_stream);
}

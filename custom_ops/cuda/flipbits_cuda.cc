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
// (torch or CuPy tensors); the settings are checked and rounded as entry_plan (flipbits_settings.h) says.
// counts, when not null, is device memory for the int64[3] word counts.
// Returns 0, a cudaError_t value, or -1 for invalid settings.  Its parameters, in this order and with these names,
// are kCudaEntryParameters of contract.h, which onnxflip_contract() exports: change both together.
extern "C" __attribute__((visibility("default"))) int onnxflip_cuda_flip_bits(
    const void* x, void* y, int64_t count, int32_t onnx_type, double p01, double p10, int64_t seed, int64_t stream_id,
    uint32_t run, uint64_t mask, int32_t nonfinite, double s0, double s1, int64_t stuck_seed, int32_t ecc,
    int32_t on_detected, int64_t* counts, void* cuda_stream) {
  using namespace onnxflip;
  FlipPlan plan;
  if (!entry_plan(onnx_type, p01, p10, seed, stream_id, run, mask, nonfinite, s0, s1, stuck_seed, ecc, on_detected,
                  plan)) {
    return -1;
  }
  return launch_flip_bits(x, y, count, plan.format.width / 8, plan, counts, cuda_stream);
}

// register.cc: RegisterCustomOps, the entry point ONNX Runtime calls when it loads the library;
// one FlipBits op per element type of the contract (contract.h) and provider.
#include <memory>
#include <mutex>
#include <vector>

#include "flipbits_cpu.h"
#ifdef ONNXFLIP_WITH_CUDA
#include "cuda/flipbits_cuda.h"
#endif

namespace onnxflip {
namespace {

// The ops and domain must outlive every session that uses them.
struct Registry {
  std::vector<std::unique_ptr<FlipBitsOp<FlipBitsCpuKernel>>> cpu_ops;
#ifdef ONNXFLIP_WITH_CUDA
  std::vector<std::unique_ptr<FlipBitsOp<FlipBitsCudaKernel>>> cuda_ops;
#endif
  std::vector<Ort::CustomOpDomain> domains;
};

Registry& registry() {
  static Registry instance;
  return instance;
}

}  // namespace
}  // namespace onnxflip

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  using namespace onnxflip;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  Ort::InitApi(api_base->GetApi(ORT_API_VERSION));
  try {
    Registry& reg = registry();
    if (reg.domains.empty()) {
      Ort::CustomOpDomain domain{kDomain};
      for (const ElementType& element : kElementTypes) {
        const ONNXTensorElementDataType type = element.onnx_type;
        reg.cpu_ops.push_back(std::make_unique<FlipBitsOp<FlipBitsCpuKernel>>(type, "CPUExecutionProvider"));
        domain.Add(reg.cpu_ops.back().get());
#ifdef ONNXFLIP_WITH_CUDA
        reg.cuda_ops.push_back(std::make_unique<FlipBitsOp<FlipBitsCudaKernel>>(type, "CUDAExecutionProvider"));
        domain.Add(reg.cuda_ops.back().get());
#endif
      }
      reg.domains.push_back(std::move(domain));
    }
    Ort::UnownedSessionOptions{options}.Add(reg.domains.back());
    return nullptr;
  } catch (const std::exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, e.what());
  }
}

// flipbits_op.h: the FlipBits operator description shared by every execution provider.
//
// Y [, counts] = FlipBits(X [, p01] [, p10] [, seed] [, s0] [, s1] [, stuck_seed]); Y has X's shape and type,
// counts (int64[3], on the kernel's device) the words of this run read corrected, detected and silently wrong.
// One op is registered per element type and provider; the kernel type says
// how to apply a FlipPlan on its device.
#pragma once

#include <atomic>
#include <string>

#include "flipbits_settings.h"

namespace onnxflip {

// What every FlipBits kernel holds: its node's checked settings and run counter.
class FlipBitsKernelBase {
 public:
  FlipBitsKernelBase(const OrtKernelInfo* info, ONNXTensorElementDataType type)
      : format_(find_element_type(type)->format) {  // registered only for the contract's types
    Ort::ConstKernelInfo kernel_info{info};
    node_ = kernel_info.GetNodeName();
    settings_ = read_attributes(kernel_info, format_, node_);
  }

 protected:
  // The plan for this run: scalar inputs applied, per-run counter advanced.
  FlipPlan plan_for(Ort::KernelContext& context) {
    const FlipSettings settings = with_inputs(settings_, context, node_);
    return make_plan(settings, format_, runs_.fetch_add(1, std::memory_order_relaxed));
  }

  // The counts output's buffer (int64[3]) when the node has one, else nullptr.
  static int64_t* counts_output(Ort::KernelContext& context) {
    if (context.GetOutputCount() <= kCounts) return nullptr;
    const int64_t shape[1] = {kCountKinds};
    Ort::UnownedValue counts = context.GetOutput(kCounts, shape, 1);
    return counts == nullptr ? nullptr : counts.GetTensorMutableData<int64_t>();
  }

  Format format_;
  std::string node_;
  FlipSettings settings_;
  std::atomic<uint32_t> runs_{0};
};

template <typename Kernel>
struct FlipBitsOp : Ort::CustomOpBase<FlipBitsOp<Kernel>, Kernel, /*WithStatus=*/true> {
  FlipBitsOp(ONNXTensorElementDataType type, const char* provider) : type_(type), provider_(provider) {
    // Y may reuse X's buffer when nothing else reads X: then only the flipped bits are written.
    OrtCustomOp::GetMayInplace = [](int** input_index, int** output_index) -> size_t {
      *input_index = new int[1]{0};
      *output_index = new int[1]{0};
      return 1;
    };
    OrtCustomOp::ReleaseMayInplace = [](int* input_index, int* output_index) {
      delete[] input_index;
      delete[] output_index;
    };
  }

  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    try {
      *kernel = new Kernel(info, type_);
      return nullptr;
    } catch (const SettingsError& e) {
      return api.CreateStatus(ORT_INVALID_ARGUMENT, e.message.c_str());
    } catch (const std::exception& e) {
      return api.CreateStatus(ORT_FAIL, e.what());
    }
  }

  const char* GetName() const { return kOpType; }
  const char* GetExecutionProviderType() const { return provider_; }

  size_t GetInputTypeCount() const { return kInputCount; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == kX ? type_ : kInputs[index].type;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return kInputs[index].optional ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  // The scalar settings are read on the host, whatever the device of X.
  OrtMemType GetInputMemoryType(size_t index) const {
    return index == kX ? OrtMemTypeDefault : OrtMemTypeCPUInput;
  }

  size_t GetOutputTypeCount() const { return kOutputCount; }
  ONNXTensorElementDataType GetOutputType(size_t index) const {
    return index == kY ? type_ : kOutputs[index].type;
  }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t index) const {
    return kOutputs[index].optional ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }

 private:
  ONNXTensorElementDataType type_;
  const char* provider_;
};

// Runs fn, turning exceptions into the status ORT expects from ComputeV2.
template <typename Fn>
OrtStatusPtr guarded(Fn&& fn) {
  try {
    fn();
    return nullptr;
  } catch (const SettingsError& e) {
    return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, e.message.c_str());
  } catch (const Ort::Exception& e) {
    return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, e.what());
  }
}

}  // namespace onnxflip

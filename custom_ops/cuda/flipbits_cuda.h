// flipbits_cuda.h: the FlipBits kernel for ONNX Runtime's CUDA execution provider.
#pragma once

#include "../flipbits_op.h"

namespace onnxflip {

class FlipBitsCudaKernel : public FlipBitsKernelBase {
 public:
  using FlipBitsKernelBase::FlipBitsKernelBase;
  OrtStatusPtr ComputeV2(OrtKernelContext* context);
};

}  // namespace onnxflip

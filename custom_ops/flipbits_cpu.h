// flipbits_cpu.h: the FlipBits kernel for ONNX Runtime's CPU execution provider.
#pragma once

#include "flipbits_op.h"

namespace onnxflip {

class FlipBitsCpuKernel : public FlipBitsKernelBase {
 public:
  using FlipBitsKernelBase::FlipBitsKernelBase;
  OrtStatusPtr ComputeV2(OrtKernelContext* context);
};

}  // namespace onnxflip

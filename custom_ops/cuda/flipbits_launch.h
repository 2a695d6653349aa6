// flipbits_launch.h: host-side launcher for the FlipBits CUDA kernels (no CUDA headers needed to include it).
#pragma once

#include <cstdint>

#include "../flipbits.h"

namespace onnxflip {

// Y = X with the plan's faults, on `stream` (a cudaStream_t); counts, when not null, is device memory for the
// kCountKinds word counts (zeroed first).  Returns a cudaError_t value.
int launch_flip_bits(const void* x, void* y, int64_t count, int element_bytes, const FlipPlan& plan, int64_t* counts,
                     void* stream);

}  // namespace onnxflip

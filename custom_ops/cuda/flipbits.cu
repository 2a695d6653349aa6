// flipbits.cu: copy X to Y on the stream, then one thread per kBlockElems block applies that block's faults
// and adds its word counts to the optional device counts.
#include <cuda_runtime.h>

#include "flipbits_launch.h"

namespace onnxflip {
namespace {

template <typename U>
__global__ void fault_blocks_kernel(U* y, int64_t count, int64_t blocks, FlipPlan plan, unsigned long long* totals) {
  const int64_t block = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (block >= blocks) return;
  const int64_t begin = block * kBlockElems;
  const int64_t n = begin + kBlockElems < count ? kBlockElems : count - begin;
  int64_t counts[kCountKinds] = {0, 0, 0};
  fault_block<U>(y + begin, n, static_cast<uint64_t>(block), plan, counts);
  if (totals == nullptr) return;
  for (int k = 0; k < kCountKinds; ++k) {
    if (counts[k]) atomicAdd(totals + k, static_cast<unsigned long long>(counts[k]));
  }
}

template <typename U>
cudaError_t launch_typed(void* y, int64_t count, const FlipPlan& plan, int64_t* counts, cudaStream_t stream) {
  const int64_t blocks = (count + kBlockElems - 1) / kBlockElems;
  constexpr int kThreads = 128;
  const int64_t grid = (blocks + kThreads - 1) / kThreads;
  fault_blocks_kernel<U><<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(
      static_cast<U*>(y), count, blocks, plan, reinterpret_cast<unsigned long long*>(counts));
  return cudaGetLastError();
}

}  // namespace

int launch_flip_bits(const void* x, void* y, int64_t count, int element_bytes, const FlipPlan& plan, int64_t* counts,
                     void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (counts != nullptr) {
    const cudaError_t zeroed = cudaMemsetAsync(counts, 0, kCountKinds * sizeof(int64_t), s);
    if (zeroed != cudaSuccess) return zeroed;
  }
  if (count <= 0) return cudaSuccess;
  if (x != y) {
    const cudaError_t copied = cudaMemcpyAsync(y, x, static_cast<size_t>(count) * element_bytes, cudaMemcpyDeviceToDevice, s);
    if (copied != cudaSuccess) return copied;
  }
  if (!plan.active) return cudaSuccess;
  switch (element_bytes) {
    case 1: return launch_typed<uint8_t>(y, count, plan, counts, s);
    case 2: return launch_typed<uint16_t>(y, count, plan, counts, s);
    case 4: return launch_typed<uint32_t>(y, count, plan, counts, s);
    case 8: return launch_typed<uint64_t>(y, count, plan, counts, s);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace onnxflip

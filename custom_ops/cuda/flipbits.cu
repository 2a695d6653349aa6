// flipbits.cu: copy X to Y on the stream, then one thread per kBlockElems block applies that block's flips.
#include <cuda_runtime.h>

#include "flipbits_launch.h"

namespace onnxflip {
namespace {

template <typename U>
__global__ void flip_blocks_kernel(U* y, int64_t count, int64_t blocks, FlipPlan plan) {
  const int64_t block = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (block >= blocks) return;
  const int64_t begin = block * kBlockElems;
  const int64_t n = begin + kBlockElems < count ? kBlockElems : count - begin;
  flip_block<U>(y + begin, n, static_cast<uint64_t>(block), plan);
}

template <typename U>
cudaError_t launch_typed(void* y, int64_t count, const FlipPlan& plan, cudaStream_t stream) {
  const int64_t blocks = (count + kBlockElems - 1) / kBlockElems;
  constexpr int kThreads = 128;
  const int64_t grid = (blocks + kThreads - 1) / kThreads;
  flip_blocks_kernel<U><<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(static_cast<U*>(y), count, blocks, plan);
  return cudaGetLastError();
}

}  // namespace

int launch_flip_bits(const void* x, void* y, int64_t count, int element_bytes, const FlipPlan& plan, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (count <= 0) return cudaSuccess;
  if (x != y) {
    const cudaError_t copied = cudaMemcpyAsync(y, x, static_cast<size_t>(count) * element_bytes, cudaMemcpyDeviceToDevice, s);
    if (copied != cudaSuccess) return copied;
  }
  if (!plan.active) return cudaSuccess;
  switch (element_bytes) {
    case 1: return launch_typed<uint8_t>(y, count, plan, s);
    case 2: return launch_typed<uint16_t>(y, count, plan, s);
    case 4: return launch_typed<uint32_t>(y, count, plan, s);
    case 8: return launch_typed<uint64_t>(y, count, plan, s);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace onnxflip

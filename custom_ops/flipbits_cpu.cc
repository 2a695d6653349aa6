// flipbits_cpu.cc: Y = X with the FlipPlan's faults, one block per task on ORT's intra-op pool
// (in place when ORT hands Y the buffer of X), and the words counted when the node has the counts output;
// X in NCHWc blocks is copied whole first, then faulted by logical blocks at their elements' places; and the
// same, plain, on host memory through a C entry point, for callers without ONNX Runtime.
#include "flipbits_cpu.h"

#include <atomic>
#include <cstring>

namespace onnxflip {
namespace {

constexpr size_t kSerialBlocks = 16;  // below this, threading costs more than it saves

struct Work {
  const uint8_t* in;
  uint8_t* out;
  int64_t count;     // logical elements (faulted)
  int64_t physical;  // elements in memory (copied)
  Layout layout;
  int bytes;
  const FlipPlan* plan;
  std::atomic<int64_t>* counts;  // kCountKinds totals
};

int64_t block_length(int64_t count, size_t block) {
  const int64_t begin = static_cast<int64_t>(block) * kBlockElems;
  return begin + kBlockElems < count ? kBlockElems : count - begin;
}

template <typename U>
void copy_and_flip(const Work& w, size_t block) {
  const int64_t begin = static_cast<int64_t>(block) * kBlockElems;
  const int64_t n = block_length(w.count, block);
  U* out = reinterpret_cast<U*>(w.out);
  int64_t counts[kCountKinds] = {0, 0, 0};
  if (w.layout.block == 0) {
    if (w.in != w.out) std::memcpy(out + begin, reinterpret_cast<const U*>(w.in) + begin, static_cast<size_t>(n) * sizeof(U));
    fault_block<U>(out + begin, n, block, *w.plan, counts);
  } else {  // copied apart (copy_block): the elements of a logical block lie all over the tensor
    fault_elements<U>(LaidOutElements<U>{out, begin, w.layout}, n, block, *w.plan, counts);
  }
  for (int k = 0; k < kCountKinds; ++k) {
    if (counts[k]) w.counts[k].fetch_add(counts[k], std::memory_order_relaxed);
  }
}

void run_block(void* data, size_t block) {
  const Work& w = *static_cast<const Work*>(data);
  switch (w.bytes) {
    case 1: return copy_and_flip<uint8_t>(w, block);
    case 2: return copy_and_flip<uint16_t>(w, block);
    case 4: return copy_and_flip<uint32_t>(w, block);
    default: return copy_and_flip<uint64_t>(w, block);
  }
}

void copy_block(void* data, size_t block) {
  const Work& w = *static_cast<const Work*>(data);
  const int64_t begin = static_cast<int64_t>(block) * kBlockElems * w.bytes;
  std::memcpy(w.out + begin, w.in + begin, static_cast<size_t>(block_length(w.physical, block) * w.bytes));
}

void for_blocks(OrtKernelContext* context, void (*fn)(void*, size_t), int64_t count, Work& work) {
  const size_t blocks = static_cast<size_t>((count + kBlockElems - 1) / kBlockElems);
  if (blocks < kSerialBlocks) {
    for (size_t b = 0; b < blocks; ++b) fn(&work, b);
  } else {
    Ort::ThrowOnError(Ort::GetApi().KernelContext_ParallelFor(context, fn, blocks, 0, &work));
  }
}

}  // namespace

OrtStatusPtr FlipBitsCpuKernel::ComputeV2(OrtKernelContext* raw_context) {
  return guarded([&] {
    Ort::KernelContext context{raw_context};
    const FlipPlan plan = plan_for(context);
    Ort::ConstValue x = context.GetInput(kX);
    const auto info = x.GetTensorTypeAndShapeInfo();
    const auto shape = info.GetShape();
    int64_t logical = 0;
    const Layout layout = layout_of(settings_, shape, node_, logical);
    Ort::UnownedValue y = context.GetOutput(0, shape);
    std::atomic<int64_t> totals[kCountKinds] = {{0}, {0}, {0}};
    Work work{static_cast<const uint8_t*>(x.GetTensorRawData()), static_cast<uint8_t*>(y.GetTensorMutableRawData()),
              logical, static_cast<int64_t>(info.GetElementCount()), layout, format_.width / 8, &plan, totals};
    int64_t* counts = counts_output(context);
    if (layout.block != 0 && work.in != work.out && work.physical > 0) {
      for_blocks(raw_context, copy_block, work.physical, work);
    }
    const bool copies = layout.block == 0 && work.in != work.out;
    if (work.count > 0 && (copies || plan.active)) for_blocks(raw_context, run_block, work.count, work);
    if (counts != nullptr) {
      for (int k = 0; k < kCountKinds; ++k) counts[k] = totals[k].load();
    }
  });
}

}  // namespace onnxflip

// Runs FlipBits on host memory on the calling thread, for callers without ONNX Runtime (torch tensors through
// ctypes); y may be x (in place).  The settings are checked and rounded as entry_plan (flipbits_settings.h) says;
// counts, when not null, receives the int64[3] word counts.  The same arguments draw the same faults as the
// operator's kernels.  Returns 0, or -1 for invalid settings.  Its parameters, in this order and with these names,
// are kCpuEntryParameters of contract.h, which onnxflip_contract() exports: change both together.
extern "C" __attribute__((visibility("default"))) int onnxflip_cpu_flip_bits(
    const void* x, void* y, int64_t count, int32_t onnx_type, double p01, double p10, int64_t seed, int64_t stream_id,
    uint32_t run, uint64_t mask, int32_t nonfinite, double s0, double s1, int64_t stuck_seed, int32_t ecc,
    int32_t on_detected, int64_t* counts) {
  using namespace onnxflip;
  FlipPlan plan;
  if (count < 0 || !entry_plan(onnx_type, p01, p10, seed, stream_id, run, mask, nonfinite, s0, s1, stuck_seed, ecc,
                               on_detected, plan)) {
    return -1;
  }
  std::atomic<int64_t> totals[kCountKinds] = {{0}, {0}, {0}};
  Work work{static_cast<const uint8_t*>(x), static_cast<uint8_t*>(y), count, count, Layout{0, 0, 0},
            plan.format.width / 8, &plan, totals};
  if (work.in != work.out || plan.active) {
    const size_t blocks = static_cast<size_t>((count + kBlockElems - 1) / kBlockElems);
    for (size_t b = 0; b < blocks; ++b) run_block(&work, b);
  }
  if (counts != nullptr) {
    for (int k = 0; k < kCountKinds; ++k) counts[k] = totals[k].load();
  }
  return 0;
}

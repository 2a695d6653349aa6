"""FlipBits on the GPU: a 1 GiB float32 tensor at p in {0, 1e-6, 1e-4, 1e-2} against a device-to-device copy.

Times with CUDA events on torch's current stream; prints GB/s (read + write) and the ratio to the copy.
Usage (GPU machine): python benchmarks/bench_gpu.py [--gib 1] [--repeats 20]
"""

from __future__ import annotations

import argparse

import torch

from onnxflip.runtime.contract import element_type
from onnxflip.runtime.cuda import cuda_flip_bits_raw


def timed(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    n = int(args.gib * (1 << 30)) // 4
    x = torch.randn(n, device="cuda")
    y = torch.empty_like(x)
    stream = torch.cuda.current_stream().cuda_stream
    onnx_type = element_type("float32").onnx_type
    copy_s = timed(lambda: y.copy_(x), args.repeats)
    moved = 2 * n * 4 / 1e9
    print(f"{torch.cuda.get_device_name()}: {args.gib} GiB float32")
    print(f"{'':>10} {'ms':>8} {'GB/s':>8} {'of copy':>8}")
    print(f"{'copy':>10} {copy_s * 1e3:>8.2f} {moved / copy_s:>8.0f} {1:>8.2f}")
    for p in (0.0, 1e-6, 1e-4, 1e-2):
        t = timed(lambda p=p: cuda_flip_bits_raw(x.data_ptr(), y.data_ptr(), n, onnx_type, p01=p, p10=p, seed=1,
                                                 mask=0xFFFFFFFF, cuda_stream=stream), args.repeats)
        print(f"{f'p={p:g}':>10} {t * 1e3:>8.2f} {moved / t:>8.0f} {copy_s / t:>8.2f}")


if __name__ == "__main__":
    main()

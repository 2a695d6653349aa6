"""FlipBits speed: ONNX Runtime kernel vs a NumPy copy vs the per-bit Bernoulli method.

Prints one table; ratios are measured side by side in this one run.
Usage: python benchmarks/bench_flipbits.py [--mib 64] [--repeats 20] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from onnxflip import make_session
from onnxflip.runtime.contract import element_type
from onnxflip.runtime.flip import flipbits_node_model


def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def per_bit_bernoulli(v: torch.Tensor, p01: float, p10: float) -> torch.Tensor:
    """The fliptensors method: a Bernoulli draw for every bit, two bit tensors, (v | f01) ^ (v & f10)."""

    def draw(p: float) -> torch.Tensor:
        flips = torch.zeros_like(v)
        probability = torch.full(v.shape, p)
        for bit in range(32):
            flips |= torch.bernoulli(probability).to(torch.int32) << bit
        return flips

    return (v | draw(p01)) ^ (v & draw(p10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--small-mib", type=float, default=0.25, help="tensor size for the per-bit method")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    n = args.mib * (1 << 20) // 4
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    out = np.empty_like(x)
    copy_s = best_of(lambda: np.copyto(out, x), args.repeats)
    model = flipbits_node_model(element_type("float32"), mask=0xFFFFFFFF, stream=0, randomness="fixed", nonfinite="keep")
    session = make_session(model, threads=args.threads)

    print(f"tensor: {args.mib} MiB float32 ({n:,} elements), threads={args.threads or 'default'}")
    print(f"numpy copy: {copy_s * 1e3:.2f} ms")
    print(f"{'p':>8} {'FlipBits ms':>12} {'x copy':>8}")
    flip_times = {}
    binding = session.io_binding()
    binding.bind_cpu_input("X", x)
    binding.bind_cpu_input("seed", np.array(1, dtype=np.int64))
    for stuck in ("s0", "s1"):  # no stuck cells here: benchmarks/bench_faults.py measures them
        binding.bind_cpu_input(stuck, np.array(0.0, dtype=np.float32))
    binding.bind_cpu_input("stuck_seed", np.zeros(0, dtype=np.int64))  # empty: absent
    binding.bind_output("Y", "cpu", 0, np.float32, out.shape, out.ctypes.data)
    for p in (0.0, 1e-6, 1e-4, 1e-2):
        binding.bind_cpu_input("p01", np.array(p, dtype=np.float32))
        binding.bind_cpu_input("p10", np.array(p, dtype=np.float32))
        t = best_of(lambda: session.run_with_iobinding(binding), args.repeats)
        flip_times[p] = t
        print(f"{p:>8g} {t * 1e3:>12.2f} {t / copy_s:>8.2f}")

    small = int(args.small_mib * (1 << 20) // 4)
    v = torch.from_numpy(x[:small].view(np.int32).copy())
    torch.manual_seed(0)
    per_bit_s = best_of(lambda: per_bit_bernoulli(v, 1e-4, 1e-4), max(3, args.repeats // 4))
    scaled = per_bit_s * n / small
    print(f"per-bit Bernoulli (torch, {args.small_mib} MiB, scaled to {args.mib} MiB): {scaled * 1e3:.0f} ms "
          f"= {scaled / copy_s:.0f}x copy; FlipBits at p=1e-4 is {scaled / flip_times[1e-4]:.0f}x faster")


if __name__ == "__main__":
    main()

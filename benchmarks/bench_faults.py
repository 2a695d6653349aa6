"""Speed of the memory fault models: FlipBits with stuck-at cells only, and with SECDED words, against a NumPy copy.

Targets (issue 15): stuck-at only at most 1.5x a copy, secded at p = 1e-4 at most 3x, on 64 MiB of float32.
Prints one table; the ratios are measured side by side in this one run.
Usage: python benchmarks/bench_faults.py [--mib 64] [--repeats 20] [--threads N] [--stuck 1e-4] [--p 1e-4]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from onnxflip import make_session
from onnxflip.runtime.contract import element_type
from onnxflip.runtime.flip import flipbits_node_model

TARGETS = {"stuck-at only": 1.5, "secded": 3.0, "secded64": 3.0}  # at most this many copies


def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def timed_node(x: np.ndarray, out: np.ndarray, *, ecc: str, controls: dict[str, float], threads: int | None,
               repeats: int) -> float:
    """Best time of one FlipBits run over x into out (no counts output), with the given control inputs."""
    model = flipbits_node_model(element_type("float32"), mask=0xFFFFFFFF, stream=0, randomness="fixed",
                                nonfinite="keep", ecc=ecc)
    session = make_session(model, threads=threads)
    binding = session.io_binding()
    binding.bind_cpu_input("X", x)
    binding.bind_cpu_input("seed", np.array(1, dtype=np.int64))
    for name in ("p01", "p10", "s0", "s1"):
        binding.bind_cpu_input(name, np.array(controls.get(name, 0.0), dtype=np.float32))
    binding.bind_cpu_input("stuck_seed", np.zeros(0, dtype=np.int64))  # empty: the stuck cells follow the seed
    binding.bind_output("Y", "cpu", 0, np.float32, out.shape, out.ctypes.data)
    return best_of(lambda: session.run_with_iobinding(binding), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=float, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--stuck", type=float, default=1e-4, help="s0 = s1 of the stuck-at case")
    parser.add_argument("--p", type=float, default=1e-4, help="flip probability of the ECC cases")
    args = parser.parse_args()

    n = int(args.mib * (1 << 20)) // 4
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    out = np.empty_like(x)
    copy_s = best_of(lambda: np.copyto(out, x), args.repeats)
    cases = {
        "stuck-at only": ("none", {"s0": args.stuck, "s1": args.stuck}),
        "secded": ("secded", {"p01": args.p, "p10": args.p}),
        "secded64": ("secded64", {"p01": args.p, "p10": args.p}),
    }
    print(f"tensor: {args.mib:g} MiB float32 ({n:,} elements), threads={args.threads or 'default'}")
    print(f"numpy copy: {copy_s * 1e3:.2f} ms")
    print(f"{'case':>14} {'settings':>22} {'FlipBits ms':>12} {'x copy':>8} {'target':>7}")
    for name, (ecc, controls) in cases.items():
        t = timed_node(x, out, ecc=ecc, controls=controls, threads=args.threads, repeats=args.repeats)
        settings = ", ".join(f"{k}={v:g}" for k, v in controls.items() if k != "p10")
        verdict = "ok" if t / copy_s <= TARGETS[name] else "MISSED"
        print(f"{name:>14} {settings:>22} {t * 1e3:>12.2f} {t / copy_s:>8.2f} {TARGETS[name]:>6g}x {verdict}")


if __name__ == "__main__":
    main()

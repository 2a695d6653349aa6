"""The README's main job to a given precision: wall time, width, and whether seeds agree.

Runs ``onnxflip evaluate MODEL --data DIR --midpoint --precision P --budget B
--seed S`` as a user would (a fresh process each, the time including start-up
and data loading), for each seed, and prints per run the wall time, the
stop reason, the midpoint and its interval, the width, the trials and the
samples per trial; then, for each pair of seeds, whether each midpoint lies
inside the other's interval.

Usage: python benchmarks/bench_precision.py [--model models/vgg11.onnx] [--data ../shared/cifar10]
       [--precision 0.1] [--budget 180s] [--seeds 0,1] [--out results/bench-precision]
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="models/vgg11.onnx")
    parser.add_argument("--data", default="../shared/cifar10")
    parser.add_argument("--precision", type=float, default=0.1)
    parser.add_argument("--budget", default="180s")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results/bench-precision"))
    args = parser.parse_args()
    runs = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        out = args.out / f"p{args.precision:g}-seed{seed}"
        command = [sys.executable, "-m", "onnxflip.cli", "evaluate", args.model, "--data", args.data, "--midpoint",
                   "--precision", str(args.precision), "--budget", args.budget, "--seed", str(seed),
                   "--out", str(out), "--overwrite"]
        began = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - began
        result = json.loads((out / "results.json").read_text())
        mid = result["midpoint"]
        runs[seed] = mid
        outs = [o for o in result["design"]["log"] if o["event"] in ("samples", "out of reach")]
        print(f"seed {seed}: {wall:.1f} s wall, {result['stop_reason']}; midpoint {mid['p']:.3g} "
              f"[{mid['low']:.3g}, {mid['high']:.3g}], width {mid.get('width_decades', float('nan')):.3f} decades; "
              f"{result['evaluations']} trials, {result['design']['samples_per_trial']} samples per trial; "
              f"image term sd {result['fit']['image_variance'] ** 0.5:.4f} decades"
              + "".join(f"; {o['event']} at {o['trials']} trials" for o in outs), flush=True)
    for a, b in itertools.combinations(runs, 2):
        inside = [runs[x]["low"] <= runs[y]["p"] <= runs[x]["high"] for x, y in ((a, b), (b, a))]
        print(f"seeds {a} and {b}: each midpoint inside the other's interval: {all(inside)}")


if __name__ == "__main__":
    main()

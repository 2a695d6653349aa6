"""Evaluation loop speed, and the midpoint search against a 25-point grid.

1. Images/s of one trial of `Evaluator` at p=1e-5, all targets injected,
   against a plain ONNX Runtime loop over the same batches of the clean model.
2. Evaluations and wall time of the midpoint search against a 25-point
   log grid over the same range, and the midpoints both give.
Usage: python benchmarks/bench_evaluate.py MODEL.onnx --data DIR [--samples N] [--trials T]
"""

from __future__ import annotations

import argparse
import math
import pathlib
import tempfile
import time

import numpy as np
from onnxflip.evaluate import Evaluator, SweepSettings
from onnxflip.sweep import MidpointSearch, prepare_output, run_sweep

from onnxflip import make_session
from onnxflip.data import load_split
from onnxflip.modelio import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--data", required=True)
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--range", default="1e-9:1e-2")
    parser.add_argument("--tolerance", type=float, default=0.1)
    parser.add_argument("--loop-only", action="store_true", help="skip the midpoint part")
    args = parser.parse_args()

    split = load_split(args.data, "test").subset(args.samples)
    images, labels = split.as_float_nchw(), split.labels
    settings = SweepSettings(trials=args.trials, batch_size=args.batch_size)
    evaluator = Evaluator(load_model(args.model), images, labels, settings)

    plain = make_session(args.model)
    name = plain.get_inputs()[0].name

    def plain_pass() -> None:
        for start in range(0, len(labels), args.batch_size):
            plain.run(None, {name: images[start : start + args.batch_size]})

    plain_pass()
    evaluator.run_trial(1e-5, 0)
    plain_s, eval_s = [], []
    for _ in range(3):
        t = time.perf_counter()
        plain_pass()
        plain_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        evaluator.run_trial(1e-5, 0)
        eval_s.append(time.perf_counter() - t)
    n = len(labels)
    print(f"evaluation loop, {n} images, batch {args.batch_size}, best of 3:")
    print(f"  plain ONNX Runtime, clean model: {n / min(plain_s):8.0f} images/s")
    print(f"  onnxflip trial at p=1e-5 (all targets): {n / min(eval_s):8.0f} images/s "
          f"({min(plain_s) / min(eval_s):.2f}x)")

    if args.loop_only:
        return
    search = MidpointSearch.from_range(args.range, tolerance=args.tolerance)
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for mode in ("midpoint", "grid"):
            out = pathlib.Path(tmp) / mode
            prepare_output(out, resume=False, overwrite=False)
            ev = Evaluator(load_model(args.model), images, labels, settings)
            t = time.perf_counter()
            if mode == "grid":
                grid = list(np.logspace(math.log10(search.low), math.log10(search.high), 25))
                data = run_sweep(ev, out, probabilities=grid, progress=False)
            else:
                data = run_sweep(ev, out, search=search, progress=False)
            results[mode] = (data, time.perf_counter() - t)
    print(f"midpoint, range {search.low:g}..{search.high:g}, {args.trials} trials per point:")
    for mode, (data, wall) in results.items():
        mid = data["midpoint"]
        span = f"[{mid['low']:.3g}, {mid['high']:.3g}]" if mid["low"] and mid["high"] else "-"
        print(f"  {mode:<8} {data['evaluations']:>3} evaluations (incl. p=0), {wall:7.1f} s, "
              f"midpoint {mid['p']:.3g} {span}" if mid["p"] else f"  {mode}: no midpoint")


if __name__ == "__main__":
    main()

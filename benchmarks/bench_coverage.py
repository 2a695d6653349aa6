"""Coverage on the real thing: seeded reruns of a cell's midpoint search against a long-run reference.

For each format, first a reference: a grid of ``--ref-points`` probabilities
log-spaced over +-``--ref-span`` decades about a pilot midpoint, each with
``--ref-trials`` trials on every test image (the population the interval of a
search covers, ``design.estimand``).  The reference midpoint is where the
mean normalised score of the points crosses 1/2, by a local linear fit of the
points' means against log10 p over the points whose means lie in [0.2, 0.8]
(no curve family assumed), with its standard error from the trials' spread;
the tool's own fit of the same trials is printed beside it.  Then ``--seeds``
searches as ``reproduce`` runs a cell (``evaluate MODEL --format F --targets
T --midpoint --p-range 1e-9:0.5 --precision 0.2 --budget 600s --seed S``),
each a fresh process, and whether each interval contains the reference.

Usage: python benchmarks/bench_coverage.py [--model models/vgg11.onnx] [--data ../shared/cifar10]
       [--formats float16,float32] [--targets activations] [--seeds 20] [--out results/bench-coverage]
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import subprocess
import sys
import time

import numpy as np


def _evaluate(args, fmt: str, out: pathlib.Path, *extra: str) -> dict:
    command = [sys.executable, "-m", "onnxflip.cli", "evaluate", args.model, "--data", args.data, "--format", fmt,
               "--targets", args.targets, "--out", str(out), "--overwrite", *extra]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "results.json").read_text())


def crossing(result: dict) -> tuple[float, float]:
    """log10 of the p where the points' mean normalised score crosses 1/2, and its standard error: a weighted
    linear fit of the point means on log10 p over the points with means in [0.2, 0.8] (the delta method for
    the root's error, the weights the inverse variances of the means)."""
    clean, floor = result["clean_score"], result["floor"]
    rows = [r for r in result["rows"] if r["p"] > 0]
    x, z, var = [], [], []
    for r in rows:
        scores = np.array([(t["score"] - floor) / (clean - floor) for t in result["trials"] if t["p"] == r["p"]])
        if 0.2 <= scores.mean() <= 0.8:
            x.append(math.log10(r["p"]))
            z.append(scores.mean())
            var.append(max(scores.var(ddof=1), 1e-12) / len(scores))
    x, z, w = np.array(x), np.array(z), 1 / np.array(var)
    design = np.stack([np.ones_like(x), x], axis=1)
    cov = np.linalg.inv(design.T @ (design * w[:, None]))
    a, b = cov @ design.T @ (w * z)
    root = (0.5 - a) / b
    gradient = np.array([-1 / b, -(0.5 - a) / b ** 2])
    return root, float(np.sqrt(gradient @ cov @ gradient))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="models/vgg11.onnx")
    parser.add_argument("--data", default="../shared/cifar10")
    parser.add_argument("--formats", default="float16,float32")
    parser.add_argument("--targets", default="activations")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--ref-points", type=int, default=9)
    parser.add_argument("--ref-span", type=float, default=0.25)
    parser.add_argument("--ref-trials", type=int, default=6)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results/bench-coverage"))
    args = parser.parse_args()
    search = ["--midpoint", "--p-range", "1e-9:0.5", "--precision", "0.2", "--budget", "600s"]
    for fmt in args.formats.split(","):
        began = time.perf_counter()
        runs = [_evaluate(args, fmt, args.out / f"{fmt}-seed{s}", *search, "--seed", str(s)) for s in range(args.seeds)]
        searches = time.perf_counter() - began
        pilot = float(np.median([math.log10(r["midpoint"]["p"]) for r in runs]))
        grid = ",".join(f"{10 ** v:.4g}" for v in np.linspace(pilot - args.ref_span, pilot + args.ref_span,
                                                               args.ref_points))
        began = time.perf_counter()
        reference = _evaluate(args, fmt, args.out / f"{fmt}-reference", "--p", grid, "--trials", str(args.ref_trials),
                              "--samples", "10000", "--seed", "1000")
        root, se = crossing(reference)
        print(f"{args.model} {fmt} {args.targets}: reference (all 10,000 images, {args.ref_points} points x "
              f"{args.ref_trials} trials, {time.perf_counter() - began:.0f} s) crossing {10 ** root:.4g} "
              f"(sd {se:.4f} decades); the tool's fit of the same trials {reference['midpoint']['p']:.4g}", flush=True)
        inside = 0
        for seed, r in enumerate(runs):
            mid = r["midpoint"]
            covers = mid["low"] is not None and mid["low"] <= 10 ** root <= mid["high"]
            inside += covers
            print(f"  seed {seed:2d}: {mid['p']:.4g} [{mid['low']:.4g}, {mid['high']:.4g}] "
                  f"({mid['width_decades']:.3f} decades, {r['evaluations']} trials, "
                  f"{r['design']['samples_per_trial']} samples){'' if covers else '  MISSES'}", flush=True)
        print(f"{fmt}: {inside} of {len(runs)} intervals contain the reference ({searches:.0f} s of searches)",
              flush=True)


if __name__ == "__main__":
    main()

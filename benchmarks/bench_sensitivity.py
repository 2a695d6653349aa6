"""Vulnerability maps: their cost, whether two seeds rank the sites alike, and what the bits' order says.

Reads two `onnxflip sensitivity` results folders of the same model made with different seeds (or runs them,
with --run MODEL --data DIR), and prints:

1. each map's measuring time and trials (activation runs, parameter trials);
2. Spearman's rank correlation of the per-site damage (elements x the sum of the bits' vulnerabilities) between
   the two seeds (the target: at least 0.8);
3. per weight site, the most vulnerable bit of each seed (float32: is it the top exponent bit, 30?);
4. the share of low mantissa cells (bits 0-7) whose interval includes 0.

Usage: python benchmarks/bench_sensitivity.py FOLDER_SEED0 FOLDER_SEED1
       python benchmarks/bench_sensitivity.py OUT0 OUT1 --run models/vgg11.onnx --data ../shared/cifar10
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

import numpy as np


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties given their mean rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs=2, type=pathlib.Path)
    parser.add_argument("--run", metavar="MODEL", help="Make the two maps first (seeds 0 and 1).")
    parser.add_argument("--data")
    args = parser.parse_args()
    if args.run:
        for seed, folder in enumerate(args.folders):
            began = time.perf_counter()
            command = str(pathlib.Path(sys.executable).parent / "onnxflip")  # the venv's console script
            subprocess.run([command, "sensitivity", args.run, "--data", args.data, "--seed",
                            str(seed), "--out", str(folder), "--overwrite"], check=True, stdout=subprocess.DEVNULL)
            print(f"seed {seed}: the command took {time.perf_counter() - began:.0f} s wall")
    maps = [json.loads((f / "sensitivity.json").read_text()) for f in args.folders]
    for seed, m in enumerate(maps):
        print(f"map {seed} (seed {m['settings']['seed']}): {m['seconds']:.0f} s measuring, "
              f"{m['runs']['activation_runs']} activation runs, {m['runs']['parameter_trials']} parameter trials, "
              f"{len(m['rows'])} cells, {m['samples']} samples")
    sites = sorted(maps[0]["damage"])
    damage = [np.array([m["damage"][s] for s in sites]) for m in maps]
    print(f"Spearman of the per-site damage over {len(sites)} sites: {spearman(*damage):.3f}")
    for m in maps:
        weights = sorted({r["site"] for r in m["rows"] if r["target"] == "weights"})
        top = {}
        for site in weights:
            cells = [r for r in m["rows"] if r["site"] == site and r["trials"]]
            top[site] = max(cells, key=lambda r: r["vulnerability"])["bit"]
        at30 = sum(1 for b in top.values() if b == 30)
        print(f"seed {m['settings']['seed']}: the top exponent bit (30) is the most vulnerable bit of {at30} of "
              f"{len(weights)} weight sites" + ("" if at30 == len(weights) else f" (others: {top})"))
        low = [r for r in m["rows"] if r["bit"] < 8 and r["trials"]]
        zero = sum(1 for r in low if r["low"] <= 0 <= r["high"])
        print(f"seed {m['settings']['seed']}: {zero} of {len(low)} cells of bits 0-7 have an interval that includes 0")


if __name__ == "__main__":
    main()

"""Does retraining with bit flips make VGG-A more tolerant of them?  The experiment behind REPRODUCTION.md's
"Noisy retraining" section.

1. A plain VGG-A is trained (``--base-epochs``), the base of every retraining.
2. From it, ``--epochs`` more epochs each (``zoo train --init``): one without flips (the control: as much
   training, no noise) and one per target (weights, activations) and probability (``--weights-p``,
   ``--activations-p``: around the plain model's midpoints) with flips in every forward pass.
3. Each model is quantised to int8 (``onnxflip quantize``).
4. Each model's midpoint (``evaluate --midpoint``, 95% interval ``--precision`` decades wide) in float32 and in
   int8, with the target it was retrained against noisy; the control under both targets.

Prints a Markdown table (and writes ``OUT/noisy_retraining.json``); finished steps are kept, so a second run
with the same ``--out`` continues where the first stopped.

    python benchmarks/noisy_retraining.py --data ../shared/cifar10 --out /tmp/noisy
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import onnx

from onnxflip.campaign.results import finished
from onnxflip.cli import main as onnxflip


def _run(*args: str) -> None:
    if onnxflip(list(args)) != 0:
        sys.exit(f"failed: onnxflip {' '.join(args)}")


def _meta(path: pathlib.Path) -> dict:
    return json.loads({p.key: p.value for p in onnx.load(path).metadata_props}["onnxflip.model"])


def _train(out: pathlib.Path, name: str, data: str, epochs: int, lr: float, *extra: str) -> pathlib.Path:
    model = out / f"{name}.onnx"
    if not model.is_file():
        _run("zoo", "train", "--model", "vgg11", "--epochs", str(epochs), "--lr", str(lr), "--threads", "2",
             "--seed", "0", "--data", data, "-o", str(model), *extra)
    int8 = out / f"{name}_int8.onnx"
    if not int8.is_file():
        _run("quantize", str(model), "-o", str(int8), "--data", data, "--samples", "1000")
    return model


def _midpoint(model: pathlib.Path, data: str, target: str, precision: float, budget: str) -> dict:
    folder = model.parent / "cells" / f"{model.stem}-{target}"
    results = folder / "results.json"
    if not (results.is_file() and finished(json.loads(results.read_text()))):
        _run("evaluate", str(model), "--data", data, "--targets", target, "--midpoint", "--p-range", "1e-9:0.5",
             "--precision",
             str(precision), "--budget", budget, "--out", str(folder), *(["--overwrite"] if folder.exists() else []))
    done = json.loads(results.read_text())
    mid = done["midpoint"]
    return {"midpoint": mid["p"], "low": mid["low"], "high": mid["high"], "status": mid["status"],
            "bound_p": mid.get("bound_p"), "clean": done["clean_score"], "trials": done["evaluations"]}


def _fmt(cell: dict) -> str:
    if cell["midpoint"]:
        return f"{cell['midpoint']:.3g} [{cell['low']:.3g}, {cell['high']:.3g}]"
    return f"{'>' if cell['status'] == 'above' else '<'} {cell['bound_p']:.3g}"


def _shift(cell: dict, control: dict) -> str:
    """log10 of the midpoint over the control's, and whether the two 95% intervals are apart."""
    if not (cell["midpoint"] and control["midpoint"]):
        return "-"
    apart = cell["low"] > control["high"] or cell["high"] < control["low"]
    return f"{math.log10(cell['midpoint'] / control['midpoint']):+.2f}{' (apart)' if apart else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/cifar10")
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--base-epochs", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each retraining")
    parser.add_argument("--lr", type=float, default=0.02, help="peak learning rate of each retraining")
    parser.add_argument("--weights-p", default="3e-7,1e-6,3e-6")
    parser.add_argument("--activations-p", default="3e-6,1e-5,3e-5")
    parser.add_argument("--precision", type=float, default=0.2)
    parser.add_argument("--budget", default="5m")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()

    base = _train(args.out, "base", args.data, args.base_epochs, 0.1)
    init = str(base.with_suffix(".ckpt"))
    retrain = ("--init", init)
    models = {"control": _train(args.out, "control", args.data, args.epochs, args.lr, *retrain)}
    for target, ps in (("weights", args.weights_p), ("activations", args.activations_p)):
        for p in ps.split(","):
            models[(target, p)] = _train(args.out, f"noisy-{target}-{p}", args.data, args.epochs, args.lr, *retrain,
                                         "--noise-p", p, "--noise-targets", target)
    rows = []
    for key, model in models.items():
        targets = ("weights", "activations") if key == "control" else (key[0],)
        meta = _meta(model)
        for target in targets:
            row = {"model": model.stem, "noise_target": None if key == "control" else key[0],
                   "noise_p": None if key == "control" else float(key[1]), "target": target,
                   "accuracy": meta["test_accuracy"], "skipped_steps": meta.get("noise_skipped_steps", 0)}
            for fmt, path in (("float32", model), ("int8", model.with_name(f"{model.stem}_int8.onnx"))):
                row[fmt] = _midpoint(path, args.data, target, args.precision, args.budget)
            rows.append(row)
    (args.out / "noisy_retraining.json").write_text(json.dumps(rows, indent=1))

    print(f"base: VGG-A, {args.base_epochs} epochs, test accuracy {_meta(base)['test_accuracy']:.4f}; each "
          f"retraining {args.epochs} epochs from it, peak learning rate {args.lr:g}; midpoints to "
          f"{args.precision:g} decades; {(time.perf_counter() - began) / 60:.1f} min this run\n")
    print("| model | noisy in training | noisy in measurement | accuracy | float32 midpoint [95%] | vs control "
          "| int8 midpoint [95%] | vs control |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    controls = {r["target"]: r for r in rows if r["noise_target"] is None}
    for r in rows:
        control = controls[r["target"]]
        trained = "none" if r["noise_target"] is None else f"{r['noise_target']} p {r['noise_p']:g}"
        if r["skipped_steps"]:
            trained += f" ({r['skipped_steps']} steps skipped)"
        print(f"| {r['model']} | {trained} | {r['target']} | {100 * r['accuracy']:.2f}% | {_fmt(r['float32'])} | "
              f"{_shift(r['float32'], control['float32'])} | {_fmt(r['int8'])} | {_shift(r['int8'], control['int8'])} |")


if __name__ == "__main__":
    main()

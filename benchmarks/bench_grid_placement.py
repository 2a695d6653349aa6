"""The reproduce grid's int8 cells with noisy activations, in the int8 placement `inject` writes now and the earlier one.

The cells whose time the int8 placement changes are the int8 ones with
activation sites (activations, activations+weights, all three; int32 biases:
the float32-bias models keep float convolutions either way).  This runs each
such cell of the default grid twice, one after the other, as `onnxflip
reproduce` runs it (same settings, seed and search): with the placement of
`onnxflip.graph.passes.qlinear` (uint8 storage, channels-last integer ops)
and with the earlier one (FlipBits between QuantizeLinear and
DequantizeLinear only: bench_placement.py's `earlier_placement`, written to
a file that the experiment then runs as an injected model).
The draws differ between the two (NHWC order, the sign bit's own stream), so
the searches take similar, not equal, numbers of trials: the figures are
seconds per cell and per trial.

Usage: python benchmarks/bench_grid_placement.py [--data DIR] [--models vgg11,vgg13,vgg16,vgg19] [--grid REPORT]
Prints one line per cell and the sums; with --grid REPORT (a reproduce report.json) also the grid's wall time
with these cells' times swapped for the earlier placement's.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

from bench_placement import earlier_placement

from onnxflip.campaign.design import Budget, SearchSettings
from onnxflip.campaign.experiment import Experiment, run
from onnxflip.campaign.reproduce import GridSpec
from onnxflip.campaign.trials import TrialSettings
from onnxflip.modelio import load_model, save_model

MODELS = pathlib.Path(__file__).resolve().parent.parent / "models"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="../shared/cifar10")
    parser.add_argument("--models", default="vgg11,vgg13,vgg16,vgg19")
    parser.add_argument("--grid", type=pathlib.Path, help="report.json of a default reproduce run")
    args = parser.parse_args()
    search = SearchSettings.from_range("1e-9:0.5", precision=0.2, budget=Budget.parse("10m"))
    spec = GridSpec(models=tuple(args.models.split(",")), search=search)
    cells = [c for c in spec.cells() if c.format == "int8" and "activations" in c.targets and c.bias == "int32"
             and c.bits == "all" and c.direction == "both"]
    totals = {"now": 0.0, "earlier": 0.0}
    swapped = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cell in cells:
            line = [cell.key]
            settings = TrialSettings(format="int8", targets=cell.targets, seed=spec.seed, batch_size=spec.batch_size)
            for name in ("now", "earlier"):
                began = time.perf_counter()
                path = MODELS / f"{cell.model}_int8.onnx"
                if name == "earlier":  # injected here; the experiment runs an injected model as it is
                    injected = pathlib.Path(tmp) / f"{cell.key}-earlier.onnx"
                    save_model(earlier_placement(load_model(path), settings), injected)
                    path = injected
                result = run(Experiment(trials=settings, search=spec.search), model_path=path, data=args.data,
                             out=pathlib.Path(tmp) / name / cell.key)
                seconds = time.perf_counter() - began
                totals[name] += seconds
                trials = result["evaluations"]
                line.append(f"{name} {seconds:6.1f} s, {trials:4d} trials, {1000 * seconds / trials:6.1f} ms/trial, "
                            f"midpoint {result['midpoint']['p']:.3g}")
                if name == "earlier":
                    swapped[f"cells/{cell.key}"] = seconds
            print(" | ".join(line), flush=True)
    print(f"these {len(cells)} cells: now {totals['now'] / 60:.1f} min, earlier placement {totals['earlier'] / 60:.1f} min "
          f"({totals['earlier'] / totals['now']:.2f}x)")
    if args.grid:
        report = json.loads(args.grid.read_text())
        after = sum(c["wall_seconds"] for c in report["cells"])
        before = sum(swapped.get(c["folder"], c["wall_seconds"]) for c in report["cells"])
        print(f"grid {args.grid}: {after / 60:.1f} min as run; with these cells in the earlier placement "
              f"{before / 60:.1f} min")


if __name__ == "__main__":
    main()

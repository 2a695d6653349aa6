"""``onnxflip reproduce``: the paper's grid of midpoints, and a report that checks its findings.

Each cell of models x formats x targets x bit fields is one experiment
(:func:`onnxflip.campaign.experiment.run`, a midpoint search to the chosen
precision) in its own folder under ``OUT/cells``; finished cells are kept,
so an interrupted run continues where it stopped.  ``report.json``
holds every cell's numbers and ``report.md`` is written from it alone.
Extra sections measure what the paper leaves open: flips in one direction
only, and the nonfinite policy (``keep`` vs ``nan_to_num``, which the paper's
code applied).
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys
import time
from dataclasses import dataclass, field

from onnxflip.campaign.design import SearchSettings
from onnxflip.campaign.executors import Executor
from onnxflip.campaign.experiment import Experiment, run
from onnxflip.campaign.results import prepare_output
from onnxflip.campaign.trials import TrialSettings
from onnxflip.errors import OnnxflipError
from onnxflip.modelio import write_atomically
from onnxflip.report.reproduction import render_report

__all__ = ["Cell", "GridSpec", "run_grid"]

logger = logging.getLogger(__name__)

DEPTH = {"vgg11": 11, "vgg13": 13, "vgg16": 16, "vgg19": 19}


@dataclass(frozen=True)
class Cell:
    model: str
    format: str
    targets: tuple[str, ...]
    bits: str
    direction: str = "both"
    nonfinite: str = "keep"
    section: str = "grid"

    @property
    def key(self) -> str:
        return "-".join([self.model, self.format, "+".join(self.targets), self.bits, self.direction, self.nonfinite])


@dataclass(frozen=True)
class GridSpec:
    models: tuple[str, ...] = ("vgg11", "vgg13", "vgg16", "vgg19")
    formats: tuple[str, ...] = ("float16", "bfloat16", "float32", "float64", "int8")
    targets: tuple[str, ...] = ("activations",)
    bits: tuple[str, ...] = ("all",)
    field_formats: tuple[str, ...] | None = None  # formats that get the exponent/mantissa cells (None: every float)
    samples: int | None = None
    batch_size: int = 500
    seed: int = 0
    extras: bool = True
    search: SearchSettings = field(default_factory=SearchSettings)

    def cells(self) -> list[Cell]:
        cells = [Cell(m, f, self.targets, b) for m in self.models for f in self.formats for b in self.bits
                 if b == "all" or (f != "int8" and (self.field_formats is None or f in self.field_formats))]
        if self.extras:
            first = self.models[0]
            fmt = "float32" if "float32" in self.formats else self.formats[0]
            cells += [Cell(first, fmt, self.targets, "all", direction=d, section="asymmetric") for d in ("01", "10")]
            if fmt != "int8":
                cells.append(Cell(first, fmt, self.targets, "all", nonfinite="nan_to_num", section="nonfinite"))
        return cells


def _model_path(models_dir: pathlib.Path, cell: Cell) -> pathlib.Path:
    path = models_dir / (f"{cell.model}_int8.onnx" if cell.format == "int8" else f"{cell.model}.onnx")
    if not path.is_file():
        raise OnnxflipError(f"model {path} is missing (int8 models come from `onnxflip quantize`)")
    return path


def _run_cell(cell: Cell, spec: GridSpec, models_dir: pathlib.Path, data_dir, out: pathlib.Path,
              executor: Executor | None) -> dict:
    folder = out / "cells" / cell.key
    results = folder / "results.json"
    if results.is_file():
        done = json.loads(results.read_text())
        if "midpoint" in done:
            return done
    experiment = Experiment(
        trials=TrialSettings(format=cell.format, targets=cell.targets, bits=cell.bits, direction=cell.direction,
                             nonfinite=cell.nonfinite, batch_size=spec.batch_size, seed=spec.seed),
        search=spec.search, samples=spec.samples)
    return run(experiment, model_path=_model_path(models_dir, cell), data=data_dir, out=folder,
               resume=results.is_file(), overwrite=not results.is_file(), executor=executor)


def _summary(cell: Cell, data: dict) -> dict:
    mid = data["midpoint"]
    side = {"above": ">", "below": "<"}.get(mid["status"])
    return {
        "model": cell.model, "depth": DEPTH.get(cell.model), "format": cell.format, "targets": list(cell.targets),
        "bits": cell.bits, "direction": cell.direction, "nonfinite": cell.nonfinite, "section": cell.section,
        "clean_accuracy": data["clean_score"], "midpoint": mid["p"], "low": mid["low"], "high": mid["high"],
        "bound": side, "bound_p": mid.get("bound_p"), "status": mid["status"], "stop_reason": data["stop_reason"],
        "evaluations": data["evaluations"], "wall_seconds": data.get("wall_seconds", 0.0), "folder": f"cells/{cell.key}",
        "rows": [{"p": r["p"], "mean": r["mean"], "trials": r["trials"]} for r in data["rows"]],
        "curve": data.get("curve"), "floor": data["floor"], "samples": data["samples"],
        "samples_per_trial": data["design"]["samples_per_trial"],
    }


def run_grid(spec: GridSpec, *, models_dir: pathlib.Path, data_dir, out: pathlib.Path, command: str = "",
             resume: bool = False, overwrite: bool = False, executor: Executor | None = None) -> dict:
    """Run every cell (keeping finished ones), then write report.json, report.md and the figures.

    ``executor`` runs each cell's trials (default: in this process); cells run one after another.
    """
    from tqdm import tqdm

    cells = spec.cells()
    for cell in cells:
        _model_path(models_dir, cell)
    if out.exists() and any(out.iterdir()) and not (resume or overwrite):
        raise OnnxflipError(f"{out} exists; use --resume to continue it or --overwrite to replace it")
    if resume:
        out.mkdir(parents=True, exist_ok=True)
    else:
        prepare_output(out, resume=False, overwrite=overwrite)
    began = time.perf_counter()
    summaries = []
    for cell in tqdm(cells, desc="reproduce", unit="cell", disable=None, file=sys.stderr):
        summaries.append(_summary(cell, _run_cell(cell, spec, models_dir, data_dir, out, executor)))
    report = {
        "command": command,
        "spec": {**{k: list(v) if isinstance(v, tuple) else v for k, v in spec.__dict__.items() if k != "search"},
                 "search": spec.search.to_json()},
        "samples": summaries[0]["samples"] if summaries else None,
        "wall_seconds": sum(c["wall_seconds"] for c in summaries),
        "wall_seconds_this_run": time.perf_counter() - began,
        "cells": summaries,
    }
    write_atomically(out / "report.json", json.dumps(report, indent=1).encode())
    _figures(report, out)
    write_atomically(out / "report.md", render_report(report).encode())
    return report


def _figures(report: dict, out: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from onnxflip.report.plots import plot_results

    grid = [c for c in report["cells"] if c["section"] == "grid" and c["bits"] == "all"]
    for model in dict.fromkeys(c["model"] for c in grid):
        cells = [c for c in grid if c["model"] == model]
        curves = [{"rows": c["rows"], "clean_score": c["clean_accuracy"], "floor": c["floor"], "metric": "top1",
                   "curve": c["curve"],
                   "midpoint": {"p": c["midpoint"], "low": c["low"], "high": c["high"],
                                "level": c["floor"] + (c["clean_accuracy"] - c["floor"]) / 2}} for c in cells]
        plot_results(curves, out / f"curves_{model}.png", labels=[f"{model} {c['format']}" for c in cells])
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    for i, fmt in enumerate(dict.fromkeys(c["format"] for c in grid)):
        points = sorted((c["depth"], c["midpoint"]) for c in grid if c["format"] == fmt and c["midpoint"] and c["depth"])
        if points:
            ax.plot(*zip(*points), "o-", color=f"C{i}", label=fmt)
    ax.set(yscale="log", xlabel="weight layers (VGG depth)", ylabel="midpoint p")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "midpoint_vs_depth.png")
    plt.close(fig)

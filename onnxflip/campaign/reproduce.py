"""``onnxflip reproduce``: the paper's grid of midpoints, and a report that checks its findings.

Each cell of models x formats x targets x bit fields is one experiment
(:func:`onnxflip.campaign.experiment.run`, a midpoint search to the chosen
precision) in its own folder under ``OUT/cells``; finished cells are kept,
so an interrupted run continues where it stopped.  ``report.json``
holds every cell's numbers and ``report.md`` is written from it alone.
Extra sections measure what the paper leaves open: the int8/float32 ratio
for each combination of noisy stored values (activations, weights, biases
and their unions), with the int8 biases stored as int32 (ONNX Runtime's
quantiser) and as float32 (``<model>_int8_floatbias.onnx``, from
``onnxflip quantize --bias float``); flips in one direction only; and the
nonfinite policy (``keep`` vs ``nan_to_num``, which the paper's code applied);
and write noise against read noise (one model per network, its float32
weights written once per trial or read by every batch of ``READ_BATCH`` images
with flips of their own).  The models are the four VGGs (a depth series) and
the zoo's other networks, whose findings the report judges apart.
Memory faults (stuck-at rates, ECC) given to the grid apply to every cell
(the read-noise cells, which need a memory without them, are then left out):
they are part of each cell's settings and of its folder name.
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys
import time
from dataclasses import dataclass, field, replace

from onnxflip.campaign.design import SearchSettings
from onnxflip.campaign.executors import Executor
from onnxflip.campaign.experiment import Experiment, run
from onnxflip.campaign.results import check_inputs_outside, finished, prepare_output
from onnxflip.campaign.trials import TrialSettings
from onnxflip.errors import OnnxflipError
from onnxflip.faults import FaultModel
from onnxflip.graph.sites import TARGETS
from onnxflip.modelio import write_atomically
from onnxflip.report.reproduction import render_report
from onnxflip.zoo.configs import DEPTH, MODELS, WEIGHT_LAYERS, network

__all__ = ["TARGET_SETS", "Cell", "GridSpec", "parse_target_sets", "run_grid"]

logger = logging.getLogger(__name__)

# The combinations of noisy stored values whose int8/float32 ratio the "targets" section measures.
TARGET_SETS = (("activations",), ("weights",), ("biases",), ("activations", "weights"),
               ("activations", "weights", "biases"))
# Write noise against read noise: the weights of one model per network, float32, read by batches of this size.
READ_TARGETS = ("weights",)
READ_BATCH = 50
# The float formats that get exponent-only and mantissa-only cells on the networks beyond VGG (the VGGs: all).
FIELD_FORMATS_BEYOND_VGG = ("float32",)



def parse_target_sets(text: str) -> tuple[tuple[str, ...], ...]:
    """'activations;weights;activations+weights' -> (("activations",), ("weights",), ("activations", "weights"));
    'none' -> ()."""
    if text.strip() == "none":
        return ()
    sets = []
    for part in text.split(";"):
        names = tuple(t.strip() for t in part.split("+"))
        unknown = [t for t in names if t not in TARGETS]
        if unknown or not part.strip():
            raise OnnxflipError(f"target set {part.strip()!r}: each name must be one of {', '.join(TARGETS)}")
        if len(set(names)) != len(names):
            raise OnnxflipError(f"target set {part.strip()!r} names a target twice")
        sets.append(tuple(t for t in TARGETS if t in names))
    return tuple(dict.fromkeys(sets))


@dataclass(frozen=True)
class Cell:
    model: str
    format: str
    targets: tuple[str, ...]
    bits: str
    direction: str = "both"
    nonfinite: str = "keep"
    section: str = "grid"
    bias: str = "int32"  # how an int8 model stores its biases: int32 or float (quantize --bias float)
    memory: tuple[tuple[str, object], ...] = ()  # (name, value) of the memory faults that are not the defaults
    randomness: str = "fixed"  # the parameters' flips: written once per trial (fixed) or read anew (per_run)
    batch_size: int | None = None  # the grid's unless given (read noise: the batch is one read)

    @property
    def key(self) -> str:
        parts = [self.model, self.format, "+".join(self.targets), self.bits, self.direction, self.nonfinite]
        parts += ["floatbias"] if self.bias == "float" else []
        parts += [f"read{self.batch_size or ''}"] if self.randomness == "per_run" else []
        return "-".join(parts + [f"{name}_{value}" for name, value in self.memory])


@dataclass(frozen=True)
class GridSpec:
    models: tuple[str, ...] = MODELS
    formats: tuple[str, ...] = ("float16", "bfloat16", "float32", "float64", "int8")
    targets: tuple[str, ...] = ("activations",)
    bits: tuple[str, ...] = ("all", "exponent", "mantissa")
    # formats that get the exponent/mantissa cells (None: every float of a VGG, FIELD_FORMATS_BEYOND_VGG of another)
    field_formats: tuple[str, ...] | None = None
    field_models: tuple[str, ...] | None = None  # models that get them (None: the shallowest and deepest VGG, the rest)
    samples: int | None = None
    batch_size: int = 500
    seed: int = 0
    extras: bool = True
    target_sets: tuple[tuple[str, ...], ...] = TARGET_SETS  # int8 vs float32 per combination (needs both formats)
    float_bias: bool = True  # the target sets with biases also on the int8 models with float32 biases
    search: SearchSettings = field(default_factory=SearchSettings)
    # The memory faults of every cell (stuck-at rates, ECC words); each cell sets its own bits and nonfinite policy
    fault: FaultModel = field(default_factory=FaultModel)
    nonfinite_score: str = "wrong"  # how every cell's top1 scores outputs that hold NaN or inf

    def __post_init__(self) -> None:
        TrialSettings(fault=self.fault)  # a grid's fault model gives no flip probabilities or seed

    def fielded_models(self) -> tuple[str, ...]:
        """The models whose float formats get the exponent and mantissa cells: ``field_models``, else the
        shallowest and the deepest VGG of ``models`` (VGG-A and VGG-E by default) and every other network."""
        if self.field_models is not None:
            return tuple(m for m in self.models if m in self.field_models)
        by_depth = sorted((m for m in self.models if m in DEPTH), key=DEPTH.__getitem__)
        ends = (by_depth[0], by_depth[-1]) if by_depth else ()
        return tuple(m for m in self.models if m in ends or m not in DEPTH)

    def fielded_formats(self, model: str) -> tuple[str, ...]:
        """The formats of ``model`` with exponent and mantissa cells: ``field_formats``, else every float format
        of a VGG and ``FIELD_FORMATS_BEYOND_VGG`` of the other networks."""
        floats = tuple(f for f in self.formats if f != "int8")
        if self.field_formats is not None:
            return tuple(f for f in floats if f in self.field_formats)
        return floats if model in DEPTH else tuple(f for f in floats if f in FIELD_FORMATS_BEYOND_VGG)

    def read_models(self) -> tuple[str, ...]:
        """One model per network for the write-vs-read pair: the shallowest VGG of ``models`` and each other
        network."""
        by_network: dict[str, str] = {}
        for m in sorted(self.models, key=lambda m: DEPTH.get(m, 0)):
            by_network.setdefault(network(m), m)
        return tuple(m for m in self.models if m in by_network.values())

    def memory(self) -> tuple[tuple[str, object], ...]:
        """The memory faults that differ from the defaults (fault-free cells keep their earlier names)."""
        defaults = {"s0": 0.0, "s1": 0.0, "ecc": "none", "on_detected": "keep"}
        fault = self.fault
        return tuple((name, getattr(fault, name)) for name, default in defaults.items()
                     if getattr(fault, name) != default and not (name == "on_detected" and fault.ecc == "none"))

    def to_json(self) -> dict:
        """The grid as report.json records it: the fault model's memory faults among the other fields, the
        search last."""
        data = {k: _jsonable(v) for k, v in self.__dict__.items() if k not in ("search", "fault")}
        data.update({name: getattr(self.fault, name) for name in ("s0", "s1", "ecc", "on_detected")})
        return {**data, "search": self.search.to_json()}

    def cells(self) -> list[Cell]:
        memory = self.memory()
        fielded = self.fielded_models()
        cells = [Cell(m, f, self.targets, b, memory=memory) for m in self.models for f in self.formats
                 for b in self.bits if b == "all" or (m in fielded and f in self.fielded_formats(m))]
        if self.extras:
            first = self.models[0]
            fmt = "float32" if "float32" in self.formats else self.formats[0]
            cells += [Cell(first, fmt, self.targets, "all", direction=d, section="asymmetric", memory=memory)
                      for d in ("01", "10")]
            if fmt != "int8":
                cells.append(Cell(first, fmt, self.targets, "all", nonfinite="nan_to_num", section="nonfinite",
                                  memory=memory))
        if "float32" in self.formats and "int8" in self.formats:
            for targets in self.target_sets:
                for m in self.models:
                    if tuple(targets) != tuple(self.targets):  # that pair is in the grid already
                        cells += [Cell(m, f, tuple(targets), "all", section="targets", memory=memory)
                                  for f in ("float32", "int8")]
                    if self.float_bias and "biases" in targets:
                        cells.append(Cell(m, "int8", tuple(targets), "all", section="targets", bias="float",
                                          memory=memory))
        if self.extras and "float32" in self.formats and not memory:  # read noise has no stuck cells or ECC
            for m in self.read_models():
                write = Cell(m, "float32", READ_TARGETS, "all", section="targets", memory=memory)
                if write not in cells:
                    cells.append(replace(write, section="reads"))
                cells.append(Cell(m, "float32", READ_TARGETS, "all", section="reads", memory=memory,
                                  randomness="per_run", batch_size=READ_BATCH))
        return cells


def _model_path(models_dir: pathlib.Path, cell: Cell) -> pathlib.Path:
    name = cell.model if cell.format != "int8" else f"{cell.model}_int8" + ("_floatbias" if cell.bias == "float" else "")
    path = models_dir / f"{name}.onnx"
    if not path.is_file():
        how = " --bias float" if cell.bias == "float" else ""
        raise OnnxflipError(f"model {path} is missing (int8 models come from `onnxflip quantize{how}`)")
    return path


def _run_cell(cell: Cell, spec: GridSpec, models_dir: pathlib.Path, data_dir, out: pathlib.Path,
              executor: Executor | None) -> dict:
    folder = out / "cells" / cell.key
    results = folder / "results.json"
    if results.is_file():
        done = json.loads(results.read_text())
        if finished(done):
            # A finished cell counts only if it scored NaN and inf as this grid does (results from before the
            # choice was recorded used the argmax rule).
            recorded = (done.get("experiment") or {}).get("nonfinite_score", "argmax")
            if recorded != spec.nonfinite_score:
                raise OnnxflipError(f"cell {cell.key} was measured with --nonfinite-score {recorded}: resume with "
                                    f"--nonfinite-score {recorded}, or use --overwrite to start again")
            return done
    experiment = Experiment(
        trials=TrialSettings(format=cell.format, targets=cell.targets,
                             fault=replace(spec.fault, bits=cell.bits, nonfinite=cell.nonfinite),
                             direction=cell.direction, batch_size=cell.batch_size or spec.batch_size, seed=spec.seed,
                             parameter_randomness=cell.randomness),
        search=spec.search, samples=spec.samples, nonfinite_score=spec.nonfinite_score)
    return run(experiment, model_path=_model_path(models_dir, cell), data=data_dir, out=folder,
               resume=results.is_file(), overwrite=not results.is_file(), executor=executor)


def _summary(cell: Cell, data: dict, spec: GridSpec) -> dict:
    mid = data["midpoint"]
    side = {"above": ">", "below": "<"}.get(mid["status"])
    return {
        "model": cell.model, "depth": DEPTH.get(cell.model), "layers": WEIGHT_LAYERS.get(cell.model),
        "format": cell.format, "targets": list(cell.targets), "randomness": cell.randomness,
        "batch_size": cell.batch_size or spec.batch_size,
        "bits": cell.bits, "direction": cell.direction, "nonfinite": cell.nonfinite, "section": cell.section,
        "bias": cell.bias,
        "memory": dict(cell.memory),
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
    inputs = [models_dir, *([data_dir] if data_dir is not None else [])]
    if resume:
        check_inputs_outside(out, inputs)
        if not out.is_dir():
            raise OnnxflipError(f"{out} does not exist: there is nothing to resume")
        out.mkdir(parents=True, exist_ok=True)
    else:
        prepare_output(out, resume=False, overwrite=overwrite, inputs=inputs, markers=("report.json", "cells"))
    began = time.perf_counter()
    summaries = []
    for cell in tqdm(cells, desc="reproduce", unit="cell", disable=None, file=sys.stderr):
        summaries.append(_summary(cell, _run_cell(cell, spec, models_dir, data_dir, out, executor), spec))
    report = {
        "command": command,
        "spec": spec.to_json(),
        "samples": summaries[0]["samples"] if summaries else None,
        "wall_seconds": sum(c["wall_seconds"] for c in summaries),
        "wall_seconds_this_run": time.perf_counter() - began,
        "cells": summaries,
    }
    write_atomically(out / "report.json", json.dumps(report, indent=1).encode())
    _figures(report, out)
    write_atomically(out / "report.md", render_report(report).encode())
    return report


def _jsonable(value):
    return [_jsonable(v) for v in value] if isinstance(value, tuple) else value


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
    if ax.get_legend_handles_labels()[1]:  # no midpoint inside the range: nothing to label
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "midpoint_vs_depth.png")
    plt.close(fig)

"""A sweep to a results folder: grid or midpoint search, written as points finish, resumable.

Files: ``results.json`` (settings, versions, seeds, rows, clean accuracy,
midpoint), ``results.csv`` (one row per probability) and ``accuracy.png``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import pathlib
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onnxflip.errors import OnnxflipError
from onnxflip.evaluate import Evaluator, SweepSettings, mix_seed
from onnxflip.modelio import write_atomically
from onnxflip.stats import crossing, midpoint_level

__all__ = ["CHANCE", "MidpointSearch", "parse_probabilities", "prepare_output", "run_sweep"]

logger = logging.getLogger(__name__)

CHANCE = 0.1


def parse_probabilities(text: str) -> list[float]:
    """``1e-7:1e-1:25`` (log-spaced, inclusive) or a comma list ``1e-5,1e-4``."""
    text = text.strip()
    try:
        if ":" in text:
            start, stop, count = text.split(":")
            lo, hi, n = float(start), float(stop), int(count)
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise OnnxflipError(f"cannot read probabilities {text!r}; use START:STOP:COUNT or a comma list") from None
    if ":" in text:
        if not (lo > 0 and hi > 0):
            raise OnnxflipError(f"{text!r} is log-spaced, so START and STOP must be above 0; to include p = 0, "
                                f"give a comma list such as 0,1e-6,1e-4")
        if n < 1:
            raise OnnxflipError(f"{text!r}: COUNT must be at least 1")
        values = list(np.logspace(math.log10(lo), math.log10(hi), n))
    if not values:
        raise OnnxflipError("the probability list is empty")
    bad = [v for v in values if not 0.0 <= v <= 1.0]
    if bad:
        raise OnnxflipError(f"probability {bad[0]} is outside [0, 1]")
    return sorted({float(v) for v in values})


@dataclass(frozen=True)
class MidpointSearch:
    """Bracket [low, high] in p, then bisect in log10(p) until the bracket is ``tolerance`` decades wide."""

    low: float = 1e-9
    high: float = 1e-2
    tolerance: float = 0.1

    @classmethod
    def from_range(cls, text: str, *, tolerance: float = 0.1) -> MidpointSearch:
        """The search over a ``LOW:HIGH`` bracket as given on the command line (either order), 0 < LOW < HIGH <= 1."""
        try:
            low, high = sorted(float(v) for v in text.split(":"))
        except ValueError:
            raise OnnxflipError(f"cannot read the bracket {text!r}; use LOW:HIGH, e.g. 1e-9:1e-2") from None
        if not 0.0 < low < high <= 1.0:
            raise OnnxflipError(f"the bracket {text!r} needs 0 < LOW < HIGH <= 1")
        return cls(low=low, high=high, tolerance=tolerance)


def prepare_output(out: pathlib.Path, *, resume: bool, overwrite: bool) -> dict | None:
    """Check the results folder; returns the earlier results when resuming."""
    results = out / "results.json"
    if out.exists() and not out.is_dir():
        raise OnnxflipError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if resume:
            if not results.is_file():
                raise OnnxflipError(f"{out} has no results.json to resume")
            return json.loads(results.read_text())
        if not overwrite:
            raise OnnxflipError(f"results folder {out} exists; use --resume to continue it or --overwrite to replace it")
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OnnxflipError(f"cannot create {out}: {exc.strerror or exc}") from None
    return None


def _versions() -> dict:
    import onnx
    import onnxruntime

    import onnxflip

    return {"onnxflip": onnxflip.__version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0]}


class _Recorder:
    """Keeps the rows and rewrites the result files, with the time spent so far, after every point."""

    def __init__(self, out: pathlib.Path, header: dict, rows: dict[float, dict], spent: float = 0.0) -> None:
        self.out, self.header, self.rows = out, header, rows
        self.spent, self.began = spent, time.perf_counter()

    def wall_seconds(self) -> float:
        return self.spent + time.perf_counter() - self.began

    def add(self, row: dict) -> None:
        self.rows[row["p"]] = row
        self.write()

    def write(self, extra: dict | None = None) -> dict:
        rows = [self.rows[p] for p in sorted(self.rows)]
        data = {**self.header, "wall_seconds": self.wall_seconds(), **(extra or {}), "rows": rows}
        write_atomically(self.out / "results.json", json.dumps(data, indent=1).encode())
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["p", "p01", "p10", "mean", "ci_low", "ci_high", "min", "max", "nonfinite", "trials"])
        for r in rows:
            writer.writerow([r["p"], r["p01"], r["p10"], r["mean"], r["ci_low"], r["ci_high"], r["min"], r["max"],
                             r["nonfinite"], len(r["trials"])])
        write_atomically(self.out / "results.csv", buffer.getvalue().encode())
        return data


def _midpoint(rows: dict[float, dict], clean: float) -> dict:
    level = midpoint_level(clean, CHANCE)
    ps = sorted(rows)
    p_mid = crossing(ps, [rows[p]["mean"] for p in ps], level)
    # The upper bound crosses the level later (larger p) than the lower bound.
    high = crossing(ps, [rows[p]["ci_high"] for p in ps], level)
    low = crossing(ps, [rows[p]["ci_low"] for p in ps], level)
    return {"level": level, "p": p_mid, "low": low, "high": high}


def _search(evaluate, rows: dict[float, dict], clean: float, search: MidpointSearch) -> None:
    level = midpoint_level(clean, CHANCE)
    lo, hi = math.log10(search.low), math.log10(search.high)
    for x in (lo, hi):
        evaluate(10**x)
    if not (rows[10**lo]["mean"] >= level > rows[10**hi]["mean"]):
        raise OnnxflipError(
            f"accuracy does not cross the midpoint level {level:.3f} between p={search.low:g} "
            f"({rows[10**lo]['mean']:.3f}) and p={search.high:g} ({rows[10**hi]['mean']:.3f}); widen the range"
        )
    while hi - lo > search.tolerance:
        mid = (lo + hi) / 2
        evaluate(10**mid)
        if rows[10**mid]["mean"] >= level:
            lo = mid
        else:
            hi = mid


def run_sweep(
    evaluator: Evaluator,
    out: pathlib.Path,
    *,
    probabilities: Sequence[float] | None = None,
    search: MidpointSearch | None = None,
    previous: dict | None = None,
    model_path: pathlib.Path | None = None,
    progress: bool | None = None,
) -> dict:
    """Measure clean accuracy, then the grid or the midpoint search; returns the results written."""
    from tqdm import tqdm

    settings: SweepSettings = evaluator.settings
    header = {
        "model": str(model_path) if model_path else None,
        "model_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest() if model_path else None,
        "settings": settings.to_json(),
        "mode": "midpoint" if search else "grid",
        "search": search.__dict__ if search else None,
        "samples": len(evaluator.labels),
        "chance": CHANCE,
        "versions": _versions(),
        "trial_seeds": [mix_seed(settings.seed, t) for t in range(settings.trials)],
        "seed_scheme": "trial t: mix(seed, t); activations of batch b: mix(mix(seed, t), 1 + b)",
    }
    rows: dict[float, dict] = {}
    if previous is not None:
        if previous.get("settings") != header["settings"] or previous.get("samples") != header["samples"]:
            raise OnnxflipError("the results folder was made with other settings; use --overwrite to start again")
        rows = {r["p"]: r for r in previous["rows"]}
        logger.info("resuming with %d measured points", len(rows))
    recorder = _Recorder(out, header, rows, spent=(previous or {}).get("wall_seconds", 0.0))
    planned = len(probabilities) + 1 if probabilities is not None else 12
    # disable=None: a bar on a terminal, nothing in a log file.
    bar = tqdm(total=planned * evaluator.batches_per_trial() * settings.trials, unit="batch",
               disable=None if progress is None else not progress, file=sys.stderr, dynamic_ncols=True)

    def evaluate(p: float) -> dict:
        if p in rows:
            return rows[p]
        bar.set_description(f"p={p:.3g}")
        row = evaluator.evaluate_point(p, on_batch=lambda: bar.update(1))
        recorder.add(row)
        logger.info("p=%.3g accuracy %.4f [%.4f, %.4f]", p, row["mean"], row["ci_low"], row["ci_high"])
        return row

    try:
        clean = evaluate(0.0)["mean"]
        if search is not None:
            _search(evaluate, rows, clean, search)
        else:
            for p in probabilities:
                evaluate(p)
    finally:
        bar.close()
    measured = {p: r for p, r in rows.items() if p > 0}
    extra = {
        "clean_accuracy": clean,
        "midpoint": _midpoint(measured, clean),
        "evaluations": len(rows),
    }
    data = recorder.write(extra)
    from onnxflip.plots import plot_results

    plot_results([data], out / "accuracy.png")
    return data

"""A campaign's results folder: results.json and results.csv, written atomically after every batch of trials.

``results.json`` holds everything needed to reproduce and to judge the
numbers: the settings, versions, seed scheme, every trial (probability, trial
index, samples, score, seconds), the clean scores, the design's log, the
fitted curve and the midpoint with its interval and why the campaign stopped.
``results.csv`` has one row per probability.  ``--resume`` reads the trials
back, so an interrupted campaign continues with the same numbers.
"""

from __future__ import annotations

import csv
import io
import json
import pathlib
import shutil
import sys
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from onnxflip.campaign.design import TrialOutcome
from onnxflip.errors import OnnxflipError
from onnxflip.modelio import write_atomically

__all__ = ["prepare_output", "rows_of", "versions", "write_results"]

CSV_COLUMNS = ("p", "p01", "p10", "trials", "samples", "mean", "sd", "min", "max", "nonfinite")


def prepare_output(out: pathlib.Path, *, resume: bool, overwrite: bool) -> dict | None:
    """Check the results folder; returns the earlier results when resuming."""
    results = out / "results.json"
    if out.exists() and not out.is_dir():
        raise OnnxflipError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if resume:
            if not results.is_file():
                raise OnnxflipError(f"{out} has no results.json to resume")
            try:
                return json.loads(results.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise OnnxflipError(f"cannot read {results}: {exc}") from None
        if not overwrite:
            raise OnnxflipError(f"results folder {out} exists; use --resume to continue it or --overwrite to replace it")
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OnnxflipError(f"cannot create {out}: {exc.strerror or exc}") from None
    return None


def versions() -> dict:
    import onnx
    import onnxruntime

    import onnxflip

    return {"onnxflip": onnxflip.__version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0]}


def rows_of(outcomes: Sequence[TrialOutcome], direction_of) -> list[dict]:
    """One row per probability: trials, samples, mean score, spread between trials, extremes, non-finite share."""
    by_p: dict[float, list[TrialOutcome]] = defaultdict(list)
    for o in outcomes:
        by_p[o.p].append(o)
    rows = []
    for p in sorted(by_p):
        group = by_p[p]
        scores = np.array([o.score for o in group])
        p01, p10 = direction_of(p)
        rows.append({
            "p": p, "p01": p01, "p10": p10, "trials": len(group),
            "samples": sorted({o.samples for o in group}),
            "mean": float(scores.mean()), "sd": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0,
            "min": float(scores.min()), "max": float(scores.max()),
            "nonfinite": float(np.mean([o.nonfinite for o in group])),
        })
    return rows


def write_results(out: pathlib.Path, data: dict) -> None:
    """results.json and results.csv, each written atomically."""
    write_atomically(out / "results.json", json.dumps(data, indent=1).encode())
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for row in data["rows"]:
        writer.writerow(["/".join(map(str, row[c])) if c == "samples" else row[c] for c in CSV_COLUMNS])
    write_atomically(out / "results.csv", buffer.getvalue().encode())


def outcomes_from(previous: dict) -> list[TrialOutcome]:
    return [TrialOutcome(**t) for t in previous.get("trials", [])]

"""A campaign's results folder: results.json and results.csv, written atomically as trials finish.

:func:`onnxflip.campaign.experiment.run` writes them after a batch of trials
when two seconds have passed since the last write, and when the campaign ends.

``results.json`` holds everything needed to reproduce and to judge the
numbers: the settings, versions, seed scheme, every trial (probability, trial
index, samples, score, seconds), the clean scores, the design's log, the
fitted curve and the midpoint with its interval and why the campaign stopped.
``results.csv`` has one row per probability (the swept value p and the
rates it sets), and with ECC the fractions of the words read corrected,
detected (not corrected) and silently wrong, over every ECC target's words.  ``--resume`` reads the trials
back, so an interrupted campaign continues with the same numbers.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import pathlib
import shutil
import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from scipy import stats

from onnxflip.campaign.design import TrialOutcome
from onnxflip.errors import OnnxflipError
from onnxflip.modelio import write_atomically

__all__ = ["PENDING_MIDPOINT", "check_inputs_outside", "default_folder", "finished", "prepare_output",
           "removed_if_left_empty", "rows_of", "versions", "write_results"]

CSV_COLUMNS = ("p", "p01", "p10", "s0", "s1", "trials", "samples", "mean", "low", "high", "sd", "min", "max",
               "nonfinite")
WORD_COLUMNS = ("corrected", "detected", "silent")  # with ECC: fractions of the words read
# The midpoint of a results.json written while trials run (or left by an interruption): not measured yet.
PENDING_MIDPOINT = {"status": "pending", "level": None, "p": None, "low": None, "high": None, "log10": None}


def finished(data: dict) -> bool:
    """Whether a results.json holds a finished campaign: its midpoint is not pending (a file written before
    partial ones had a midpoint has none)."""
    return (data.get("midpoint") or PENDING_MIDPOINT)["status"] != "pending"


def default_folder(model: pathlib.Path, fmt: str) -> pathlib.Path:
    """The results folder of a campaign on ``model`` in format ``fmt`` when none is given: results/<model>-<format>."""
    return pathlib.Path("results") / f"{model.stem}-{fmt}"


def check_inputs_outside(out: pathlib.Path, inputs: Sequence[pathlib.Path | str]) -> None:
    """Refuse a results folder that is, holds or lies inside one of the inputs (a data folder would read it)."""
    for source in inputs:
        source_path = pathlib.Path(source).resolve()
        if source_path == out.resolve() or out.resolve() in source_path.parents:
            raise OnnxflipError(f"results folder {out} holds the input {source}; choose another --out")
        if source_path in out.resolve().parents:
            raise OnnxflipError(f"results folder {out} lies inside the input {source}; choose another --out")


@contextlib.contextmanager
def removed_if_left_empty(out: pathlib.Path) -> Iterator[None]:
    """Around a campaign: a results folder it created and left empty, because it failed before writing
    anything (a provider that cannot start, say), is removed again; a folder that was there is kept."""
    existed = out.exists()
    try:
        yield
    except BaseException:
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def prepare_output(out: pathlib.Path, *, resume: bool, overwrite: bool, inputs: Sequence[pathlib.Path | str] = (),
                   markers: Sequence[str] = ("results.json",), resumable: bool = True) -> dict | None:
    """Check the results folder; returns the earlier results when resuming.

    A results folder never holds an input (the model, the data): it is
    refused before anything is written.  ``overwrite`` replaces only a
    folder that holds one of ``markers`` (what onnxflip writes into it), so
    that a mistyped ``--out`` naming another folder is never deleted.  ``resumable``: whether the command can
    continue what a folder holds (it names --resume in its refusal).
    """
    results = out / "results.json"
    if out.exists() and not out.is_dir():
        raise OnnxflipError(f"{out} exists and is not a folder")
    check_inputs_outside(out, inputs)
    if resume and not results.is_file():  # a mistyped --out starts nothing new in silence
        raise OnnxflipError(f"{out} has no results.json to resume")
    if out.is_dir() and any(out.iterdir()):
        if resume:
            try:
                return json.loads(results.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise OnnxflipError(f"cannot read {results}: {exc}") from None
        if not overwrite:
            resuming = "use --resume to continue it or " if resumable else "use "
            raise OnnxflipError(f"results folder {out} exists; {resuming}--overwrite to replace it")
        if not any((out / marker).exists() for marker in markers):
            raise OnnxflipError(f"{out} holds no {' or '.join(markers)}: it is not a results folder, and --overwrite "
                                "replaces only one; choose another --out")
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


def _word_fractions(group: Sequence[TrialOutcome]) -> dict:
    """The fractions of words read corrected, detected and silently wrong over a point's trials (all ECC
    targets together), and per target the summed counts; nothing without ECC."""
    if not any(o.words for o in group):
        return {}
    by_target: dict[str, dict[str, int]] = {}
    for o in group:
        for target, counts in (o.words or {}).items():
            total = by_target.setdefault(target, dict.fromkeys(counts, 0))
            for name, value in counts.items():
                total[name] += value
    words = sum(c["words"] for c in by_target.values())
    fractions = {name: sum(c[name] for c in by_target.values()) / words if words else float("nan")
                 for name in WORD_COLUMNS}
    return {**fractions, "words": by_target}


def mean_interval(scores: np.ndarray) -> tuple[float | None, float | None]:
    """The 95% interval of the mean score at one probability: Student's t over the trials' scores (each trial
    one draw of the faults; it assumes their scores are roughly normal), clipped to [0, 1]; (None, None) for
    fewer than two trials, and the mean itself when every trial scored the same."""
    if len(scores) < 2:
        return None, None
    mean, sd = float(scores.mean()), float(scores.std(ddof=1))
    if sd == 0.0:
        return mean, mean
    half = float(stats.t.ppf(0.975, len(scores) - 1)) * sd / math.sqrt(len(scores))
    return max(mean - half, 0.0), min(mean + half, 1.0)


def rows_of(outcomes: Sequence[TrialOutcome], rates_of) -> list[dict]:
    """One row per probability: its rates, trials, samples, mean score and its 95% interval
    (:func:`mean_interval`), spread between trials, extremes,
    non-finite share, and with ECC the word fractions.  ``rates_of(p)`` is (p01, p10, s0, s1).  ``samples``
    is the number every trial scored, as results.csv writes it; where a point's trials scored different
    numbers (a search that moved on to more samples per trial), the list of them (the CSV's ``500/2000``)."""
    by_p: dict[float, list[TrialOutcome]] = defaultdict(list)
    for o in outcomes:
        by_p[o.p].append(o)
    rows = []
    for p in sorted(by_p):
        group = by_p[p]
        scores = np.array([o.score for o in group])
        p01, p10, s0, s1 = rates_of(p)
        low, high = mean_interval(scores)
        samples = sorted({o.samples for o in group})
        rows.append({
            "p": p, "p01": p01, "p10": p10, "s0": s0, "s1": s1, "trials": len(group),
            "samples": samples[0] if len(samples) == 1 else samples,
            "mean": float(scores.mean()), "low": low, "high": high,
            "sd": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0,
            "min": float(scores.min()), "max": float(scores.max()),
            "nonfinite": float(np.mean([o.nonfinite for o in group])),
            **_word_fractions(group),
        })
    return rows


def _cell(row: dict, column: str) -> object:
    """A row's value in results.csv: several sample counts (a list) joined by ``/``."""
    value = row.get(column, "")
    return "/".join(map(str, value)) if isinstance(value, list) else value


def write_results(out: pathlib.Path, data: dict) -> None:
    """results.json and results.csv, each written atomically."""
    write_atomically(out / "results.json", json.dumps(data, indent=1).encode())
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns = CSV_COLUMNS + (WORD_COLUMNS if any("corrected" in row for row in data["rows"]) else ())
    writer.writerow(columns)
    for row in data["rows"]:
        writer.writerow([_cell(row, c) for c in columns])
    write_atomically(out / "results.csv", buffer.getvalue().encode())


def outcomes_from(previous: dict) -> list[TrialOutcome]:
    return [TrialOutcome(**t) for t in previous.get("trials", [])]

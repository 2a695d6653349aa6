"""``onnxflip compare``: overlay result curves and tabulate midpoints and their ratios."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence

from onnxflip.errors import OnnxflipError
from onnxflip.modelio import check_output_path
from onnxflip.report.plots import label_of, plot_results

__all__ = ["compare_results", "load_results"]


def load_results(path: str | os.PathLike[str]) -> dict:
    """A results.json, given the file or its folder."""
    path = pathlib.Path(path)
    file = path / "results.json" if path.is_dir() else path
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise OnnxflipError(f"cannot read results {file}: {exc}") from None
    except UnicodeDecodeError:
        raise OnnxflipError(f"{file} is not an onnxflip results file (give a results folder)") from None
    if not isinstance(data, dict) or "rows" not in data or "settings" not in data:
        raise OnnxflipError(f"{file} is not an onnxflip results file")
    return data


def _probability(p: float | None) -> str:
    """A probability as the table shows every one: three significant digits in scientific notation."""
    return f"{p:.2e}" if p else "-"


_RESULT_FILES = ("accuracy.png", "results.json", "results.csv", "report.json", "report.md")  # what a run writes


def compare_results(paths: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str]) -> str:
    """Write the overlay plot; return a table of midpoints and their ratios to the first result."""
    output = check_output_path(output)
    if output.suffix.lower() != ".png":
        raise OnnxflipError(f"compare writes a PNG figure: give -o a name ending in .png, not {output.name}")
    for path in paths:
        if output.parent.resolve() == pathlib.Path(path).resolve() and output.name in _RESULT_FILES:
            raise OnnxflipError(f"{output} is a file of the results {path}; write the figure elsewhere")
    results = [load_results(p) for p in paths]
    sweeps = {r.get("settings", {}).get("sweep", "flip") for r in results}
    if len(sweeps) > 1:  # one x axis: a flip probability and a stuck-at rate do not share it
        raise OnnxflipError("the results sweep different quantities (the flip probability and the stuck-at rate); "
                            "compare results of one kind")
    labels = [f"{pathlib.Path(p).name}: {label_of(r)}" for p, r in zip(paths, results)]
    plot_results(results, output, labels)
    first = (results[0].get("midpoint") or {}).get("p")
    width = max(len("result"), *(len(label) for label in labels))  # whole labels: their end tells results apart
    lines = [f"{'result':<{width}} {'clean':>6} {'midpoint':>10} {'95% interval':>22} {'ratio':>8}"]
    for label, result in zip(labels, results):
        mid = result.get("midpoint") or {}
        p = mid.get("p")
        interval = f"[{_probability(mid['low'])}, {_probability(mid['high'])}]" if mid.get("low") and mid.get("high") \
            else "-"
        ratio = f"{p / first:.3g}" if p and first else "-"
        lines.append(f"{label:<{width}} {result.get('clean_score', float('nan')):>6.3f} "
                     f"{_probability(p):>10} {interval:>22} {ratio:>8}")
    return "\n".join(lines)

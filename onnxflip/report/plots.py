"""Figures: score against flip probability: measured points, the fitted curve and its band, the midpoint."""

from __future__ import annotations

import os
from collections.abc import Sequence

__all__ = ["figure", "label_of", "plot_results"]


def label_of(result: dict) -> str:
    settings = result["settings"]
    model = os.path.basename(result.get("model") or "model")
    memory = [f"ecc {settings['ecc']}"] if settings.get("ecc", "none") != "none" else []
    memory += ["stuck-at sweep"] if settings.get("sweep") == "stuck-at" else []
    extra = f", {', '.join(memory)}" if memory else ""
    return f"{model} {settings['format']} {settings['bits']} ({','.join(settings['targets'])}{extra})"


def _title(result: dict) -> str:
    """What a figure of one result shows: model, format and targets, data, samples per trial, trials."""
    data = os.path.basename(str(result.get("data") or "").rstrip("/")) or "data"
    samples = (result.get("design") or {}).get("samples_per_trial") or result.get("samples")
    trials = result.get("evaluations")
    counts = ", ".join(part for part in (f"{samples} samples per trial" if samples else "",
                                         f"{trials} trials" if trials else "") if part)
    return f"{label_of(result)}\non {data}" + (f": {counts}" if counts else "")


def plot_results(results: Sequence[dict], path: str | os.PathLike[str], labels: Sequence[str] | None = None) -> None:
    """One curve per result: the mean score of each probability (dots sized by trials), the fitted curve with its
    95% band, the clean (p = 0) and floor levels, and the midpoint with its interval and value; p = 0 has no
    place on the log axis and is drawn as the clean level.  A single result's figure names each element in the
    legend and says in its title what was measured (model, data, samples per trial, trials)."""
    import matplotlib.pyplot as plt

    fig = figure(results, labels)
    fig.savefig(path)
    plt.close(fig)


def figure(results: Sequence[dict], labels: Sequence[str] | None = None):
    """The matplotlib figure :func:`plot_results` saves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, result in enumerate(results):
        colour = f"C{i}"
        label = labels[i] if labels else label_of(result)
        rows = [r for r in result["rows"] if r["p"] > 0]
        clean = result.get("clean_score", result.get("clean_accuracy"))
        if rows:
            sizes = [6 + 2 * min(r["trials"], 40) ** 0.5 for r in rows]
            ax.scatter([r["p"] for r in rows], [r["mean"] for r in rows], s=sizes, color=colour, alpha=0.7,
                       label="measured (dot size: trials)" if len(results) == 1 else label, zorder=3)
        single = len(results) == 1  # one result: every element named in the legend
        curve = result.get("curve")
        if curve:
            ps = [10**x for x in curve["log10_p"]]
            ax.plot(ps, curve["score"], "-", color=colour, lw=1.5, label="fitted curve" if single else None)
            banded = any(h > lo for lo, h in zip(curve["low"], curve["high"]))
            ax.fill_between(ps, curve["low"], curve["high"], color=colour, alpha=0.15, lw=0,
                            label="its 95% band" if single and banded else None)
        if clean is not None:
            name = f"clean (p = 0) {clean:.4f}" if single or not rows else None
            ax.axhline(clean, color=colour, ls=":", lw=1, label=name if single else (f"{label}: {name}" if name else None))
        mid = result.get("midpoint") or {}
        if mid.get("p"):
            span = f" [{mid['low']:.3g}, {mid['high']:.3g}]" if mid.get("low") and mid.get("high") else ""
            ax.plot([mid["p"]], [mid["level"]], "D", color=colour, ms=7, mec="black", zorder=4,
                    label=f"midpoint {mid['p']:.3g}{span}" if single else None)
            ax.annotate(f"{mid['p']:.3g}", (mid["p"], mid["level"]), textcoords="offset points", xytext=(8, 6),
                        fontsize=8, color=colour)
            if mid.get("low") and mid.get("high"):
                ax.hlines(mid["level"], mid["low"], mid["high"], color="black", lw=2.5, zorder=4)
    floor = results[0].get("floor", results[0].get("chance", 0.1))
    ax.axhline(floor, color="grey", ls="--", lw=1, label="floor (chance)" if results[0].get("metric") == "top1" else "floor")
    ax.set_xscale("log")
    if not any(r["p"] > 0 for result in results for r in result["rows"]):
        ax.set_xlim(1e-9, 1e-1)
    ax.set_ylim(0, 1.02)
    stuck = all(result.get("settings", {}).get("sweep") == "stuck-at" for result in results)
    ax.set_xlabel("stuck-at rate r (s0 = s1 = r / 2)" if stuck else "bit-flip probability p")
    ax.set_ylabel(results[0].get("metric", "top1") + " score")
    whole = len(results) == 1 and labels is None  # a result's own figure (results.json), not a grid's curves
    ax.set_title(_title(results[0]) if whole else "score against flip probability", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[1]:  # matplotlib warns about a legend with nothing in it
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig

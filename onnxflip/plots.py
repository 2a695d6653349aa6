"""Figures: accuracy against flip probability, with interval bands, chance, clean level and midpoints."""

from __future__ import annotations

import os
from collections.abc import Sequence

__all__ = ["label_of", "plot_results"]


def label_of(result: dict) -> str:
    settings = result["settings"]
    model = os.path.basename(result.get("model") or "model")
    return f"{model} {settings['format']} {settings['bits']} ({','.join(settings['targets'])})"


def plot_results(results: Sequence[dict], path: str | os.PathLike[str], labels: Sequence[str] | None = None) -> None:
    """One curve per result: mean accuracy vs p (log axis), 95% band, clean line, midpoint marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, result in enumerate(results):
        rows = [r for r in result["rows"] if r["p"] > 0]
        ps = [r["p"] for r in rows]
        colour = f"C{i}"
        label = labels[i] if labels else label_of(result)
        ax.plot(ps, [r["mean"] for r in rows], "o-", color=colour, ms=3, label=label)
        ax.fill_between(ps, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], color=colour, alpha=0.2)
        ax.axhline(result["clean_accuracy"], color=colour, ls=":", lw=1)
        mid = result.get("midpoint") or {}
        if mid.get("p"):
            ax.plot([mid["p"]], [mid["level"]], "D", color=colour, ms=7, mec="black")
            if mid.get("low") and mid.get("high"):
                ax.hlines(mid["level"], mid["low"], mid["high"], color=colour, lw=3, alpha=0.6)
    ax.axhline(results[0].get("chance", 0.1), color="grey", ls="--", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.set_xlabel("bit-flip probability p")
    ax.set_ylabel("top-1 accuracy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

"""A vulnerability map as files and lines: sensitivity.csv/.json, the heat map, the ranked sites, the summary."""

from __future__ import annotations

import csv
import io
import json
import math
import pathlib
from collections.abc import Sequence

from onnxflip.graph.sites import TARGETS
from onnxflip.modelio import write_atomically

__all__ = ["CSV_COLUMNS", "plot_map", "plot_plans", "summary_lines", "write_map"]

CSV_COLUMNS = ("site", "target", "dtype", "bit", "element_bits", "elements", "trials", "vulnerability", "low", "high")


def write_map(result: dict, out: pathlib.Path) -> None:
    """sensitivity.json (everything), sensitivity.csv (one row per (site, bit)), sensitivity.png, sites.png."""
    write_atomically(out / "sensitivity.json", (json.dumps(result, indent=1) + "\n").encode())
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(result["rows"])
    write_atomically(out / "sensitivity.csv", text.getvalue().encode())
    plot_map(result, out / "sensitivity.png", out / "sites.png")


def _sites(result: dict) -> list[str]:
    """The measured sites, most damaging first."""
    damage = result["damage"]
    return sorted(damage, key=lambda s: -damage[s])


def plot_map(result: dict, heat_path: pathlib.Path, ranked_path: pathlib.Path) -> None:
    """The heat map (sites x bits, vulnerability) and the sites ranked by damage (elements x the sum of their
    bits' vulnerabilities), each as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sites = _sites(result)
    width = max(r["element_bits"] for r in result["rows"])
    grid = np.full((len(sites), width), np.nan)
    row_of = {s: i for i, s in enumerate(sites)}
    for r in result["rows"]:
        if r["trials"]:
            grid[row_of[r["site"]], width - 1 - r["bit"]] = r["vulnerability"]
    fig, ax = plt.subplots(figsize=(max(6, width * 0.25 + 3), max(3, len(sites) * 0.22 + 1.5)), dpi=110)
    image = ax.imshow(np.clip(grid, 0, 1), aspect="auto", cmap="magma_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(sites)), sites, fontsize=6)
    ticks = list(range(0, width, max(1, width // 16)))
    ax.set_xticks(ticks, [str(width - 1 - t) for t in ticks], fontsize=7)
    ax.set_xlabel("bit (0 = least significant)")
    fig.colorbar(image, ax=ax, label="vulnerability (loss per flip, share of clean - floor)")
    ax.set_title(_title(result), fontsize=8)
    fig.tight_layout()
    fig.savefig(heat_path)
    plt.close(fig)

    damage = result["damage"]
    fig, ax = plt.subplots(figsize=(7, max(3, len(sites) * 0.2 + 1.5)), dpi=110)
    values = [max(damage[s], 1e-12) for s in sites]
    colours = [f"C{TARGETS.index(_target(result, s))}" for s in sites]
    ax.barh(range(len(sites)), values, color=colours)
    ax.set_yticks(range(len(sites)), sites, fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("damage: loss per inference per unit of p (elements x sum of the bits' vulnerabilities)")
    shown = [t for t in TARGETS if any(r["target"] == t for r in result["rows"])]
    handles = [plt.Rectangle((0, 0), 1, 1, color=f"C{TARGETS.index(t)}") for t in shown]
    ax.legend(handles, shown, fontsize=7, loc="lower right")
    ax.set_title(_title(result), fontsize=8)
    fig.tight_layout()
    fig.savefig(ranked_path)
    plt.close(fig)


def _target(result: dict, site: str) -> str:
    return next(r["target"] for r in result["rows"] if r["site"] == site)


def _title(result: dict) -> str:
    settings = result["settings"]
    model = pathlib.Path(result.get("model") or "model").name
    return (f"{model} {settings['format']} ({','.join(settings['targets'])}), {result['samples']} samples, "
            f"{result['runs']['activation_runs']} activation runs, {result['runs']['parameter_trials']} parameter "
            "trials")


def plot_plans(measured: Sequence[dict], path: pathlib.Path) -> None:
    """Midpoint (with its 95% interval) against plan budget; the unprotected model at budget 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    points = [m for m in measured if m.get("midpoint")]
    xs = [100 * m["budget"] for m in points]
    ys = [m["midpoint"] for m in points]
    low = [m["midpoint"] - (m.get("low") or m["midpoint"]) for m in points]
    high = [(m.get("high") or m["midpoint"]) - m["midpoint"] for m in points]
    ax.errorbar(xs, ys, yerr=[low, high], fmt="o-", capsize=3, label="midpoint and 95% interval")
    ax.set_yscale("log")
    ax.set_xlabel("protected share of the stored bits (%)")
    ax.set_ylabel("midpoint p")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summary_lines(result: dict, *, top: int = 10) -> list[str]:
    """The console summary: what was measured, the most vulnerable (site, bit) pairs and sites."""
    runs = result["runs"]
    lines = [f"clean score {result['clean_score']:.4f} on {result['samples']} samples (floor {result['floor']:.4f}); "
             f"{len(result['rows'])} (site, bit) cells, {runs['activation_runs']} activation runs, "
             f"{runs['parameter_trials']} parameter trials, {result['seconds']:.0f} s"]
    untried = sum(1 for r in result["rows"] if not r["trials"])
    if untried:
        lines.append(f"{untried} cells got no trial before the budget ran out (vulnerability empty; no plan protects "
                     "them): give a larger --budget")
    wide = sum(1 for r in result["rows"] if r["trials"] and r["high"] - r["low"] > result["settings"]["width"])
    if wide:
        lines.append(f"{wide} cells' intervals are wider than {result['settings']['width']:g} (the budget ran out)")
    lines.append("most vulnerable (site, bit): vulnerability [95% interval], trials")
    ranked = sorted((r for r in result["rows"] if r["trials"]), key=lambda r: -r["vulnerability"])
    for r in ranked[:top]:
        lines.append(f"  {r['site']:<28} bit {r['bit']:>2}  {r['vulnerability']:6.3f} [{r['low']:.3f}, {r['high']:.3f}]"
                     f"  {r['trials']}")
    lines.append("most damaging sites: elements x sum of the bits' vulnerabilities (share of the total)")
    damage = result["damage"]
    total = sum(damage.values()) or math.nan
    for site in _sites(result)[:top]:
        lines.append(f"  {site:<28} {damage[site]:12.4g}  {damage[site] / total:6.1%}")
    for u in result.get("not_measured", []):
        lines.append(f"not measured: {u['site']} ({u['target']}): {u['reason']}")
    return lines

"""What ``onnxflip evaluate`` prints when a campaign ends: the summary of its result (results.json's data)."""

from __future__ import annotations

import pathlib

from onnxflip.campaign.estimate import MIN_TRIALS, bound_notes
from onnxflip.graph.formats import describe_compute
from onnxflip.report.sites_table import percent

__all__ = ["count", "evaluation_summary", "share"]


def count(n: int, noun: str) -> str:
    """``1 trial``, ``3 trials``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def share(value: float) -> str:
    """A share of the samples as a percentage that reads 0 only when it is 0 (``<0.1%`` below a tenth)."""
    return "0" if value == 0 else "<0.1%" if value < 0.001 else percent(value)


def _score_table(rows: list[dict], swept: str) -> list[str]:
    """A grid's scores: per point, the trials, the mean score, the share of samples whose outputs hold NaN or inf
    (where a point has any) and the mean's 95% interval over the trials."""
    nonfinite = any(r.get("nonfinite") for r in rows)
    lines = [f"{swept:>9}  {'trials':>6}  {'mean':>6}  " + (f"{'nonfinite':>9}  " if nonfinite else "") +
             "95% interval"]
    for r in rows:
        span = (f"[{r['low']:.4f}, {r['high']:.4f}]" if r.get("low") is not None
                else "(the clean model)" if r["p"] == 0 else "- (one trial)")
        ruined = f"{share(r['nonfinite']):>9}  " if nonfinite else ""
        lines.append(f"{r['p']:9.3g}  {r['trials']:6d}  {r['mean']:6.4f}  {ruined}{span}")
    return lines


def _nonfinite_line(result: dict, swept: str, *, grid: bool) -> list[str]:
    """Where outputs held NaN or inf: what the table's column means, or (a search, no table) the largest share of
    any point; and how the metric scored them."""
    rows = [r for r in result["rows"] if r.get("nonfinite")]
    if not rows:
        return []
    if grid:
        line = "nonfinite: the share of samples whose output holds NaN or inf"
    else:
        worst = max(rows, key=lambda r: (r["nonfinite"], -r["p"]))
        line = (f"outputs with NaN or inf: up to {share(worst['nonfinite'])} of the samples (at {swept} = "
                f"{worst['p']:.3g}; results.csv has each point's share)")
    rule = result.get("nonfinite_score")
    scored = {"wrong": "scores them as wrong", "argmax": "ranks NaN as the largest value"}.get(rule)
    return [f"{line}; {result['metric']} {scored} (--nonfinite-score {rule})" if scored else line]


def _word_table(rows: list[dict], swept: str) -> list[str]:
    """With ECC: per point, the fractions of words read corrected, detected and silently wrong."""
    rows = [r for r in rows if "corrected" in r and r["p"] > 0]
    if not rows:
        return []
    lines = [f"{swept:>9}  {'mean':>6}  {'corrected':>9}  {'detected':>9}  {'silent':>9}"]
    lines += [f"{r['p']:9.3g}  {r['mean']:6.4f}  {r['corrected']:9.3g}  {r['detected']:9.3g}  {r['silent']:9.3g}"
              for r in rows]
    return lines


def _exposure_line(exposure: dict) -> str:
    """Which sites flipped, and the share of the stored parameters they cover."""
    sites = ", ".join(f"{count} {target}" for target, count in exposure["sites"].items())
    coverage = exposure.get("coverage")
    if not coverage or not coverage["all"]["elements"]:
        return f"sites: {sites}"
    share = coverage["all"]["share_elements"]
    missing = "" if share == 1.0 else " (onnxflip inspect lists the others, with the reason)"
    return f"sites: {sites}; {percent(share)} of the stored parameter elements are sites{missing}"


def _narrow_line(result: dict) -> str | None:
    """Where a search's interval is under half the width asked for (a maximum), why."""
    search, fit, mid = result["experiment"].get("search") or {}, result.get("fit") or {}, result["midpoint"]
    asked, width = search.get("precision"), mid.get("width_decades")
    if not asked or width is None or width >= asked / 2:
        return None
    why = (" (activations flip in every sample, so each trial's score varies little)"
           if "activations" in result["settings"].get("targets", ()) else "")
    return (f"the interval is {width:.2f} decades, under half the {asked:g} asked for (a maximum): no interval is "
            f"given before {MIN_TRIALS} trials where the curve falls ({fit.get('central_trials')} here), and those "
            f"trials placed the midpoint more precisely than asked{why}")


def evaluation_summary(result: dict, out: pathlib.Path) -> str:
    """What ``onnxflip evaluate`` prints of a result: the clean score and the trials, a grid's table, the share of
    outputs that hold NaN or inf (where it is not 0), the word fractions with ECC, the sites, and the midpoint."""
    mid = result["midpoint"]
    swept = "stuck-at rate" if result["settings"].get("sweep") == "stuck-at" else "p"
    scored = result["metric"] + (" score" if result["metric"] == "perplexity" else "")  # 1 clean, 0 at chance
    lines = [f"clean {scored} {result['clean_score']:.4f} on the first {result['design']['samples_per_trial']} "
             f"samples (those each trial scores); {count(result['evaluations'], 'trial')} in "
             f"{result['wall_seconds']:.0f} s ({result['stop_reason']}); results in {out}",
             *(_score_table(result["rows"], "rate" if swept != "p" else "p")
               if result["experiment"]["mode"] == "grid" else []),
             *_nonfinite_line(result, swept, grid=result["experiment"]["mode"] == "grid"),
             *_word_table(result["rows"], "rate" if swept != "p" else "p")]
    exposure = result.get("exposure")
    if exposure:
        lines.append(_exposure_line(exposure))
    fmt = result["settings"].get("format")
    if fmt not in (None, "float32", "int8"):  # results written before the compute was recorded emulated it
        lines.append(f"format {fmt}, computed in {describe_compute(fmt, result['settings'].get('compute', 'float32'))}")
    if mid["status"] in ("above", "below"):
        lines.append(f"midpoint {mid['status']} the range: {mid['note']}")
    elif mid["status"] in ("no fall", "non-monotone"):
        lines.append(f"no midpoint: {mid['note']}")
    elif mid["p"] is not None:
        span = f" [{mid['low']:.3g}, {mid['high']:.3g}], {mid['width_decades']:.2f} decades" if mid["low"] else \
            " (no interval: too few trials where the score falls)"
        lines.append(f"midpoint {swept} = {mid['p']:.3g}{span} (score {mid['level']:.3f})")
    else:
        lines.append("midpoint not reached in the measured range")
    narrow = _narrow_line(result)
    if narrow:
        lines.append(narrow)
    if mid.get("note") and mid["status"] in ("grid", "not reached"):  # the points rise above the level again
        lines.append(f"note: {mid['note']}")
    for note in bound_notes(result.get("fit") or {}):  # the data did not place these: the bound did
        lines.append(f"note: {note} (fit.at_bound in results.json)")
    return "\n".join(lines)

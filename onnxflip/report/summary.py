"""What ``onnxflip evaluate`` prints when a campaign ends: the summary of its result (results.json's data)."""

from __future__ import annotations

import pathlib

from onnxflip.campaign.estimate import bound_notes
from onnxflip.report.sites_table import percent

__all__ = ["count", "evaluation_summary"]


def count(n: int, noun: str) -> str:
    """``1 trial``, ``3 trials``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _score_table(rows: list[dict], swept: str) -> list[str]:
    """A grid's scores: per point, the trials, the mean score and its 95% interval over the trials."""
    lines = [f"{swept:>9}  {'trials':>6}  {'mean':>6}  95% interval"]
    for r in rows:
        span = (f"[{r['low']:.4f}, {r['high']:.4f}]" if r.get("low") is not None
                else "(the clean model)" if r["p"] == 0 else "- (one trial)")
        lines.append(f"{r['p']:9.3g}  {r['trials']:6d}  {r['mean']:6.4f}  {span}")
    return lines


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


def evaluation_summary(result: dict, out: pathlib.Path) -> str:
    """What ``onnxflip evaluate`` prints of a result: the clean score and the trials, a grid's table, the word
    fractions with ECC, the sites, and the midpoint."""
    mid = result["midpoint"]
    swept = "stuck-at rate" if result["settings"].get("sweep") == "stuck-at" else "p"
    scored = result["metric"] + (" score" if result["metric"] == "perplexity" else "")  # 1 clean, 0 at chance
    lines = [f"clean {scored} {result['clean_score']:.4f} on the first {result['design']['samples_per_trial']} "
             f"samples (those each trial scores); {count(result['evaluations'], 'trial')} in "
             f"{result['wall_seconds']:.0f} s ({result['stop_reason']}); results in {out}",
             *(_score_table(result["rows"], "rate" if swept != "p" else "p")
               if result["experiment"]["mode"] == "grid" else []),
             *_word_table(result["rows"], "rate" if swept != "p" else "p")]
    exposure = result.get("exposure")
    if exposure:
        lines.append(_exposure_line(exposure))
    if mid["status"] in ("above", "below"):
        lines.append(f"midpoint {mid['status']} the range: {mid['note']}")
    elif mid["status"] == "no fall":
        lines.append(f"no midpoint: {mid['note']}")
    elif mid["p"] is not None:
        span = f" [{mid['low']:.3g}, {mid['high']:.3g}], {mid['width_decades']:.2f} decades" if mid["low"] else \
            " (no interval: too few trials where the score falls)"
        lines.append(f"midpoint {swept} = {mid['p']:.3g}{span} (score {mid['level']:.3f})")
    else:
        lines.append("midpoint not reached in the measured range")
    for note in bound_notes(result.get("fit") or {}):  # the data did not place these: the bound did
        lines.append(f"note: {note} (fit.at_bound in results.json)")
    return "\n".join(lines)

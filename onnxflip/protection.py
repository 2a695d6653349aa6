"""Protection plans: which bits of which sites never flip, chosen from a vulnerability map within a budget.

A plan protects (site, bit) pairs: every element of the site keeps that bit
(ideal protection: a hardened cell, a bit stored elsewhere).  Its cost is
the bits it protects as a share of the **stored bits**: every bit of every
parameter site, stored once, plus every bit of one sample's activation
sites (one inference's working memory; each sample's activations are
written anew).  Its expected gain follows from the map: protecting (s, b)
removes ``elements(s) * v(s, b)`` of the loss per inference per unit of p
(:mod:`onnxflip.campaign.sensitivity`), for a cost of ``elements(s)`` bits,
so the plan takes the pairs in order of their estimated vulnerability, each
that still fits the budget, and no pair whose flips changed nothing in its
trials: the budget may be left partly unspent, and a map too short to
revisit a pair (its summary counts the wide intervals) may miss one.  ``evaluate --protect plan.json`` measures what it buys.

``plan.json``: ``{"model", "format", "budget", "stored_bits", "protected_bits",
"expected_gain", "protect": [{"site", "target", "bit", "elements", "vulnerability"}, ...]}``:
``expected_gain`` is the share of the map's damage (over its measured
pairs) that the plan removes.  A plan is for one storage format: its bit
positions are that format's, and another format is refused.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from onnxflip.errors import OnnxflipError

__all__ = ["Protection", "choose_plan", "read_plan"]


@dataclass(frozen=True)
class Protection:
    """The bits that never flip, per site name: ((site, mask), ...) with bit k of a mask = bit k protected."""

    masks: tuple[tuple[str, int], ...] = ()
    format: str | None = None  # the storage format the plan's bit positions are of (None: any)

    @classmethod
    def of_pairs(cls, pairs: Iterable[tuple[str, int]], *, format: str | None = None) -> Protection:
        masks: dict[str, int] = {}
        for site, bit in pairs:
            masks[site] = masks.get(site, 0) | (1 << bit)
        return cls(tuple(sorted(masks.items())), format)

    @classmethod
    def of_masks(cls, masks: Iterable[tuple[str, int]], *, format: str | None = None) -> Protection:
        return cls(tuple(sorted((site, mask) for site, mask in masks if mask)), format)

    def to_json(self) -> dict[str, str]:
        """{site: protected bits as a hex mask}."""
        return {site: hex(mask) for site, mask in self.masks}

    def mask(self, site: str) -> int:
        """The protected bits of a site (0: none)."""
        return dict(self.masks).get(site, 0)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(site for site, _ in self.masks)

    def check(self, format: str, widths: Mapping[str, int]) -> None:
        """Raise OnnxflipError unless the plan is for this storage format and every protected site is one of the
        injection's (``widths``: site name -> bits per element) with bits inside its elements."""
        if self.format is not None and self.format != format:
            raise OnnxflipError(f"the plan's bit positions are of format {self.format}, and this injection stores "
                                f"{format}: make the plan for {format}")
        missing = [s for s in self.sites if s not in widths]
        if missing:
            raise OnnxflipError(f"the plan protects site {missing[0]!r}, which this injection does not have "
                                f"({len(missing)} such site(s)): make the plan for this model, format and targets")
        for site, mask in self.masks:
            if mask >> widths[site]:
                raise OnnxflipError(f"the plan protects bit {mask.bit_length() - 1} of site {site!r}, whose elements "
                                    f"have {widths[site]} bits")


def stored_bits(rows: Iterable[Mapping]) -> int:
    """The stored bits of the sites of a map's rows: elements x width, each site once."""
    sites: dict[str, int] = {}
    for row in rows:
        sites[row["site"]] = row["elements"] * row["element_bits"]
    return sum(sites.values())


def choose_plan(rows: list[Mapping], budget: float) -> dict:
    """The plan within ``budget`` (a share of the stored bits) from a map's rows (see the module docstring)."""
    if not 0 < budget <= 1:
        raise OnnxflipError(f"a plan budget is a share of the stored bits in (0, 1], not {budget}")
    total = stored_bits(rows)
    allowed = budget * total
    damage = sum(r["elements"] * max(r["vulnerability"], 0.0) for r in rows if r["trials"])
    chosen, spent, gain = [], 0, 0.0
    for row in sorted((r for r in rows if r["trials"]), key=lambda r: -r["vulnerability"]):
        if row["vulnerability"] <= 0:  # its flips changed nothing (or only helped) in its trials
            break
        if spent + row["elements"] > allowed:
            continue
        spent += row["elements"]
        gain += row["elements"] * row["vulnerability"]
        chosen.append({k: row[k] for k in ("site", "target", "bit", "elements", "vulnerability")})
    return {"budget": budget, "stored_bits": total, "protected_bits": spent,
            "expected_gain": gain / damage if damage else 0.0, "protect": chosen}


def read_plan(path: str | pathlib.Path) -> Protection:
    """The protection a plan.json states; OnnxflipError in one line where it is not one."""
    path = pathlib.Path(path)
    what = "a protection plan (plan.json from `onnxflip sensitivity --plan-budget`)"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise OnnxflipError(f"plan {path} does not exist") from None
    except OSError as exc:
        raise OnnxflipError(f"cannot read plan {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise OnnxflipError(f"{path} is not {what}: it is not JSON") from None
    entries = data.get("protect") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and {"site", "bit"} <= set(e) for e in entries):
        raise OnnxflipError(f"{path} is not {what}: it needs a list \"protect\" of {{\"site\", \"bit\"}} entries")
    if not all(isinstance(e["bit"], int) and not isinstance(e["bit"], bool) and 0 <= e["bit"] < 64 for e in entries):
        raise OnnxflipError(f"{path} is not {what}: a bit position that is not a whole number from 0 to 63")
    fmt = data.get("format")
    return Protection.of_pairs(((str(e["site"]), e["bit"]) for e in entries), format=fmt if isinstance(fmt, str) else None)

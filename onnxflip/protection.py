"""Protection plans: which bits of which sites never flip, chosen from a vulnerability map within a budget.

A plan protects (site, bit) pairs: every element of the site keeps that bit
(ideal protection: a hardened cell, a bit stored elsewhere).  Its cost is
the bits it protects as a share of the **stored bits**: every bit of every
parameter site, stored once, plus every bit of one sample's activation
sites (one inference's working memory; each sample's activations are
written anew).  Its expected gain follows from the map: protecting (s, b)
removes ``elements(s) * v(s, b)`` of the loss per inference per unit of p
(:mod:`onnxflip.campaign.sensitivity`), for a cost of ``elements(s)`` bits,
so the plan takes the pairs in order of vulnerability, each that still fits
the budget; the order is by the centre of each pair's 95% interval, which
gives a pair measured only a few times the benefit of the doubt (its point
estimate may be 0 while it may well ruin).  ``evaluate --protect plan.json`` measures what it buys.

``plan.json``: ``{"budget", "stored_bits", "protected_bits", "expected_gain",
"protect": [{"site", "target", "bit", "elements", "vulnerability"}, ...]}``.
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

    @classmethod
    def of_pairs(cls, pairs: Iterable[tuple[str, int]]) -> Protection:
        masks: dict[str, int] = {}
        for site, bit in pairs:
            masks[site] = masks.get(site, 0) | (1 << bit)
        return cls(tuple(sorted(masks.items())))

    @classmethod
    def of_masks(cls, masks: Iterable[tuple[str, int]]) -> Protection:
        return cls(tuple(sorted((site, mask) for site, mask in masks if mask)))

    def to_json(self) -> dict[str, str]:
        """{site: protected bits as a hex mask}."""
        return {site: hex(mask) for site, mask in self.masks}

    def mask(self, site: str) -> int:
        """The protected bits of a site (0: none)."""
        return dict(self.masks).get(site, 0)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(site for site, _ in self.masks)

    def check_sites(self, names: Iterable[str]) -> None:
        """Raise OnnxflipError unless every protected site is one of ``names`` (the sites of the injection)."""
        known = set(names)
        missing = [s for s in self.sites if s not in known]
        if missing:
            raise OnnxflipError(f"the plan protects site {missing[0]!r}, which this injection does not have "
                                f"({len(missing)} such site(s)): make the plan for this model, format and targets")


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
    for row in sorted((r for r in rows if r["trials"]), key=lambda r: -(r["low"] + r["high"])):  # measured ones
        if row["high"] <= 0:
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
    try:
        data = json.loads(path.read_text())
        pairs = [(str(p["site"]), int(p["bit"])) for p in data["protect"]]
    except FileNotFoundError:
        raise OnnxflipError(f"plan {path} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OnnxflipError(f"{path} is not a protection plan (plan.json from `onnxflip sensitivity --plan-budget`):"
                            f" {type(exc).__name__} {exc}") from None
    if any(not 0 <= bit < 64 for _, bit in pairs):
        raise OnnxflipError(f"{path}: a bit position outside 0..63")
    return Protection.of_pairs(pairs)

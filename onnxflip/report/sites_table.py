"""The FlipBits sites of a model as rows and as a table: what ``onnxflip inspect`` prints."""

from __future__ import annotations

import dataclasses
import json
import os
from collections import defaultdict

from onnxflip.graph.config import METADATA_KEY, InjectionConfig
from onnxflip.graph.formats import model_format
from onnxflip.graph.inject import plan_sites
from onnxflip.graph.passes.insert_flipbits import InsertFlipBitsPass
from onnxflip.modelio import load_model

__all__ = ["describe_sites", "format_site_table"]


def describe_sites(path: str | os.PathLike[str], *, config: InjectionConfig) -> list[dict]:
    """One row per site: tensor, target, dtype, elements, bits, mask.

    For an injected model, the sites it records (``config`` is not used);
    for a clean model, the sites :func:`onnxflip.graph.inject.insert_flipbits`
    would create with ``config`` (whose format None means the model's own,
    :func:`~onnxflip.graph.formats.model_format`).
    """
    model = load_model(path)
    if METADATA_KEY in model.metadata_props:
        return json.loads(model.metadata_props[METADATA_KEY])["sites"]
    if config.format is None:  # the model's own
        config = dataclasses.replace(config, format=model_format(model))
    _, _, sites = plan_sites(model, config)
    describe = InsertFlipBitsPass(config, sites).describe
    return [describe(site) for site in sites]


def format_site_table(rows: list[dict]) -> str:
    """The rows as an aligned table, then totals per target class."""
    if not rows:
        return "no sites"
    header = ("tensor", "target", "dtype", "elements", "bits", "mask")
    cells = [[str(r[h] if r[h] is not None else "?") for h in header] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in rows:
        t = totals[r["target"]]
        t[0] += 1
        if r["elements"] is not None:
            t[1] += r["elements"]
            t[2] += r["elements"] * int(r["mask"], 16).bit_count()
    lines.append("")
    for target, (count, elements, flippable) in totals.items():
        lines.append(f"{target}: {count} sites, {elements:,} elements, {flippable:,} flippable bits"
                     + (" (per sample)" if target == "activations" else ""))
    return "\n".join(lines)

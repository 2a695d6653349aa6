"""The FlipBits sites of a model and the coverage of its stored parameters: what ``onnxflip inspect`` prints."""

from __future__ import annotations

import math
import os
from collections import defaultdict

import onnx_ir as ir

from onnxflip.graph.config import InjectionConfig
from onnxflip.graph.coverage import Coverage
from onnxflip.graph.inject import in_model_format, plan_sites, site_coverage, why_no_sites
from onnxflip.graph.passes.insert_flipbits import InsertFlipBitsPass
from onnxflip.graph.record import InjectionRecord
from onnxflip.graph.sites import PER_SAMPLE_TARGETS, TARGETS, Selection
from onnxflip.modelio import load_model

__all__ = ["describe_sites", "format_coverage", "format_site_table", "percent"]


def describe_sites(model: str | os.PathLike[str] | ir.Model, *,
                   config: InjectionConfig) -> tuple[list[dict], Coverage | None]:
    """One row per site (tensor, target, dtype, elements, bits, mask), and the coverage of the stored parameters
    of a model (a path, or a model loaded already).

    For an injected model, the sites and coverage it records (``config`` is
    not used; a model injected before coverage was recorded has none); for a
    clean model, the sites :func:`onnxflip.graph.inject.insert_flipbits` would
    create with ``config`` (whose format None means the model's own,
    :func:`~onnxflip.graph.formats.model_format`).
    """
    model = model if isinstance(model, ir.Model) else load_model(model)
    record = InjectionRecord.read(model)
    if record is not None:
        return record.sites, record.coverage
    config = in_model_format(config, model)
    prepared, _, sites = plan_sites(model, config)
    coverage = site_coverage(prepared, sites, config)
    describe = InsertFlipBitsPass(config, sites).describe
    return [describe(site) for site in sites], coverage


def format_site_table(rows: list[dict], coverage: Coverage | None = None, *, batch: int | None = None,
                      selection: Selection | None = None) -> str:
    """The rows as an aligned table, then totals per target class (a site of unknown size is said so; the
    activations of a model whose inputs fix the batch size are counted per batch of that size); no rows, why
    ``selection`` found none."""
    if not rows:
        return "no sites" + (f": {why_no_sites(coverage, selection)}" if coverage is not None else "")
    header = ("tensor", "target", "dtype", "elements", "bits", "mask")
    cells = [[str(r[h] if r[h] is not None else "?") for h in header] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in rows:
        t = totals[r["target"]]
        t[0] += 1
        if r["elements"] is not None:
            t[1] += r["elements"]
            t[2] += r["elements"] * int(r["mask"], 16).bit_count()
        else:
            t[3] += 1
    lines.append("")
    for target, (count, elements, flippable, unknown) in sorted(totals.items(), key=lambda t: TARGETS.index(t[0])):
        lines.append(f"{target}: {count} sites, {elements:,} elements, {flippable:,} flippable bits"
                     + ((" (per sample)" if batch is None else f" (per batch of {batch})")
                        if target in PER_SAMPLE_TARGETS else "")
                     + (f"; {unknown} site(s) of unknown size (symbolic shape) not counted" if unknown else ""))
    return "\n".join(lines)


def percent(share: float | None) -> str:
    """A share as a percentage to 0.1, rounded down: a share short of all never reads 100.0%."""
    return "-" if share is None else f"{math.floor(1000 * share) / 10:.1f}%"


def format_coverage(coverage: Coverage) -> str:
    """The share of the stored parameters' elements and bits that are sites, per target, and every stored
    parameter that is not a site with the reason."""
    totals = coverage.totals()
    everything, floats = totals["all"], totals["float"]
    lines = [f"coverage of the {totals['tensors']} stored parameter tensors ({everything['elements']:,} elements, "
             f"{everything['bits']:,} bits; {floats['elements']:,} float elements):"]
    for target, t in sorted(everything["targets"].items(), key=lambda t: TARGETS.index(t[0])):
        f = floats["targets"].get(target)
        lines.append(f"  {target}: {t['tensors']} tensors, {percent(t['share_elements'])} of the elements, "
                     f"{percent(t['share_bits'])} of the bits"
                     + (f" ({percent(f['share_elements'])} of the float elements)" if f else ""))
    lines.append(f"  all sites: {percent(everything['share_elements'])} of the elements, "
                 f"{percent(everything['share_bits'])} of the bits ({percent(floats['share_elements'])} of the float "
                 "elements)")
    if coverage.folded_batchnorms:
        lines.append(f"  {coverage.folded_batchnorms} BatchNormalization layers are folded into the Conv before them "
                     "and stored in its weights and biases (--no-fold-batchnorm keeps them apart)")
    if totals["unknown_size"]:
        lines.append(f"  {totals['unknown_size']} parameter tensor(s) of unknown size, in no share")
    missing = coverage.not_sites()
    if coverage.not_data:
        elements = sum(r.elements or 0 for r in coverage.not_data)
        count = len(coverage.not_data)
        lines.append(f"  besides: {count} stored shape, index or mask tensor{'' if count == 1 else 's'} ({elements:,} "
                     "elements; no parameters, listed in --json)")
    if not missing:
        lines.append("every stored parameter is a site")
        return "\n".join(lines)
    lines.append(f"stored parameters that are not sites ({len(missing)}):")
    width = max(len(r.tensor) for r in missing)
    for r in missing:
        elements = "?" if r.elements is None else f"{r.elements:,}"
        lines.append(f"  {r.tensor.ljust(width)}  {r.dtype.lower():8}  {elements:>10}  {r.reason}")
    return "\n".join(lines)

"""Coverage: which of a model's stored parameters an injection exposes, and why the others are not sites.

The parameters of a model are its stored numeric tensors (see
:mod:`onnxflip.graph.stored`): every float tensor, every integer tensor that
holds data rather than shapes or indices (int8 weights, int32 biases, zero
points), and numbers held in node attributes.  Coverage is the share of
their elements, and of their bits, that are sites, per target class and in
all; each parameter that is not a site is listed with the reason (a target
not selected, excluded by ``--include``/``--exclude``, a scalar operator
constant, input preprocessing, an attribute FlipBits cannot reach, ...).
Activations are written per sample and are not part of it.  The stored
tensors that hold shapes, indices or masks are listed apart, with their
reason; they are no parameters and count in no share.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

import onnx_ir as ir

from onnxflip.graph.sites import Site
from onnxflip.graph.stored import PARAMETER_ROLES, StoredTensor

__all__ = ["EXCLUDED_BY_SELECTION", "Coverage", "StoredRow", "coverage_of"]

EXCLUDED_BY_SELECTION = "excluded by the selection (--include/--exclude)"  # the reason of a targeted non-site


@dataclass(frozen=True)
class StoredRow:
    """One stored parameter: its site target, or the reason it is not a site."""

    tensor: str
    dtype: str
    elements: int | None
    bits: int
    target: str | None  # the site's target class; None when it is not a site
    reason: str = ""


@dataclass(frozen=True)
class Coverage:
    """The stored parameters of a model and which are sites (JSON: ``to_json``/``from_json``)."""

    parameters: tuple[StoredRow, ...]
    not_data: tuple[StoredRow, ...] = ()  # stored tensors that hold shapes, indices or masks (no parameters)
    folded_batchnorms: int = 0  # BatchNormalization nodes folded into the Conv before them (their parameters with it)

    def totals(self) -> dict:
        """Elements and bits of the parameters, all and float, and the share of each that each target's sites
        hold; a parameter of unknown size counts in ``unknown_size`` and in no total."""
        known = [r for r in self.parameters if r.elements is not None]
        result: dict = {"tensors": len(self.parameters), "unknown_size": len(self.parameters) - len(known)}
        for scope, rows in (("all", known), ("float", [r for r in known if _is_float(r.dtype)])):
            elements = sum(r.elements for r in rows)
            bits = sum(r.elements * r.bits for r in rows)
            per: dict[str, dict] = defaultdict(lambda: {"tensors": 0, "elements": 0, "bits": 0})
            for r in rows:
                if r.target is not None:
                    t = per[r.target]
                    t["tensors"] += 1
                    t["elements"] += r.elements
                    t["bits"] += r.elements * r.bits
            sites = {"elements": sum(t["elements"] for t in per.values()), "bits": sum(t["bits"] for t in per.values())}
            result[scope] = {
                "elements": elements, "bits": bits,
                "share_elements": sites["elements"] / elements if elements else None,
                "share_bits": sites["bits"] / bits if bits else None,
                "targets": {target: {**t, "share_elements": t["elements"] / elements if elements else None,
                                     "share_bits": t["bits"] / bits if bits else None}
                            for target, t in per.items()},
            }
        return result

    def not_sites(self) -> list[StoredRow]:
        return [r for r in self.parameters if r.target is None]

    def to_json(self) -> dict:
        return {"totals": self.totals(), "parameters": [asdict(r) for r in self.parameters],
                "not_data": [asdict(r) for r in self.not_data], "folded_batchnorms": self.folded_batchnorms}

    @classmethod
    def from_json(cls, data: dict) -> Coverage:
        return cls(tuple(StoredRow(**r) for r in data["parameters"]), tuple(StoredRow(**r) for r in data["not_data"]),
                   int(data.get("folded_batchnorms", 0)))


def _is_float(dtype: str) -> bool:
    return ir.DataType[dtype].is_floating_point()


def _reason(stored: StoredTensor, targets: tuple[str, ...]) -> str:
    if stored.role is None:
        return stored.reason
    if stored.role not in targets:
        hint = " (a quantisation scale or zero point)" if stored.role == "qparams" else ""
        return f"target {stored.role} not selected{hint}"
    return EXCLUDED_BY_SELECTION


def coverage_of(stored: list[StoredTensor], sites: list[Site], targets: tuple[str, ...], *,
                folded_batchnorms: int = 0) -> Coverage:
    """The coverage of ``sites`` (found on the same prepared graph as ``stored``) over its stored parameters."""
    site_of = {id(s.value): s.target for s in sites if s.target in PARAMETER_ROLES}
    rows, not_data = [], []
    for t in stored:
        if not t.data:
            not_data.append(StoredRow(t.name, t.dtype, t.elements, t.width, None, t.reason))
            continue
        target = site_of.get(id(t.value)) if t.value is not None else None
        rows.append(StoredRow(t.name, t.dtype, t.elements, t.width, target, "" if target else _reason(t, targets)))
    return Coverage(tuple(rows), tuple(not_data), folded_batchnorms)

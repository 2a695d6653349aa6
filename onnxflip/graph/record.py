"""What an injected model holds: the injection record, written and read here only.

:class:`InjectionRecord` is the injection configuration (format, fault model
per target class, selection), one row per FlipBits site (tensor, target,
stored element type, elements, bits, mask; with ECC the site's words) and
the coverage of the stored parameters (:mod:`onnxflip.graph.coverage`).  The
FlipBits pass writes it into the model's metadata as JSON under the key
``onnxflip.injection``; every command that needs to know what a model holds
reads it back with :meth:`InjectionRecord.read`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import onnx_ir as ir

from onnxflip.errors import OnnxflipError
from onnxflip.graph.config import InjectionConfig
from onnxflip.graph.coverage import Coverage

__all__ = ["METADATA_KEY", "InjectionRecord", "is_recorded"]

METADATA_KEY = "onnxflip.injection"


def is_recorded(model: ir.Model) -> bool:
    """Whether the model holds an injection record (without reading it)."""
    return METADATA_KEY in model.metadata_props


@dataclass(frozen=True)
class InjectionRecord:
    """The configuration an injected model was injected with, its site rows and its coverage (None for a model
    injected before coverage was recorded)."""

    config: InjectionConfig
    sites: list[dict]
    coverage: Coverage | None = None

    def to_json(self) -> dict:
        data = {"config": self.config.to_json(), "sites": self.sites}
        if self.coverage is not None:
            data["coverage"] = self.coverage.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict) -> InjectionRecord:
        coverage = Coverage.from_json(data["coverage"]) if data.get("coverage") is not None else None
        return cls(InjectionConfig.from_json(data["config"]), list(data["sites"]), coverage)

    def write(self, model: ir.Model) -> None:
        """Store the record in the model's metadata (replacing one there)."""
        model.metadata_props[METADATA_KEY] = json.dumps(self.to_json())

    @classmethod
    def read(cls, model: ir.Model) -> InjectionRecord | None:
        """The record a model holds; None for a model without one (a clean model)."""
        text = model.metadata_props.get(METADATA_KEY)
        if text is None:
            return None
        try:
            return cls.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise OnnxflipError(f"the model's {METADATA_KEY} metadata is not an injection record ({exc}); "
                                "inject the original model again") from None

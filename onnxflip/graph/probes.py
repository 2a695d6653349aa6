"""A model whose stored values can be overwritten element by element: what a sensitivity map runs.

    model -> LiftStoredConstantsPass -> FoldBatchNormPass -> InferShapesPass -> (find sites)
          -> StoreInFormatPass -> (parameters: the template)
          -> InsertProbesPass  -> (activations: the probed model)

The same sites, in the same storage format, as
:func:`onnxflip.graph.inject.insert_flipbits` finds.  Two models come out:

- the **probed** model, with a ScatterND at each activation site that the
  caller feeds (:mod:`onnxflip.graph.passes.insert_probes`): fed nothing, it
  computes what the model converted to the format computes;
- the **template**, the converted model whose stored parameter tensors hold
  no data: each session binds them
  (:func:`onnxflip.runtime.session.bound_per_session`), one of them with a
  flipped element, so ONNX Runtime keeps every parameter a constant and
  runs its usual kernels (int8 QDQ: its integer kernels).

A probe between QuantizeLinear and DequantizeLinear keeps ONNX Runtime from
fusing an int8 activation into its integer kernels, which may round a few
outputs differently from the injected model: scores are always compared
with the probed model's own clean run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from onnxflip.bits import field_mask
from onnxflip.errors import OnnxflipError
from onnxflip.faults import FaultModel
from onnxflip.graph.config import InjectionConfig
from onnxflip.graph.formats import native_float_type
from onnxflip.graph.inject import _run, plan_sites, resolve_config, rounding_passes, site_coverage, why_no_sites
from onnxflip.graph.passes import LowerFloat64Pass, StoreInFormatPass
from onnxflip.graph.passes.insert_probes import InsertProbesPass, probe_input_names, probe_value_name
from onnxflip.graph.sites import DEFAULT_TARGETS, PER_SAMPLE_TARGETS, Selection, Site
from onnxflip.runtime.contract import ElementType, element_type
from onnxflip.runtime.session import bound_per_session, runtime_proto

__all__ = ["ProbeSite", "Probes", "insert_probes"]


@dataclass(frozen=True)
class ProbeSite:
    """A site whose stored elements can be overwritten: its name as ``inspect`` prints it, its target, element
    type and the bits a flip may hit; ``elements`` per sample for activations.

    An activation site is written by its probe (``inputs``) and shows its
    clean values as ``value_output``; a parameter site is the template's
    initializer ``stored_name``, whose stored array is ``value``.
    ``unprobed``: why the site cannot be written (None where it can).
    """

    index: int
    name: str
    target: str
    etype: ElementType
    mask: int
    elements: int | None
    value: np.ndarray | None = None
    stored_name: str | None = None
    unprobed: str | None = None

    @property
    def inputs(self) -> tuple[str, str]:
        return probe_input_names(self.index)

    @property
    def value_output(self) -> str:
        return probe_value_name(self.index)

    @property
    def bits(self) -> tuple[int, ...]:
        """The bit positions a flip may hit (0 = least significant)."""
        return tuple(b for b in range(self.etype.width) if self.mask >> b & 1)


@dataclass(frozen=True)
class Probes:
    """The probed model (activations), the template (parameters, as bytes) and the sites."""

    probed: ir.Model
    template: bytes
    sites: list[ProbeSite]


def insert_probes(model: ir.Model, *, format: str = "float32", compute: str | None = "native",
                  targets: Iterable[str] = DEFAULT_TARGETS, bits: str | int = "all", selection: Selection | None = None,
                  fold_batchnorm: bool = True) -> Probes:
    """The probed model, the template and the sites, in graph order; ``model`` is not changed."""
    config = InjectionConfig.build(format=format, compute=compute, targets=targets, fault=FaultModel(bits=bits), selection=selection,
                                   fold_batchnorm=fold_batchnorm)
    prepared, fmt, sites = plan_sites(model, config)
    if not sites:
        raise OnnxflipError(f"no site matches the selection (targets {', '.join(config.targets)}, format "
                            f"{config.format}): {why_no_sites(site_coverage(prepared, sites, config), config.selection)}")
    converted = _run([StoreInFormatPass(fmt, sites), *rounding_passes(fmt, resolve_config(config, model))], prepared)
    described = [_describe(converted.graph, index, site, bits) for index, site in enumerate(sites)]
    bound = {s.stored_name for s in described if s.stored_name is not None}
    lower = LowerFloat64Pass(refuse=native_float_type(model) == ir.DataType.FLOAT)
    template = bound_per_session(runtime_proto(_run([lower], converted.clone())), bound)
    written = [d for d in described if d.target in PER_SAMPLE_TARGETS and d.unprobed is None]
    _run([InsertProbesPass([sites[d.index] for d in written], indices=[d.index for d in written]),
          lower], converted)
    return Probes(converted, template, described)


def _describe(graph: ir.Graph, index: int, site: Site, bits: str | int) -> ProbeSite:
    etype = element_type(int(site.stored_dtype))
    stored = site.stored or site.value
    common = {"index": index, "name": site.name, "target": site.target, "etype": etype,
              "mask": field_mask(etype, bits), "elements": site.elements()}
    if stored.graph is not graph:
        return ProbeSite(**common, unprobed="inside an If/Loop/Scan body")
    if site.target in PER_SAMPLE_TARGETS:
        return ProbeSite(**common)
    if not stored.is_initializer() or stored.is_graph_input() or stored.const_value is None:
        return ProbeSite(**common, unprobed="fed at run time (a graph input), not stored in the model")
    return ProbeSite(**common, value=stored.const_value.numpy(), stored_name=stored.name)

"""Insert FlipBits where a model stores values.

The rewrite, for each site (see :mod:`onnxflip.graph.sites`), after
:class:`~onnxflip.graph.passes.store_in_format.StoreInFormatPass` has put the
value in its storage format::

    Relu(x)                 -> FlipBits(Relu(x), p01, p10, seed)
    Cast<fmt>(Relu(x))      -> FlipBits(Cast<fmt>(Relu(x)), ...)               (emulated formats)
    Conv(x, W, B)           -> Conv(x, FlipBits(W, ...), FlipBits(B, ...))
    Conv(x, DQ(Wq), DQ(Bq)) -> Conv(x, DQ(FlipBits(Wq, ...)), DQ(FlipBits(Bq, ...)))   (int8)
    DQ(Q(y))                -> DQ(FlipBits(Q(y), ...))                         (int8)

The probabilities and seed of each target class are graph inputs with
default values (initializers that are also inputs), named
``onnxflip_<target>_p01``, ``onnxflip_<target>_p10`` and
``onnxflip_<target>_seed``, so one ONNX Runtime session serves any sweep;
they are the only place the nodes take them from (no p01/p10/seed attribute).
FlipBits nodes inside If/Loop/Scan bodies read them from the outer scope.
The settings and the site rows are recorded as JSON under the
``onnxflip.injection`` metadata key.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx_ir as ir

from onnxflip.bits import field_mask, mask_to_attribute
from onnxflip.graph.config import METADATA_KEY, InjectionConfig, control_input_name
from onnxflip.graph.passes.store_in_format import take_over_output
from onnxflip.graph.sites import Site
from onnxflip.runtime.contract import DOMAIN, element_type

__all__ = ["InsertFlipBitsPass"]

logger = logging.getLogger(__name__)


class InsertFlipBitsPass(ir.passes.InPlacePass):
    """Insert FlipBits at the given sites of a prepared model (see :func:`onnxflip.graph.inject.plan_sites`)."""

    def __init__(self, config: InjectionConfig, sites: list[Site]) -> None:
        super().__init__()
        self.config = config
        self.sites = sites

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        rows = [self.describe(s) for s in self.sites]
        controls = {t: self._add_controls(graph, t) for t in self.config.targets}
        for stream, site in enumerate(self.sites):
            self._insert(site, controls.get(site.target), stream)
        graph.sort()
        model.opset_imports[DOMAIN] = 1
        model.metadata_props[METADATA_KEY] = json.dumps({"config": self.config.to_json(), "sites": rows})
        return ir.passes.PassResult(model, modified=bool(self.sites))

    def _add_controls(self, graph: ir.Graph, target: str) -> tuple[ir.Value, ir.Value, ir.Value]:
        fault = self.config.fault_model(target)
        values = []
        for what, array in (
            ("p01", np.array(fault.p01, dtype=np.float32)),
            ("p10", np.array(fault.p10, dtype=np.float32)),
            ("seed", np.array(fault.seed, dtype=np.int64)),
        ):
            name = control_input_name(target, what)
            value = ir.Value(name=name, shape=ir.Shape([]), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                             const_value=ir.tensor(array, name=name))
            graph.inputs.append(value)
            graph.register_initializer(value)
            values.append(value)
        return tuple(values)

    def _mask(self, site: Site) -> int:
        etype = element_type(int(site.stored_dtype))
        return field_mask(etype, self.config.fault_model(site.target).bits)

    def describe(self, site: Site) -> dict:
        etype = element_type(int(site.stored_dtype))
        return {
            "tensor": site.name,
            "target": site.target,
            "dtype": etype.name,
            "elements": site.elements(),
            "bits": etype.width,
            "mask": hex(self._mask(site)),
        }

    def _flipbits_node(self, site: Site, source: ir.Value, controls, stream: int) -> ir.Node:
        fault = self.config.fault_model(site.target)
        node = ir.node(
            "FlipBits",
            [source, *controls],
            {  # p01, p10 and seed are the control inputs only: an input takes precedence over an attribute
                "stream": stream,
                "bitmask": mask_to_attribute(self._mask(site)),
                "randomness": fault.randomness,
                "nonfinite": fault.nonfinite,
            },
            domain=DOMAIN,
            name=f"onnxflip/{site.target}/{site.name}",
        )
        out = node.outputs[0]
        out.name = f"{site.name}_flipped"
        out.dtype = source.dtype
        out.shape = source.shape
        return node

    def _insert(self, site: Site, controls, stream: int) -> None:
        value = site.stored or site.value
        uses = list(value.uses())
        flip = self._flipbits_node(site, value, controls, stream)
        value.graph.append(flip)
        result = flip.outputs[0]
        for user, index in uses:
            user.replace_input_with(index, result)
        if value.is_graph_output():
            take_over_output(value, result)

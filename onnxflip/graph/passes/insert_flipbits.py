"""Insert FlipBits where a model stores values.

The rewrite, for each site (see :mod:`onnxflip.graph.sites`), after
:class:`~onnxflip.graph.passes.store_in_format.StoreInFormatPass` has put the
value in its storage format::

    Relu(x)                 -> FlipBits(Relu(x), p01, p10, seed, s0, s1, stuck_seed)
    Cast<fmt>(Relu(x))      -> FlipBits(Cast<fmt>(Relu(x)), ...)               (emulated formats)
    Conv(x, W, B)           -> Conv(x, FlipBits(W, ...), FlipBits(B, ...))
    Conv(x, DQ(Wq), DQ(Bq)) -> Conv(x, DQ(FlipBits(Wq, ...)), DQ(FlipBits(Bq, ...)))   (int8)
    DQ(Q(y))                -> DQ(FlipBits(Q(y), ...))                         (int8)

The probabilities and seeds of each target class are graph inputs with
default values (initializers that are also inputs), named
``onnxflip_<target>_p01``, ``onnxflip_<target>_p10``,
``onnxflip_<target>_seed``, ``onnxflip_<target>_s0`` and
``onnxflip_<target>_s1`` (stuck-at probabilities), and
``onnxflip_<target>_stuck_seed`` (int64 vector, empty by default: the stuck
cells follow the seed; one element fed there keys them apart, so that
per-batch activation seeds can share one memory), so one ONNX Runtime
session serves any sweep; they are the only place the nodes take them from
(no p01/p10/seed/s0/s1 attribute).  FlipBits nodes inside If/Loop/Scan
bodies read them from the outer scope.  A target class whose fault model has
ECC also gets a graph output ``onnxflip_<target>_counts`` (int64[3]): the
words of that run read corrected, detected and silently wrong, summed over
its sites (:class:`onnxflip.faults.WordCounts` turns it into fractions).
The settings, the site rows and the coverage of the stored parameters
(:mod:`onnxflip.graph.coverage`) are the model's
:class:`~onnxflip.graph.record.InjectionRecord`.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxflip.bits import field_mask, mask_to_attribute
from onnxflip.faults import ecc_word, stored_words
from onnxflip.graph.config import InjectionConfig, control_input_name, counts_output_name
from onnxflip.graph.coverage import Coverage
from onnxflip.graph.passes.store_in_format import take_over_output
from onnxflip.graph.record import InjectionRecord
from onnxflip.graph.sites import Site
from onnxflip.runtime.contract import COUNT_NAMES, DOMAIN, INPUT_NAMES, OP_TYPE, ElementType, element_type

__all__ = ["InsertFlipBitsPass"]

logger = logging.getLogger(__name__)


class InsertFlipBitsPass(ir.passes.InPlacePass):
    """Insert FlipBits at the given sites of a prepared model (see :func:`onnxflip.graph.inject.plan_sites`)."""

    def __init__(self, config: InjectionConfig, sites: list[Site], coverage: Coverage | None = None) -> None:
        super().__init__()
        self.config = config
        self.sites = sites
        self.coverage = coverage

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        self.config.protection.check(self.config.format,
                                     {s.name: element_type(int(s.stored_dtype)).width for s in self.sites})
        rows = [self.describe(s) for s in self.sites]
        controls = {t: self._add_controls(graph, t) for t in self.config.targets}
        counts: dict[str, list[ir.Value]] = {}
        for stream, site in enumerate(self.sites):
            flip = self._insert(site, controls.get(site.target), stream)
            if len(flip.outputs) > 1:
                counts.setdefault(site.target, []).append(flip.outputs[1])
        for target, values in counts.items():
            self._add_counts_output(graph, target, values)
        graph.sort()
        model.opset_imports[DOMAIN] = 1
        InjectionRecord(self.config, rows, self.coverage).write(model)
        return ir.passes.PassResult(model, modified=bool(self.sites))

    def _add_controls(self, graph: ir.Graph, target: str) -> tuple[ir.Value, ...]:
        fault = self.config.fault_model(target)
        defaults = {
            "p01": np.array(fault.p01, dtype=np.float32),
            "p10": np.array(fault.p10, dtype=np.float32),
            "seed": np.array(fault.seed, dtype=np.int64),
            "s0": np.array(fault.s0, dtype=np.float32),
            "s1": np.array(fault.s1, dtype=np.float32),
            "stuck_seed": np.zeros(0, dtype=np.int64),  # empty: absent, the seed keys the stuck cells
        }
        values = []
        for what in INPUT_NAMES[1:]:  # the operator's control inputs, in its input order
            array = defaults[what]
            name = control_input_name(target, what)
            # Scalars, but stuck_seed is a vector: empty by default, one element when fed.
            shape = ir.Shape(array.shape) if array.ndim == 0 else ir.Shape([f"{name}_length"])
            value = ir.Value(name=name, shape=shape, type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                             const_value=ir.tensor(array, name=name))
            graph.inputs.append(value)
            graph.register_initializer(value)
            values.append(value)
        return tuple(values)

    @staticmethod
    def _add_counts_output(graph: ir.Graph, target: str, values: list[ir.Value]) -> None:
        """One graph output with the sum of the sites' word counts."""
        total = values[0]
        for i, value in enumerate(values[1:]):
            add = ir.node("Add", [total, value], name=f"onnxflip/{target}/counts_{i}")
            graph.append(add)
            total = add.outputs[0]
        total.name = counts_output_name(target)
        total.dtype = ir.DataType.INT64
        total.shape = ir.Shape([len(COUNT_NAMES)])
        graph.outputs.append(total)

    def _mask(self, site: Site) -> int:
        """The bits that may flip: the fault model's field, less the bits the protection keeps."""
        etype = element_type(int(site.stored_dtype))
        return field_mask(etype, self.config.fault_model(site.target).bits) & ~self.config.protection.mask(site.name)

    def describe(self, site: Site) -> dict:
        etype = element_type(int(site.stored_dtype))
        return {
            "tensor": site.name,
            "target": site.target,
            "dtype": etype.name,
            "elements": site.elements(),
            "bits": etype.width,
            "mask": hex(self._mask(site)),
            **self._ecc_description(site, etype),
        }

    def _ecc_description(self, site: Site, etype: ElementType) -> dict:
        """The stored words of a site protected by ECC (per sample for activations); nothing without ECC."""
        fault = self.config.fault_model(site.target)
        word = ecc_word(fault.ecc, etype)
        if word is None:
            return {}
        elements = site.elements()
        values, data_bits, check_bits = word
        return {"ecc": fault.ecc, "word_values": values, "codeword_bits": data_bits + check_bits,
                "words": None if elements is None else stored_words(fault.ecc, etype, elements)}

    def _flipbits_node(self, site: Site, source: ir.Value, controls, stream: int) -> ir.Node:
        fault = self.config.fault_model(site.target)
        node = ir.node(
            OP_TYPE,
            [source, *controls],
            {  # p01, p10, seed, s0 and s1 are the control inputs only: an input takes precedence over an attribute
                "stream": stream,
                "bitmask": mask_to_attribute(self._mask(site)),
                "randomness": fault.randomness,
                "nonfinite": fault.nonfinite,
                "ecc": fault.ecc,
                "on_detected": fault.on_detected,
            },
            num_outputs=1 if fault.ecc == "none" else 2,
            domain=DOMAIN,
            name=f"onnxflip/{site.target}/{site.name}",
        )
        out = node.outputs[0]
        out.name = f"{site.name}_flipped"
        out.dtype = source.dtype
        out.shape = source.shape
        if len(node.outputs) > 1:
            node.outputs[1].name = f"{site.name}_counts"
            node.outputs[1].dtype = ir.DataType.INT64
            node.outputs[1].shape = ir.Shape([len(COUNT_NAMES)])
        return node

    def _insert(self, site: Site, controls, stream: int) -> ir.Node:
        """Insert the site's FlipBits node and route the value's readers through it; returns the node."""
        value = site.stored or site.value
        uses = list(value.uses())
        flip = self._flipbits_node(site, value, controls, stream)
        value.graph.append(flip)
        result = flip.outputs[0]
        for user, index in uses:
            user.replace_input_with(index, result)
        if value.is_graph_output():
            take_over_output(value, result)
        return flip

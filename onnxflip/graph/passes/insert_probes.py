"""Insert a probe where a model stores values: a ScatterND that writes chosen elements, fed per run.

For each site (see :mod:`onnxflip.graph.sites`), after
:class:`~onnxflip.graph.passes.store_in_format.StoreInFormatPass` has put the
value in its storage format::

    Relu(x)        -> ScatterND(Relu(x), onnxflip_probe_<k>_indices, onnxflip_probe_<k>_updates)
    Conv(x, W, B)  -> Conv(x, ScatterND(W, ...), ScatterND(B, ...))
    DQ(Q(y))       -> DQ(ScatterND(Q(y), ...))                               (int8)

The indices (int64, ``(m, rank)``) and the updates (the stored element type,
``(m,)``) are graph inputs: fed empty, the probe writes nothing and the model
computes as it would clean; fed the flipped values of m chosen elements, it
stores exactly those (:mod:`onnxflip.campaign.sensitivity` flips one element
per sample in a run).  The stored value of an activation site in the main
graph is also a graph output, ``onnxflip_probe_<k>_value`` (bfloat16 cast to
float32, exactly), so that a clean run shows the values a flip starts from
(parameters are read from the model).
"""

from __future__ import annotations

import onnx_ir as ir

from onnxflip.graph.passes.store_in_format import take_over_output
from onnxflip.graph.sites import Site

__all__ = ["InsertProbesPass", "probe_input_names", "probe_value_name"]


def probe_input_names(index: int) -> tuple[str, str]:
    """The graph inputs (indices, updates) of probe ``index``."""
    return f"onnxflip_probe_{index}_indices", f"onnxflip_probe_{index}_updates"


def probe_value_name(index: int) -> str:
    """The graph output with the stored value at probe ``index`` (activation sites of the main graph)."""
    return f"onnxflip_probe_{index}_value"


class InsertProbesPass(ir.passes.InPlacePass):
    """Insert a ScatterND probe at each site of a prepared model (see the module docstring)."""

    def __init__(self, sites: list[Site], *, indices: list[int] | None = None) -> None:
        super().__init__()
        self.sites = sites
        self.indices = list(range(len(sites))) if indices is None else indices  # the probes' numbers

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        for index, site in zip(self.indices, self.sites):
            self._insert(graph, index, site)
        graph.sort()
        return ir.passes.PassResult(model, modified=bool(self.sites))

    @staticmethod
    def _insert(graph: ir.Graph, index: int, site: Site) -> None:
        value = site.stored or site.value
        indices_name, updates_name = probe_input_names(index)
        indices = ir.Value(name=indices_name, shape=ir.Shape([f"{indices_name}_count", f"{indices_name}_rank"]),
                           type=ir.TensorType(ir.DataType.INT64))
        updates = ir.Value(name=updates_name, shape=ir.Shape([f"{indices_name}_count"]),
                           type=ir.TensorType(value.dtype))
        graph.inputs.extend([indices, updates])
        uses = list(value.uses())
        scatter = ir.node("ScatterND", [value, indices, updates], name=f"onnxflip/probe/{site.name}")
        result = scatter.outputs[0]
        result.name, result.dtype, result.shape = f"{site.name}_probed", value.dtype, value.shape
        value.graph.append(scatter)
        for user, position in uses:
            user.replace_input_with(position, result)
        if value.is_graph_output():
            take_over_output(value, result)
        if value.graph is graph:  # bfloat16, which NumPy cannot take from ONNX Runtime, as float32 (exact)
            shown = ir.DataType.FLOAT if value.dtype == ir.DataType.BFLOAT16 else value.dtype
            exposed = (ir.node("Cast", [value], {"to": int(shown)}, name=f"onnxflip/probe/{site.name}/value")
                       if shown != value.dtype else ir.node("Identity", [value], name=f"onnxflip/probe/{site.name}/value"))
            exposed.outputs[0].name = probe_value_name(index)
            exposed.outputs[0].dtype, exposed.outputs[0].shape = shown, value.shape
            graph.append(exposed)
            graph.outputs.append(exposed.outputs[0])

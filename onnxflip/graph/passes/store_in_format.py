"""Store values in an emulated format: the graph computes in float32, each stored value passes through the format.

    Relu(x)        -> Cast<f32>(Cast<fmt>(Relu(x)))          (an activation)
    Conv(x, W, B)  -> Conv(x, Cast<f32>(W_fmt), Cast<f32>(B_fmt))   (W_fmt: W converted, an initializer)

Each site's ``stored`` value is then the value in the format (``Cast<fmt>``'s
output, or ``W_fmt``), where :class:`InsertFlipBitsPass` puts its FlipBits.
A parameter that is also a graph input (overridable) is cast, not converted,
so feeding it keeps working.  A graph output keeps its name: the cast-back
value takes it.
"""

from __future__ import annotations

import onnx_ir as ir

from onnxflip.graph.formats import StorageFormat
from onnxflip.graph.sites import STORE_PREFIX, Site

__all__ = ["StoreInFormatPass", "take_over_output"]


def take_over_output(value: ir.Value, result: ir.Value, *, suffix: str = "_clean") -> None:
    """Make ``result`` the graph output ``value`` was, under the same name; ``value`` is renamed
    ``<name><suffix>``."""
    graph = value.graph
    name = value.name
    value.name = f"{name}{suffix}"
    result.name = name
    for i, out in enumerate(graph.outputs):
        if out is value:
            graph.outputs[i] = result


class StoreInFormatPass(ir.passes.InPlacePass):
    """Route every site of an emulated format through the format (see the module docstring)."""

    def __init__(self, fmt: StorageFormat, sites: list[Site]) -> None:
        super().__init__()
        self.fmt = fmt
        self.sites = sites

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if not self.fmt.emulated:
            return ir.passes.PassResult(model, modified=False)
        for site in self.sites:
            self._store(site)
        model.graph.sort()
        return ir.passes.PassResult(model, modified=bool(self.sites))

    def _store(self, site: Site) -> None:
        value = site.value
        graph = value.graph
        uses = list(value.uses())
        nodes: list[ir.Node] = []
        if value.is_initializer() and not value.is_graph_input():
            stored = self._converted(graph, value)
        else:
            cast = ir.node("Cast", [value], {"to": int(self.fmt.dtype)}, name=f"{STORE_PREFIX}{site.name}")
            stored = cast.outputs[0]
            stored.name, stored.dtype, stored.shape = f"{site.name}_{self.fmt.name}", self.fmt.dtype, value.shape
            nodes.append(cast)
        back = ir.node("Cast", [stored], {"to": int(value.dtype)}, name=f"onnxflip/cast_back/{site.name}")
        result = back.outputs[0]
        result.name, result.dtype, result.shape = f"{site.name}_stored_{value.dtype.name.lower()}", value.dtype, value.shape
        nodes.append(back)
        graph.extend(nodes)
        for user, index in uses:
            user.replace_input_with(index, result)
        if value.is_graph_output():
            take_over_output(value, result)
        if value.is_initializer() and not value.uses() and not value.is_graph_input():
            graph.initializers.pop(value.name)
        site.stored = stored
        site.stored_dtype = self.fmt.dtype

    def _converted(self, graph: ir.Graph, value: ir.Value) -> ir.Value:
        array = value.const_value.numpy().astype(self.fmt.numpy_dtype)
        name = f"{value.name}_{self.fmt.name}"
        stored = ir.Value(name=name, shape=value.shape, type=ir.TensorType(self.fmt.dtype),
                          const_value=ir.tensor(array, dtype=self.fmt.dtype, name=name))
        graph.register_initializer(stored)
        return stored

"""Compute a float32 model the way a format computes (``--compute native``).

float64: the graph computes in float64 (every float32 value, constant and
attribute becomes float64; a float32 graph input is cast on entry)::

    x: float32 -> Conv(x, W, B)    ->    Conv(Cast<f64>(x), W_f64, B_f64): float64

so that a stored value a flip makes 2^64..2^1023 stays finite, as in a float64
memory and arithmetic (float32 would make it inf, and inf - inf NaN).

float16, bfloat16: every op's float result is rounded to the format, the way
a GPU's float16 kernels (and PyTorch's bfloat16 ones on the CPU) compute:
accumulate in float32, write the result in the format::

    Conv(x, W)     -> Cast<f32>(Cast<fmt>(Conv(x, W)))        (a result not yet in the format)
    Relu(y)        -> Relu(y)                                 (y in the format: the result is too)

For one elementary operation (+, -, *, /, sqrt) float32's 24 significant bits
make the rounded float32 result the correctly rounded one of the format
(double rounding is innocuous from 2q + 2 bits: float16 has q = 11,
bfloat16 q = 8); a sum over many terms (Conv, MatMul, Gemm, ReduceMean) is
accumulated in float32, as cuDNN's, cuBLAS's and oneDNN's kernels do, and
overflows where the format does when its result is written.  Ops that only
select or move values (Relu, MaxPool, Reshape, ...) keep a value in the
format, so they are not rounded again.  Constants that are not sites are
rounded to the format in place; the graph inputs are rounded on entry.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxflip.graph.formats import StorageFormat
from onnxflip.graph.passes.store_in_format import take_over_output
from onnxflip.graph.sites import all_nodes

__all__ = ["ROUND_PREFIX", "ComputeInFloat64Pass", "RoundToFormatPass"]

ROUND_PREFIX = "onnxflip/round/"  # the Casts that write an op's result in the format

# Ops whose result is one of their float inputs' values (or a fixed number every format holds: the 0 of Relu
# and Pad): a result of inputs in the format is in the format.
_SELECTING_OPS = frozenset({
    "Relu", "MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin", "Max", "Min", "Neg", "Abs", "Sign", "Identity",
    "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather", "GatherND",
    "GatherElements", "Expand", "Tile", "Pad", "Dropout", "Where", "DepthToSpace", "SpaceToDepth", "Clip",
    "TopK",
})
_FIXED_TYPE_ATTRIBUTES = {"Cast": "to", "RandomNormal": "dtype", "RandomUniform": "dtype",
                          "RandomNormalLike": "dtype", "RandomUniformLike": "dtype", "EyeLike": "dtype", "Bernoulli": "dtype"}


def _graphs(graph: ir.Graph) -> list[ir.Graph]:
    """The graph and every If/Loop/Scan body in it, each once."""
    return [graph, *graph.subgraphs()]


def _values(graph: ir.Graph):
    for g in _graphs(graph):
        yield from g.inputs
        yield from g.initializers.values()
        for node in g:
            yield from node.outputs


def _as_float64(tensor: ir.TensorProtocol) -> ir.Tensor:
    return ir.tensor(tensor.numpy().astype(np.float64), name=tensor.name)


class ComputeInFloat64Pass(ir.passes.InPlacePass):
    """A float32 graph retyped to compute in float64 (see the module docstring)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        entries = [v for v in graph.inputs if v.dtype == ir.DataType.FLOAT and not v.is_initializer()]
        for value in dict.fromkeys(_values(graph)):
            if value.dtype != ir.DataType.FLOAT or value in entries:
                continue
            value.type = ir.TensorType(ir.DataType.DOUBLE)  # a new type: a clone of the model shares the old one
            if value.const_value is not None:
                value.const_value = _as_float64(value.const_value)
        for node in all_nodes(graph):
            self._retype_attributes(node)
        for value in entries:
            uses = list(value.uses())
            cast = ir.node("Cast", [value], {"to": int(ir.DataType.DOUBLE)}, name=f"onnxflip/float64/{value.name}")
            entered = cast.outputs[0]
            entered.name, entered.dtype, entered.shape = f"{value.name}_float64", ir.DataType.DOUBLE, value.shape
            for user, index in uses:
                user.replace_input_with(index, entered)
            graph.insert_before(graph.node(0), cast)
        return ir.passes.PassResult(model, modified=True)

    @staticmethod
    def _retype_attributes(node: ir.Node) -> None:
        name = _FIXED_TYPE_ATTRIBUTES.get(node.op_type)
        if name and name in node.attributes and node.attributes[name].value == int(ir.DataType.FLOAT):
            node.attributes[name] = ir.AttrInt64(name, int(ir.DataType.DOUBLE))
        for key, attr in list(node.attributes.items()):
            if attr.type == ir.AttributeType.TENSOR and attr.value.dtype == ir.DataType.FLOAT:
                node.attributes[key] = ir.AttrTensor(key, _as_float64(attr.value))
            elif node.op_type == "Constant" and key in ("value_float", "value_floats"):
                array = np.asarray(attr.value, np.float64)
                del node.attributes[key]
                node.attributes["value"] = ir.AttrTensor("value", ir.tensor(array))


class RoundToFormatPass(ir.passes.InPlacePass):
    """Every float32 result of an op rounded to a float16 or bfloat16 format (see the module docstring).  Run
    after :class:`~onnxflip.graph.passes.store_in_format.StoreInFormatPass`: its stored values are in the
    format already.  Idempotent: a value a Cast from the format wrote is in the format."""

    def __init__(self, fmt: StorageFormat) -> None:
        super().__init__()
        self.fmt = fmt

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for graph in _graphs(model.graph):
            modified |= self._round_graph(graph)
        return ir.passes.PassResult(model, modified=modified)

    def _round_graph(self, graph: ir.Graph) -> bool:
        fmt = self.fmt.numpy_dtype
        in_format: set[ir.Value] = set()
        for value in graph.initializers.values():
            if value.dtype == ir.DataType.FLOAT and value.const_value is not None:
                if not value.is_graph_input():  # an overridable constant is rounded where it is read, below
                    array = value.const_value.numpy()
                    value.const_value = ir.tensor(array.astype(fmt).astype(np.float32), name=value.name)
                    in_format.add(value)
        pending = [v for v in graph.inputs if v.dtype == ir.DataType.FLOAT and v not in in_format]
        in_format.update(pending)  # rounded on entry below: what reads them reads the format
        for node in list(graph):
            if not (node.name or "").startswith(ROUND_PREFIX):
                rounded = self._results_to_round(node, in_format)
                in_format.update(rounded)
                pending += rounded
        for value in pending:
            self._round(graph, value)
        return bool(pending) or bool(in_format)

    def _results_to_round(self, node: ir.Node, in_format: set[ir.Value]) -> list[ir.Value]:
        floats = [v for v in node.outputs if v.dtype == ir.DataType.FLOAT]
        if not floats:
            return []
        if node.op_type == "Cast" and node.inputs[0] is not None and node.inputs[0].dtype == self.fmt.dtype:
            in_format.update(floats)  # a value read back from the format (a site's cast back)
            return []
        if node.op_type == "Constant":
            return floats
        float_inputs = [v for v in node.inputs if v is not None and v.dtype == ir.DataType.FLOAT]
        if node.op_type in _SELECTING_OPS and all(v in in_format for v in float_inputs):
            in_format.update(floats)
            return []
        return [v for v in floats if not self._written_in_format(v)]

    def _written_in_format(self, value: ir.Value) -> bool:
        """Whether every read of the value is a Cast to the format (a site's store, or a rounding already)."""
        uses = list(value.uses())
        return bool(uses) and all(user.op_type == "Cast" and user.attributes.get_int("to") == int(self.fmt.dtype)
                                  for user, _ in uses)

    def _round(self, graph: ir.Graph, value: ir.Value) -> None:
        uses = list(value.uses())
        if not uses and not value.is_graph_output():
            return
        name = value.name or "value"
        down = ir.node("Cast", [value], {"to": int(self.fmt.dtype)}, name=f"{ROUND_PREFIX}{name}")
        down.outputs[0].name, down.outputs[0].dtype = f"{name}_{self.fmt.name}_rounded", self.fmt.dtype
        down.outputs[0].shape = value.shape
        back = ir.node("Cast", [down.outputs[0]], {"to": int(ir.DataType.FLOAT)}, name=f"{ROUND_PREFIX}{name}/back")
        result = back.outputs[0]
        result.name, result.dtype, result.shape = f"{name}_in_{self.fmt.name}", ir.DataType.FLOAT, value.shape
        producer = value.producer()
        if producer is not None:
            graph.insert_after(producer, [down, back])
        else:
            graph.insert_before(graph.node(0), [down, back])
        for user, index in uses:
            user.replace_input_with(index, result)
        if value.is_graph_output():
            take_over_output(value, result, suffix="_unrounded")

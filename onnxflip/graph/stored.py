"""The tensors a model stores, and the role each plays: what a parameter site can be.

A stored tensor is an initializer (of the main graph or of an If/Loop/Scan
body), after :class:`~onnxflip.graph.passes.stored_constants.LiftStoredConstantsPass`
has turned ``Constant`` and constant ``ConstantOfShape`` outputs into
initializers.  A tensor a node reads through a chain of views and casts
(``Transpose``, ``Identity``, ``Cast``, ``Reshape``, ``Squeeze``,
``Unsqueeze``, ``Flatten``, ``Expand``, and ``DequantizeLinear``'s data input) is the
tensor at the start of the chain: one memory, one site, however many nodes
read it (a tied LM head and its embedding table are one tensor).

The role of a stored tensor comes from where its readers use it:

* ``qparams``: a quantisation scale or zero point (the scale and zero-point
  inputs of QuantizeLinear, DequantizeLinear and the QLinear*/integer
  operators, and a weight scale multiplied with a DynamicQuantizeLinear
  scale);
* ``biases``: a bias input (Conv, ConvTranspose, Gemm, QLinearConv, QGemm,
  normalisation shifts, ...), or an Add whose other input a MatMul, Gemm or
  Conv computed (through casts and scalings, as dynamic quantisation writes);
* ``weights``: every other numeric parameter a node computes with: weight
  matrices and kernels, embedding tables (``Gather``'s data), normalisation
  scales, PRelu slopes, int8 weights of any quantised form.

A tensor that is no parameter gets a reason instead: shape and index data
(int64 and bool tensors, int32 read as indices, Resize scales), a scalar
operator constant (``Div(x, 8.0)``, GELU's 0.5), a tensor no node reads, and
numbers held in node attributes (``LinearClassifier`` coefficients), which
no operator can rewrite at run time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

__all__ = [
    "COMPUTE_OPS",
    "INTEGER_OPS",
    "PARAMETER_ROLES",
    "StoredTensor",
    "all_nodes",
    "downstream_of_compute",
    "quantised_form",
    "stored_behind",
    "stored_tensors",
]

PARAMETER_ROLES = ("weights", "biases", "qparams")

COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Further ops that compute with weights: the quantised forms, fused attention, recurrent layers, Einsum.
_MORE_COMPUTE_OPS = frozenset({"QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm",
                               "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "FusedMatMul", "Attention",
                               "QAttention", "LSTM", "GRU", "RNN", "Einsum"})
# Views and casts: a tensor read through them is still the tensor stored at the start of the chain.
_CHAIN_OPS = frozenset({"Transpose", "Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Expand",
                        "DequantizeLinear"})
# Ops that compute products with a weight: an Add on their result adds a bias.
_PRODUCT_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "MatMulInteger", "ConvInteger", "FusedMatMul",
                          "QLinearMatMul", "QLinearConv", "QGemm", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"})
# What an Add's other operand may pass through on its way from a product op (besides a Mul by a scale).
_RESCALE_OPS = frozenset({"Cast", "Reshape", "Transpose", "Identity", "QuantizeLinear", "DequantizeLinear"})
_BIAS_SLOTS = {
    "Conv": (2,), "ConvTranspose": (2,), "Gemm": (2,), "QLinearConv": (8,), "QGemm": (6,),
    "LayerNormalization": (2,), "InstanceNormalization": (2,), "GroupNormalization": (2,),
    "BatchNormalization": (2, 3), "SkipLayerNormalization": (3, 4), "Attention": (2,), "QAttention": (2,),
    "MatMulIntegerToFloat": (6,), "DynamicQuantizeMatMul": (4,), "BiasGelu": (1,), "FastGelu": (1,),
    "EmbedLayerNormalization": (6,), "LSTM": (3,), "GRU": (3,), "RNN": (3,),
}  # fmt: skip
# Input names of com.microsoft quantised operators (onnx.defs knows only the standard ones).
_CONTRIB_INPUTS = {
    "QGemm": ("A", "a_scale", "a_zero_point", "B", "b_scale", "b_zero_point", "C", "y_scale", "y_zero_point"),
    "QLinearAdd": ("A", "A_scale", "A_zero_point", "B", "B_scale", "B_zero_point", "C_scale", "C_zero_point"),
    "QLinearMul": ("A", "A_scale", "A_zero_point", "B", "B_scale", "B_zero_point", "C_scale", "C_zero_point"),
    "QLinearGlobalAveragePool": ("X", "x_scale", "x_zero_point", "y_scale", "y_zero_point"),
    "QLinearAveragePool": ("X", "x_scale", "x_zero_point", "y_scale", "y_zero_point"),
    "QLinearLeakyRelu": ("X", "X_scale", "X_zero_point", "Y_scale", "Y_zero_point"),
    "QLinearSigmoid": ("X", "X_scale", "X_zero_point", "Y_scale", "Y_zero_point"),
    "QLinearSoftmax": ("X", "X_scale", "x_zero_point", "y_scale", "y_zero_point"),
    "MatMulIntegerToFloat": ("A", "B", "a_scale", "b_scale", "a_zero_point", "b_zero_point", "bias"),
    "DynamicQuantizeMatMul": ("A", "B", "b_scale", "b_zero_point", "bias"),
}
_FLOAT_INDEX_SLOTS = {"Resize": (1, 2), "Upsample": (1,)}  # float inputs that say how, not what
_NORMALISATIONS = frozenset({"BatchNormalization", "LayerNormalization", "InstanceNormalization",
                             "GroupNormalization", "SkipLayerNormalization", "RMSNormalization"})
_STATE_SLOTS = {"LSTM": (5, 6), "GRU": (5,), "RNN": (5,)}  # a recurrent layer's initial hidden (and cell) state
_PARAMETER_SLOTS = {"PRelu": (1,)}  # a parameter even when it is a single number
# Operators of the integer quantised forms (QOperator, dynamic quantisation), beside QDQ's Q/DQ pairs.
INTEGER_OPS = frozenset({"QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear",
                         "QGemm", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearAveragePool",
                         "QLinearConcat", "QLinearLeakyRelu", "QLinearSigmoid", "QLinearSoftmax", "QAttention",
                         "MatMulIntegerToFloat", "DynamicQuantizeMatMul"})
_DATA_INTEGERS = frozenset({ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.INT16, ir.DataType.UINT16,
                            ir.DataType.INT4, ir.DataType.UINT4})


@dataclass(frozen=True)
class StoredTensor:
    """A tensor the model stores: its role (one of PARAMETER_ROLES), or why it is no parameter."""

    name: str
    dtype: str
    elements: int | None
    role: str | None
    reason: str = ""
    value: ir.Value | None = None  # the initializer; None for numbers held in an attribute
    reader: str = ""  # the name of the first node that reads it
    data: bool = True  # False for shapes, indices and masks: no parameter, however it is read

    @property
    def width(self) -> int:
        return ir.DataType[self.dtype].bitwidth


def all_nodes(graph: ir.Graph) -> Iterator[ir.Node]:
    """The nodes of a graph and of every subgraph (If, Loop, Scan bodies), a node before its bodies."""
    return iter(ir.traversal.RecursiveGraphIterator(graph))


def _subgraph_nodes(node: ir.Node) -> list[ir.Node]:
    nodes: list[ir.Node] = []
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            nodes += all_nodes(attr.value)
        elif attr.type == ir.AttributeType.GRAPHS:
            for body in attr.value:
                nodes += all_nodes(body)
    return nodes


def _is_compute(node: ir.Node) -> bool:
    """A Conv, Gemm, MatMul (in any quantised form too), recurrent layer or Einsum, or a Gather from a stored
    table (an embedding)."""
    if node.op_type in COMPUTE_OPS or node.op_type in _MORE_COMPUTE_OPS:
        return True
    return node.op_type == "Gather" and bool(node.inputs) and stored_behind(node.inputs[0]) is not None


def downstream_of_compute(graph: ir.Graph) -> set[ir.Value]:
    """Values computed, directly or not, from a Conv, Gemm, MatMul or embedding (a body that computes one counts)."""
    reached: set[ir.Value] = set()
    for node in all_nodes(graph):
        body = _subgraph_nodes(node)
        if (
            _is_compute(node)
            or any(v in reached for v in node.inputs if v is not None)
            or any(_is_compute(n) or any(v in reached for v in n.inputs if v is not None) for n in body)
        ):
            reached.update(node.outputs)
    return reached


def _is_stored(value: ir.Value | None) -> bool:
    return value is not None and value.is_initializer() and value.const_value is not None


def _is_chain(node: ir.Node, index: int) -> bool:
    return node.domain in ("", "ai.onnx") and node.op_type in _CHAIN_OPS and index == 0


def stored_behind(value: ir.Value | None) -> ir.Value | None:
    """The stored tensor a value is a view or cast of (itself when stored), or None when it is computed."""
    while value is not None and not _is_stored(value):
        producer = value.producer()
        if producer is None or not _is_chain(producer, 0) or not producer.inputs:
            return None
        value = producer.inputs[0]
    return value


def _readers(value: ir.Value) -> Iterator[tuple[ir.Node, int]]:
    """The (node, input index) pairs that use the value, looking through chains of views and casts."""
    for node, index in value.uses():
        if _is_chain(node, index):
            yield from _readers(node.outputs[0])
        else:
            yield node, index


def _input_name(node: ir.Node, index: int) -> str:
    """The formal name of a node's input (``w_scale``, ``B``), or "" where the schema is unknown."""
    names = _CONTRIB_INPUTS.get(node.op_type)
    if names is not None:
        return names[index] if index < len(names) else ""
    if node.op_type == "QLinearConcat":  # Y_scale, Y_zero_point, then (X, X_scale, X_zero_point) per input
        return ("Y_scale", "Y_zero_point")[index] if index < 2 else ("X", "X_scale", "X_zero_point")[(index - 2) % 3]
    if node.domain not in ("", "ai.onnx"):
        return ""
    try:
        inputs = onnx.defs.get_schema(node.op_type).inputs
    except onnx.defs.SchemaError:
        return ""
    if index < len(inputs):
        return inputs[index].name
    return inputs[-1].name if inputs and inputs[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic else ""


def _is_scale(value: ir.Value | None) -> bool:
    """A constant scale, or dynamic quantisation's product of scales (its DynamicQuantizeLinear's y_scale)."""
    if value is None:
        return False
    if stored_behind(value) is not None:
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Mul" and any(
        v is not None and v.producer() is not None and v.producer().op_type == "DynamicQuantizeLinear"
        and v.index() == 1 for v in producer.inputs)


def _from_product(value: ir.Value | None, depth: int = 4) -> bool:
    """Whether a value is a product op's result, possibly cast, reshaped or rescaled by a constant or dynamic
    quantisation's scale (MatMulInteger -> Cast -> Mul); not through a Mul by a computed value (a GELU)."""
    producer = value.producer() if value is not None else None
    if producer is None or depth == 0:
        return False
    if producer.op_type in _PRODUCT_OPS:
        return True
    if producer.op_type == "Mul":
        a, b = [*producer.inputs, None, None][:2]
        return (_is_scale(b) and _from_product(a, depth - 1)) or (_is_scale(a) and _from_product(b, depth - 1))
    return producer.op_type in _RESCALE_OPS and _from_product(producer.inputs[0], depth - 1)


def _scaled(value: ir.Value | None) -> bool:
    """Whether a value is something times a stored vector (a normalisation's scale, before its shift)."""
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type != "Mul":
        return False
    stored = [stored_behind(v) for v in producer.inputs]
    return any(v is not None and (_elements(v) or 0) > 1 for v in stored)


def _role(node: ir.Node, index: int, value: ir.Value) -> str | None:
    """The role of a stored tensor read at one input (None: it is no parameter there)."""
    op = node.op_type
    name = _input_name(node, index)
    if (op in ("QuantizeLinear", "DequantizeLinear") and index in (1, 2)) or "zero_point" in name or (
            name.endswith("_scale")):
        return "qparams"
    if op == "Mul" and any(v is not None and v is not value and v.producer() is not None
                           and v.producer().op_type == "DynamicQuantizeLinear" and v.index() == 1
                           for v in node.inputs):
        return "qparams"  # a weight's scale times the activations' dynamic scale
    if index in _FLOAT_INDEX_SLOTS.get(op, ()):
        return None
    if index in _BIAS_SLOTS.get(op, ()):
        return "biases"
    if op in ("Add", "QLinearAdd") and any(v is not value and (_from_product(v) or _scaled(v)) for v in node.inputs):
        return "biases"  # added to a product, or to a scaled normalisation (GroupNorm, a decomposed LayerNorm)
    if index in _STATE_SLOTS.get(op, ()):
        return None
    return "weights"


def _elements(value: ir.Value) -> int | None:
    shape = value.const_value.shape if value.const_value is not None else value.shape
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return math.prod(shape)


def _classify(value: ir.Value, downstream: set[ir.Value]) -> StoredTensor:
    dtype = value.dtype or ir.DataType.UNDEFINED
    elements = _elements(value)

    readers = list(_readers(value))

    def stored(role: str | None, reason: str = "", data: bool = True) -> StoredTensor:
        reader = readers[0][0].name or readers[0][0].op_type if readers else ""
        return StoredTensor(value.name or "", dtype.name, elements, role, reason, value, reader, data)

    if not dtype.is_floating_point() and dtype not in _DATA_INTEGERS and dtype != ir.DataType.INT32:
        return stored(None, f"shape, index or mask data ({dtype.name.lower()})", data=False)
    if not readers:
        return stored(None, "a graph output only" if _chain_is_output(value) else "read by no node")
    roles = [_role(node, index, value) for node, index in readers]
    if "qparams" in roles:
        return stored("qparams")
    if all(index in _STATE_SLOTS.get(node.op_type, ()) for node, index in readers):
        return stored(None, "a recurrent layer's initial state (a constant, not a parameter)")
    if dtype.is_floating_point() and all(r is None for r in roles):
        return stored(None, f"shape or index data ({readers[0][0].op_type} input {readers[0][1]})", data=False)
    if dtype == ir.DataType.INT32 and "biases" not in roles and not _dequantised(value):
        return stored(None, "shape or index data (int32)", data=False)
    if not _reaches_the_model(readers, downstream):
        return stored(None, "input preprocessing (it reaches the network only through its input)")
    role = "weights" if "weights" in roles else "biases"
    parameter_slot = any(index in _PARAMETER_SLOTS.get(node.op_type, ()) for node, index in readers)
    if elements == 1 and role == "weights" and not parameter_slot:
        return stored(None, "a single number, taken for an operator's constant (GELU's 0.5, a Div's 8.0)")
    return stored(role)


def _in_model(node: ir.Node, downstream: set[ir.Value]) -> bool:
    """Whether a node is part of the network proper (a compute op or a normalisation layer, after one, or
    dequantising a stored weight), not of the input preprocessing before it."""
    if _is_compute(node) or node.op_type in _NORMALISATIONS or any(v in downstream for v in node.inputs if v is not None):
        return True
    return node.op_type == "DequantizeLinear" and bool(node.inputs) and _is_stored(node.inputs[0])


def _reaches_the_model(readers: list[tuple[ir.Node, int]], downstream: set[ir.Value]) -> bool:
    """Whether a tensor read by ``readers`` takes part in the network proper: a reader is part of it, or
    what the tensor becomes meets a value the network computed (ViT's class token, expanded, then concatenated
    with the patch embeddings), or is a compute op's weight.  Input normalisation (``Sub(x, mean)`` then
    ``Mul(., inv_std)`` into the first Conv's data input) is not: it reaches the network only as its input."""
    if any(_in_model(node, downstream) for node, _ in readers):
        return True
    seen: set[ir.Node] = set()
    frontier = [node for node, _ in readers]
    while frontier:
        node = frontier.pop()
        if node in seen:
            continue
        seen.add(node)
        for out in node.outputs:
            for user, index in out.uses():
                if _is_compute(user):
                    if index != 0:
                        return True  # a weight computed from the tensor
                elif any(v in downstream for v in user.inputs if v is not None):
                    return True
                else:
                    frontier.append(user)
    return False


def _chain_is_output(value: ir.Value) -> bool:
    if value.is_graph_output():
        return True
    return any(_is_chain(node, index) and _chain_is_output(node.outputs[0]) for node, index in value.uses())


def _dequantised(value: ir.Value) -> bool:
    """Whether a DequantizeLinear reads the tensor as its data (an int32 bias in a QDQ graph)."""
    return any(node.op_type == "DequantizeLinear" and index == 0 for node, index in value.uses())


def _graphs(graph: ir.Graph) -> Iterator[ir.Graph]:
    yield graph
    yield from graph.subgraphs()


def _in_first_use_order(graph: ir.Graph) -> list[ir.Value]:
    """Every initializer, in the order the graph's compute nodes first read them (an Add's bias with the
    MatMul it follows); those read only by chains, or by nothing, after them in initializer order."""
    order: dict[ir.Value, None] = {}
    for node in ir.traversal.RecursiveGraphIterator(graph):
        if node.domain in ("", "ai.onnx") and node.op_type in _CHAIN_OPS:
            continue
        if node.op_type == "MatMul" and len(node.outputs[0].uses()) == 1:
            add, _ = next(iter(node.outputs[0].uses()))
            if add.op_type == "Add":
                order.update(dict.fromkeys(v for v in map(stored_behind, add.inputs) if v is not None))
        order.update(dict.fromkeys(v for v in map(stored_behind, node.inputs) if v is not None))
    for sub in _graphs(graph):
        order.update(dict.fromkeys(v for v in sub.initializers.values() if _is_stored(v)))
    return list(order)


def _attribute_tensors(graph: ir.Graph) -> Iterator[StoredTensor]:
    """Numbers a node holds in attributes (a classifier's coefficients): stored, but out of FlipBits' reach."""
    for node in ir.traversal.RecursiveGraphIterator(graph):
        if node.domain in ("", "ai.onnx"):
            continue
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.FLOATS and len(attr.value) > 1:
                dtype, size = "FLOAT", len(attr.value)
            elif attr.type == ir.AttributeType.TENSOR:
                dtype, size = attr.value.dtype.name, int(np.prod(attr.value.shape.numpy()))
            else:
                continue
            yield StoredTensor(f"{node.name or node.op_type}.{attr.name}", dtype, size, None,
                               f"held in an attribute of {node.op_type} ({node.domain}), which FlipBits cannot reach")


def quantised_form(graph: ir.Graph) -> str | None:
    """How a graph is quantised: "integer" (QOperator or dynamic quantisation: integer operators), "qdq"
    (QuantizeLinear/DequantizeLinear pairs around float operators), or None (not quantised)."""
    ops = {node.op_type for node in ir.traversal.RecursiveGraphIterator(graph)}
    if ops & INTEGER_OPS:
        return "integer"
    return "qdq" if ops & {"QuantizeLinear", "DequantizeLinear"} else None


def stored_tensors(graph: ir.Graph) -> list[StoredTensor]:
    """Every tensor the graph (and its bodies) stores, with its role or the reason it is no parameter."""
    downstream = downstream_of_compute(graph)
    return [_classify(v, downstream) for v in _in_first_use_order(graph)] + list(_attribute_tensors(graph))

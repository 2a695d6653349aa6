"""Turn FlipBits on fixed parameters into constants, for one trial.

    FlipBits(W, p01, p10, seed)   (W an initializer, randomness "fixed")
        -> W'   where W' = flip_bits(W, p01, p10, seed, stream, mask)

p01, p10, seed, s0, s1 and stuck_seed come from the node's inputs (fed
values, else their defaults), as the operator reads them; the rewriter
writes no such attribute.  A node's word counts (ECC) become a constant too.

The flipped constants are bit for bit what the FlipBits node would produce,
but ONNX Runtime then sees constant weights again and keeps the optimisations
that need them (prepacked GEMM, NCHWc convolutions, QDQ fusion into
QLinearConv).  Costs one flip of every parameter per trial instead of per run.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from onnxflip.errors import OnnxflipError
from onnxflip.faults import WordCounts
from onnxflip.runtime.contract import ATTRIBUTE_DEFAULTS, DOMAIN, INPUT_NAMES, element_type
from onnxflip.runtime.flip import flip_bits

__all__ = ["materialize_parameters"]


def _control(node: ir.Node, index: int, values: Mapping[str, np.ndarray]) -> float | int:
    """A control input's value: fed in ``values``, else the initializer's default."""
    value = node.inputs[index] if index < len(node.inputs) else None
    if value is not None and value.name in values:
        return np.asarray(values[value.name]).item()
    if value is None or value.const_value is None:
        raise OnnxflipError(f"FlipBits node {node.name!r} has no value for its {INPUT_NAMES[index]} input; "
                            "inject the model with onnxflip")
    return value.const_value.numpy().item()


def _optional_control(node: ir.Node, index: int, values: Mapping[str, np.ndarray]) -> int | None:
    """An optional scalar control (stuck_seed): its value, or None where it is absent or empty."""
    value = node.inputs[index] if index < len(node.inputs) else None
    if value is None:
        return None
    array = np.asarray(values[value.name]) if value.name in values else (
        value.const_value.numpy() if value.const_value is not None else np.zeros(0))
    return int(array.reshape(-1)[0]) if array.size else None


def _attribute(node: ir.Node, name: str):
    """An attribute of the node, or the operator's default for it."""
    attr = node.attributes.get(name)
    return attr.value if attr is not None else ATTRIBUTE_DEFAULTS[name]


def _flipped(node: ir.Node, values: Mapping[str, np.ndarray]) -> tuple[np.ndarray, WordCounts]:
    source = node.inputs[0].const_value.numpy()
    width = element_type(source.dtype).width
    mask = _attribute(node, "bitmask")
    return flip_bits(
        source,
        p01=float(np.float32(_control(node, 1, values))),
        p10=float(np.float32(_control(node, 2, values))),
        seed=int(_control(node, 3, values)),
        stream=int(_attribute(node, "stream")),
        bits="all" if mask is None else mask & ((1 << width) - 1),
        nonfinite=_attribute(node, "nonfinite"),
        s0=float(np.float32(_control(node, 4, values))) if len(node.inputs) > 4 else 0.0,
        s1=float(np.float32(_control(node, 5, values))) if len(node.inputs) > 5 else 0.0,
        stuck_seed=_optional_control(node, 6, values),
        ecc=_attribute(node, "ecc"),
        on_detected=_attribute(node, "on_detected"),
        return_counts=True,
    )


def _replace_with_constant(graph: ir.Graph, value: ir.Value, array: np.ndarray) -> None:
    """Replace every use of ``value`` (and its place among the graph outputs) by a constant of ``array``."""
    name = value.name
    value.name = f"{name}_computed"
    constant = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                        const_value=ir.tensor(array, name=name))
    graph.register_initializer(constant)
    value.replace_all_uses_with(constant, replace_graph_outputs=True)


def _is_fixed_parameter_flip(node: ir.Node) -> bool:
    if node.domain != DOMAIN or node.op_type != "FlipBits":
        return False
    source = node.inputs[0]
    return _attribute(node, "randomness") == "fixed" and source.is_initializer() and source.const_value is not None


def materialize_parameters(model: ir.Model, values: Mapping[str, np.ndarray] | None = None) -> ir.Model:
    """A copy of an injected model whose fixed parameter flips are constants.

    ``values`` gives control inputs (``onnxflip_weights_seed`` ...) as they
    would be fed to a session; missing ones take the model's defaults.
    """
    values = values or {}
    result = model.clone()
    graph = result.graph
    for node in list(graph):
        if not _is_fixed_parameter_flip(node):
            continue
        out = node.outputs[0]
        name = out.name
        array, counts = _flipped(node, values)
        constant = ir.Value(name=f"{name}_trial", shape=out.shape, type=out.type,
                            const_value=ir.tensor(array, dtype=out.dtype, name=f"{name}_trial"))
        graph.register_initializer(constant)
        out.replace_all_uses_with(constant)
        if len(node.outputs) > 1:  # the word counts, constant too
            _replace_with_constant(graph, node.outputs[1], counts.as_array())
        graph.remove(node, safe=True)
    for name, value in list(graph.initializers.items()):
        if not value.uses() and not value.is_graph_input() and not value.is_graph_output():
            graph.initializers.pop(name)
    return result

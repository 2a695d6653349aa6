"""Turn FlipBits on fixed parameters into constants, for one trial.

    FlipBits(W, p01, p10, seed)   (W an initializer, randomness "fixed")
        -> W'   where W' = flip_bits(W, p01, p10, seed, stream, mask)

The flipped constants are bit for bit what the FlipBits node would produce,
but ONNX Runtime then sees constant weights again and keeps the optimisations
that need them (prepacked GEMM, NCHWc convolutions, QDQ fusion into
QLinearConv).  Costs one flip of every parameter per trial instead of per run.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from onnxflip.runtime.contract import DOMAIN, element_type
from onnxflip.runtime.flip import flip_bits

__all__ = ["materialize_parameters"]


def _control(node: ir.Node, index: int, values: Mapping[str, np.ndarray]) -> float | int | None:
    if index >= len(node.inputs) or node.inputs[index] is None:
        return None
    value = node.inputs[index]
    if value.name in values:
        return np.asarray(values[value.name]).item()
    return value.const_value.numpy().item() if value.const_value is not None else None


def _flipped(node: ir.Node, values: Mapping[str, np.ndarray]) -> np.ndarray:
    source = node.inputs[0].const_value.numpy()
    attrs = node.attributes
    p01 = _control(node, 1, values)
    p10 = _control(node, 2, values)
    seed = _control(node, 3, values)
    width = element_type(source.dtype).width
    mask = attrs["bitmask"].as_int() & ((1 << width) - 1) if "bitmask" in attrs else "all"
    return flip_bits(
        source,
        p01=float(np.float32(p01 if p01 is not None else attrs["p01"].as_float())),
        p10=float(np.float32(p10 if p10 is not None else attrs["p10"].as_float())),
        seed=int(seed if seed is not None else attrs["seed"].as_int()),
        stream=attrs["stream"].as_int() if "stream" in attrs else 0,
        bits=mask,
        nonfinite=attrs["nonfinite"].as_string() if "nonfinite" in attrs else "keep",
    )


def _is_fixed_parameter_flip(node: ir.Node) -> bool:
    if node.domain != DOMAIN or node.op_type != "FlipBits":
        return False
    source = node.inputs[0]
    randomness = node.attributes["randomness"].as_string() if "randomness" in node.attributes else "fixed"
    return randomness == "fixed" and source.is_initializer() and source.const_value is not None


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
        array = _flipped(node, values)
        constant = ir.Value(name=f"{name}_trial", shape=out.shape, type=out.type,
                            const_value=ir.tensor(array, dtype=out.dtype, name=f"{name}_trial"))
        graph.register_initializer(constant)
        out.replace_all_uses_with(constant)
        graph.remove(node, safe=True)
    for name, value in list(graph.initializers.items()):
        if not value.uses() and not value.is_graph_input() and not value.is_graph_output():
            graph.initializers.pop(name)
    return result

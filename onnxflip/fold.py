"""Fold inference-mode BatchNormalization into the Conv before it.

    BatchNormalization(Conv(x, W, B), scale, bias, mean, var)
        -> Conv(x, W * s, (B - mean) * s + bias),   s = scale / sqrt(var + eps)

Only when the Conv output feeds nothing else and all parameters are
initializers.  ONNX Runtime fuses these anyway; folding first makes the
weights onnxflip targets the weights the hardware holds.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

__all__ = ["fold_batchnorm"]


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None or not value.is_initializer():
        return None
    return value.const_value.numpy()


def _try_fold(graph: ir.Graph, bn: ir.Node) -> bool:
    if bn.op_type != "BatchNormalization" or len(bn.outputs) != 1 or len(bn.inputs) != 5:
        return False
    conv = bn.inputs[0].producer() if bn.inputs[0] is not None else None
    if conv is None or conv.op_type != "Conv" or len(bn.inputs[0].uses()) != 1 or bn.inputs[0].is_graph_output():
        return False
    params = [_const(v) for v in bn.inputs[1:]]
    weight = _const(conv.inputs[1])
    if weight is None or any(p is None for p in params) or weight.dtype != np.float32:
        return False
    if len(conv.inputs) > 2 and conv.inputs[2] is not None and _const(conv.inputs[2]) is None:
        return False
    scale, bias, mean, var = (p.astype(np.float64) for p in params)
    eps = bn.attributes["epsilon"].as_float() if "epsilon" in bn.attributes else 1e-5
    s = scale / np.sqrt(var + eps)
    old_bias = _const(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] is not None else 0.0
    new_weight = (weight.astype(np.float64) * s.reshape(-1, *([1] * (weight.ndim - 1)))).astype(np.float32)
    new_bias = ((np.asarray(old_bias, np.float64) - mean) * s + bias).astype(np.float32)
    w_name = f"{conv.inputs[1].name}_bnfolded"
    b_name = f"{conv.name or w_name}_bias_bnfolded"
    w_value = ir.Value(name=w_name, shape=ir.Shape(new_weight.shape), type=ir.TensorType(ir.DataType.FLOAT),
                       const_value=ir.tensor(new_weight, name=w_name))
    b_value = ir.Value(name=b_name, shape=ir.Shape(new_bias.shape), type=ir.TensorType(ir.DataType.FLOAT),
                       const_value=ir.tensor(new_bias, name=b_name))
    graph.register_initializer(w_value)
    graph.register_initializer(b_value)
    conv.replace_input_with(1, w_value)
    if len(conv.inputs) > 2:
        conv.replace_input_with(2, b_value)
    else:
        conv.resize_inputs(3)
        conv.replace_input_with(2, b_value)
    out = bn.outputs[0]
    conv_out = conv.outputs[0]
    out.replace_all_uses_with(conv_out, replace_graph_outputs=True)
    if out.name and conv_out.is_graph_output():
        conv_out.name = out.name
    graph.remove(bn, safe=True)
    return True


def _drop_unused_initializers(graph: ir.Graph) -> None:
    for name, value in list(graph.initializers.items()):
        if not value.uses() and not value.is_graph_input() and not value.is_graph_output():
            graph.initializers.pop(name)


def fold_batchnorm(model: ir.Model) -> bool:
    """Fold every eligible Conv -> BatchNormalization pair in place; True if any was folded."""
    folded = False
    for node in list(model.graph):
        folded |= _try_fold(model.graph, node)
    if folded:
        _drop_unused_initializers(model.graph)
    return folded

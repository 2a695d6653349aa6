"""Fold inference-mode BatchNormalization into the Conv before it.

    BatchNormalization(Conv(x, W, B), scale, bias, mean, var)
        -> Conv(x, W * s, (B - mean) * s + bias),   s = scale / sqrt(var + eps)

Only when the Conv output feeds nothing else and all parameters are
initializers that are not graph inputs (an overridable input must keep
working, so such a pair is left as it is, with a log line saying why).  A
weight shared by several Convs gives each its own folded copy.  ONNX
Runtime fuses these anyway; folding first makes the weights onnxflip
targets the weights the hardware holds.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxflip.graph.sites import all_nodes

__all__ = ["FOLDED_KEY", "FoldBatchNormPass", "fold_batchnorm"]

FOLDED_KEY = "onnxflip.folded_batchnorms"  # graph meta: how many BatchNormalization nodes were folded

logger = logging.getLogger(__name__)


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None or not value.is_initializer():
        return None
    return value.const_value.numpy()


def _unique_name(graph: ir.Graph, name: str, suffix: str) -> str:
    """``name``, or ``name_<suffix>`` (then numbered) when the graph already has an initializer of that name."""
    candidate, n = name, 1
    while candidate in graph.initializers:
        candidate = f"{name}_{suffix}" if n == 1 else f"{name}_{suffix}{n}"
        n += 1
    return candidate


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.FLOAT),
                     const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value


def _overridable(values: list[ir.Value | None]) -> list[str]:
    return [v.name for v in values if v is not None and v.is_graph_input()]


def _try_fold(bn: ir.Node) -> bool:
    if bn.op_type != "BatchNormalization" or len(bn.outputs) != 1 or len(bn.inputs) != 5 or bn.inputs[0] is None:
        return False
    conv = bn.inputs[0].producer()
    if conv is None or conv.op_type != "Conv" or len(bn.inputs[0].uses()) != 1 or bn.inputs[0].is_graph_output():
        return False
    graph = conv.graph
    if graph is None or bn.graph is not graph:
        return False
    has_bias = len(conv.inputs) > 2 and conv.inputs[2] is not None
    params = [_const(v) for v in bn.inputs[1:]]
    weight = _const(conv.inputs[1])
    if weight is None or any(p is None for p in params) or weight.dtype != np.float32:
        return False
    if has_bias and _const(conv.inputs[2]) is None:
        return False
    inputs = _overridable([*bn.inputs[1:], *conv.inputs[1:]])
    if inputs:
        logger.warning("BatchNormalization %s not folded: %s %s graph input(s) a caller may override",
                       bn.name or bn.outputs[0].name, ", ".join(inputs), "is a" if len(inputs) == 1 else "are")
        return False
    scale, bias, mean, var = (p.astype(np.float64) for p in params)
    eps = bn.attributes["epsilon"].as_float() if "epsilon" in bn.attributes else 1e-5
    s = scale / np.sqrt(var + eps)
    old_bias = _const(conv.inputs[2]) if has_bias else 0.0
    new_weight = (weight.astype(np.float64) * s.reshape(-1, *([1] * (weight.ndim - 1)))).astype(np.float32)
    new_bias = ((np.asarray(old_bias, np.float64) - mean) * s + bias).astype(np.float32)
    w_name = _unique_name(graph, f"{conv.inputs[1].name}_bnfolded", conv.name or "conv")
    b_name = _unique_name(graph, f"{conv.name or w_name}_bias_bnfolded", "conv")
    conv.replace_input_with(1, _initializer(graph, w_name, new_weight))
    if not has_bias:
        conv.resize_inputs(3)
    conv.replace_input_with(2, _initializer(graph, b_name, new_bias))
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


class FoldBatchNormPass(ir.passes.InPlacePass):
    """Fold every eligible Conv -> BatchNormalization pair, in the main graph and in subgraphs."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graphs = set()
        folded = 0
        for node in list(all_nodes(model.graph)):
            graph = node.graph
            if _try_fold(node):
                graphs.add(graph)
                folded += 1
        for graph in graphs:
            _drop_unused_initializers(graph)
        model.graph.meta[FOLDED_KEY] = model.graph.meta.get(FOLDED_KEY, 0) + folded  # coverage says so
        return ir.passes.PassResult(model, modified=bool(graphs))


def fold_batchnorm(model: ir.Model) -> ir.Model:
    """A copy of ``model`` with its Conv -> BatchNormalization pairs folded; ``model`` is not changed."""
    return FoldBatchNormPass()(model.clone()).model

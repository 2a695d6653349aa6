"""Shape inference that leaves map-writing nodes alone.

    model -> ShapeInferencePass (with every ZipMap node set aside) -> model

onnx_ir holds no map type, so onnx's shape inference, which types a ZipMap
output (a scikit-learn classifier's sequence of {class: probability} maps),
would hand onnx_ir a model it cannot read.  The ZipMap nodes (and their
outputs' places among the graph outputs) are set aside while it runs, and put
back untyped: ONNX Runtime infers their type again.  Where onnx cannot infer
the shapes at all, the model is left as it is (its sites' sizes unknown), in
silence: ONNX Runtime says in one line whether it can run the model.
"""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

__all__ = ["InferShapesPass"]

_MAP_WRITERS = frozenset({"ZipMap"})


class InferShapesPass(ir.passes.InPlacePass):
    """onnx_ir's ShapeInferencePass on the model less its map-writing nodes."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        aside = [node for node in graph if node.op_type in _MAP_WRITERS]
        inputs = [list(node.inputs) for node in aside]  # removing a node disconnects its inputs
        outputs = list(graph.outputs)
        for node in aside:
            for i in reversed(range(len(graph.outputs))):
                if graph.outputs[i].producer() is node:
                    graph.outputs.pop(i)
            graph.remove(node, safe=True)
        quiet = logging.getLogger("onnx_ir.passes.common.shape_inference")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # a failed inference leaves the model as it is: shapes stay unknown
        try:
            modified = ShapeInferencePass()(model).modified
        finally:
            quiet.setLevel(level)
            graph.extend(aside)
            for node, values in zip(aside, inputs):
                for i, value in enumerate(values):
                    node.replace_input_with(i, value)
            graph.outputs.clear()
            graph.outputs.extend(outputs)
        return ir.passes.PassResult(model, modified=modified)

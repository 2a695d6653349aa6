"""Give every stored tensor an initializer, in a graph whose initializers are not inputs.

    Constant<value=T>()                    -> T                 (an initializer)
    ConstantOfShape<value=v>(S)            -> full(S, v)        (an initializer; S a constant shape)
    IR version < 4 (every initializer also a graph input) -> IR version 4, initializers only

Older exporters and the ONNX model zoo's classic models keep their weights in
``Constant`` nodes and their zero biases in ``ConstantOfShape``; as
initializers they are stored tensors like any other (see
:mod:`onnxflip.graph.stored`).  In IR version 3, initializers must also be
graph inputs, and ONNX Runtime then lets no run feed them: the controls
:class:`~onnxflip.graph.passes.insert_flipbits.InsertFlipBitsPass` adds as
inputs with defaults could not be fed, so the working copy moves to IR 4,
where they can (the model computes the same: in IR 3 the initializers could
not be overridden either).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass, RemoveInitializersFromInputsPass

from onnxflip.graph.sites import all_nodes

__all__ = ["FIRST_IR_WITHOUT_INITIALIZER_INPUTS", "LiftStoredConstantsPass"]

logger = logging.getLogger(__name__)

FIRST_IR_WITHOUT_INITIALIZER_INPUTS = 4


class LiftStoredConstantsPass(ir.passes.InPlacePass):
    """Constant and constant ConstantOfShape outputs become initializers; IR < 4 becomes IR 4."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        if model.ir_version < FIRST_IR_WITHOUT_INITIALIZER_INPUTS:
            logger.info("IR version %d: initializers are not graph inputs from IR version %d on",
                        model.ir_version, FIRST_IR_WITHOUT_INITIALIZER_INPUTS)
            model.ir_version = FIRST_IR_WITHOUT_INITIALIZER_INPUTS
            RemoveInitializersFromInputsPass()(model)
            modified = True
        modified |= LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model).modified
        for node in list(all_nodes(model.graph)):
            if node.op_type == "ConstantOfShape" and node.domain in ("", "ai.onnx"):
                modified |= _try_lift_constant_of_shape(node)
        return ir.passes.PassResult(model, modified=modified)


def _try_lift_constant_of_shape(node: ir.Node) -> bool:
    shape = node.inputs[0] if node.inputs else None
    out = node.outputs[0]
    if shape is None or shape.const_value is None or not shape.is_initializer() or out.is_graph_output():
        return False
    attr = node.attributes.get("value")
    fill = attr.as_tensor().numpy().reshape(-1) if attr is not None else np.zeros(1, np.float32)
    array = np.full(tuple(int(d) for d in shape.const_value.numpy().reshape(-1)), fill[0], dtype=fill.dtype)
    name = out.name or f"{node.name}_value"
    out.name = f"{name}_computed"
    lifted = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                      const_value=ir.tensor(array, name=name))
    node.graph.register_initializer(lifted)
    out.replace_all_uses_with(lifted)
    node.graph.remove(node, safe=True)
    return True

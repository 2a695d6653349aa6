"""Which ops ONNX Runtime's CPU provider has a kernel for, in a given element type: asked of ONNX Runtime itself.

A one-node model of the op, its inputs in the types the node reads, is
loaded into a CPU session; a load that fails for want of a kernel answers
no.  Answers are cached per (domain, op type, opset, input types): the
provider's kernels are registered by type (the node's attributes come along, since a model without
a required one does not load).
"""

from __future__ import annotations

import functools

import onnx
import onnx_ir as ir
import onnxruntime as ort

__all__ = ["has_cpu_kernel"]


def has_cpu_kernel(node: ir.Node, opset: int) -> bool:
    """Whether ONNX Runtime's CPU provider runs ``node`` in the types its inputs and outputs have."""
    inputs = tuple(int(v.dtype) if v is not None and v.dtype is not None else 0 for v in node.inputs)
    known = next((t for t in inputs if t), 0)  # an output of unknown type: the type of the first typed input
    outputs = tuple(int(v.dtype) if v.dtype is not None else known for v in node.outputs)
    if 0 in outputs or any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
                           for a in node.attributes.values()):
        return True  # nothing to ask by type: ONNX Runtime says at load time
    attributes = tuple(ir.serde.serialize_attribute(a).SerializeToString() for a in node.attributes.values())
    return _probe(node.domain or "", node.op_type, opset, inputs, outputs, attributes)


@functools.cache
def _probe(domain: str, op_type: str, opset: int, inputs: tuple[int, ...], outputs: tuple[int, ...],
           attributes: tuple[bytes, ...]) -> bool:
    """A load that fails for another reason than a missing kernel is no answer: yes."""
    names = [f"x{i}" if t else "" for i, t in enumerate(inputs)]
    graph_inputs = [onnx.helper.make_tensor_value_info(n, t, None) for n, t in zip(names, inputs) if t]
    node = onnx.helper.make_node(op_type, names, [f"y{i}" for i in range(len(outputs))], domain=domain)
    for data in attributes:
        node.attribute.add().ParseFromString(data)
    graph = onnx.helper.make_graph([node], "probe", graph_inputs,
                                   [onnx.helper.make_tensor_value_info(f"y{i}", t, None) for i, t in enumerate(outputs)])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(domain, opset)], ir_version=9)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors share no base class
        return "NOT_IMPLEMENTED" not in str(exc)
    return True

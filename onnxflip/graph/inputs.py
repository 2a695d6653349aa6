"""What a graph reads: defined inputs, and the batch dimension of its input tensors.

``check_graph`` refuses a node input that names no tensor (one line instead
of an error deep in shape inference).  ``batch_dimension`` reads the batch
size a model was exported with: ``torch.onnx.export`` writes a fixed batch
of 1 unless told otherwise, and such a model can only be fed batches of that
size (quantisation and evaluation batch accordingly).
"""

from __future__ import annotations

import onnx_ir as ir

from onnxflip.errors import OnnxflipError
from onnxflip.graph.sites import all_nodes

__all__ = ["batch_dimension", "check_graph", "data_inputs"]


def check_graph(model: ir.Model) -> None:
    """Refuse a graph whose nodes read tensors that no input, initializer or node defines."""
    missing: dict[str, str] = {}
    for node in all_nodes(model.graph):
        for value in node.inputs:
            if value is not None and value.producer() is None and value.graph is None and value.name:
                missing.setdefault(value.name, node.name or node.op_type)
    if missing:
        name, node = next(iter(missing.items()))
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise OnnxflipError(f"node {node} reads tensor {name!r}, which no input, initializer or node defines{more}")


def data_inputs(model: ir.Model) -> list[ir.Value]:
    """The graph inputs a caller must feed (not the initializers that are also inputs)."""
    return [v for v in model.graph.inputs if not v.is_initializer()]


def batch_dimension(model: ir.Model) -> int | None:
    """The fixed batch size of the model's data inputs, or None when it is dynamic (or there is no batch axis).

    Raises OnnxflipError when the inputs disagree on a fixed batch size.
    """
    fixed = set()
    for value in data_inputs(model):
        shape = value.shape
        if shape is None or len(shape) == 0:
            continue
        first = shape[0]
        if isinstance(first, int):
            fixed.add(first)
        else:
            return None
    if len(fixed) > 1:
        raise OnnxflipError(f"the model's inputs have different fixed batch sizes: {sorted(fixed)}")
    return fixed.pop() if fixed else None

"""float64 ops that ONNX Runtime's CPU provider has no kernel for, written in float64 ops that it has.

    Conv(x, W, B)          -> Reshape(MatMul(Reshape(Transpose(W)), Reshape(Concat(Slice(Pad(x))...)))) + B
                              (im2col: one slice of the padded input per kernel tap, one float64 GEMM)
    Conv(x, W, B), depthwise -> sum over taps of Slice(Pad(x)) * W[:, :, i, j] + B
    Conv, group g          -> Concat over groups of the group's im2col Conv
    GlobalAveragePool(x)   -> ReduceMean(x, spatial axes, keepdims)
    AveragePool(x)         -> sum over taps of Slice(Pad(x)) / taps       (no padding, or padding counted)
    HardSigmoid(x)         -> Clip(x * alpha + beta, 0, 1)
    HardSwish(x)           -> x * Clip(x / 6 + 1/2, 0, 1)

Every rewrite computes the op's own arithmetic in float64 (its sums in
another order: they differ from a float64 kernel's in the last bits only).
The ops are asked of ONNX Runtime (:mod:`onnxflip.runtime.kernels`): one it
runs in float64 is left as it is, and a float64 op it cannot run and that has
no rewrite here is refused in one line, naming the op.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx_ir as ir

from onnxflip.errors import OnnxflipError
from onnxflip.runtime.kernels import has_cpu_kernel

__all__ = ["LowerFloat64Pass"]

_INT64_MAX = np.iinfo(np.int64).max
_MIN_OPSET = 13  # Slice, Pad, Split and ReduceSum take their parameters as inputs from here on


class _Writer:
    """Writes the nodes of one rewrite before the node it replaces, naming them after it."""

    def __init__(self, graph: ir.Graph, node: ir.Node) -> None:
        self.graph, self.node, self.nodes = graph, node, []
        self.prefix = f"onnxflip/lowered/{node.name or node.outputs[0].name or node.op_type}"
        self._count = itertools.count()

    def const(self, array) -> ir.Value:
        array = np.asarray(array)
        name = f"{self.prefix}/c{next(self._count)}"
        value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                         const_value=ir.tensor(array, name=name))
        self.graph.register_initializer(value)
        return value

    def op(self, op_type: str, inputs, attributes=None, *, dtype: ir.DataType = ir.DataType.DOUBLE) -> ir.Value:
        node = ir.node(op_type, inputs, attributes or {}, name=f"{self.prefix}/{op_type}{next(self._count)}")
        node.outputs[0].name = node.name
        node.outputs[0].dtype = dtype
        self.nodes.append(node)
        return node.outputs[0]

    def dims(self, value: ir.Value, start: int, end: int) -> ir.Value:
        """Dimensions start..end - 1 of a value's shape, at run time."""
        shape = self.op("Shape", [value], dtype=ir.DataType.INT64)
        return self.op("Slice", [shape, self.ints([start]), self.ints([end]), self.ints([0])], dtype=ir.DataType.INT64)

    def ints(self, values) -> ir.Value:
        return self.const(np.asarray(values, np.int64))

    def double(self, value: float) -> ir.Value:
        return self.const(np.asarray(value, np.float64))


def _spatial(value: ir.Value, op: str) -> int:
    if value.shape is None or len(value.shape) != 4:
        raise OnnxflipError(f"--compute native: a float64 {op} is written in float64 ops only for 2-D images "
                            f"(a rank-4 input of known rank); this one's input has shape {value.shape}; use "
                            "--compute float32")
    return 2


def _pads(node: ir.Node, x: ir.Value, kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    """[top, left, bottom, right] as the node's pads or auto_pad give them."""
    auto = node.attributes.get_string("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return list(node.attributes.get_ints("pads", [0, 0, 0, 0]))
    if auto == "VALID":
        return [0, 0, 0, 0]
    sizes = [x.shape[2], x.shape[3]]
    if not all(isinstance(s, int) for s in sizes):
        raise OnnxflipError(f"--compute native: a float64 {node.op_type} with auto_pad {auto} needs the input's "
                            "height and width; they are not fixed here; use --compute float32")
    before, after = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        before.append(small if auto == "SAME_UPPER" else large)
        after.append(large if auto == "SAME_UPPER" else small)
    return before + after


def _taps(w: _Writer, x: ir.Value, kernel, strides, dilations, pads) -> list[ir.Value]:
    """The padded input read once per kernel tap (i, j), strided: each (N, C, Ho, Wo)."""
    if list(kernel) == [1, 1] and list(strides) == [1, 1] and not any(pads):
        return [x]  # a pointwise kernel reads the input as it is
    if any(pads):
        x = w.op("Pad", [x, w.ints([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]])])
    taps = []
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    for i in range(kh):
        for j in range(kw):
            ends = [-(dh * (kh - 1 - i)) or _INT64_MAX, -(dw * (kw - 1 - j)) or _INT64_MAX]
            taps.append(w.op("Slice", [x, w.ints([i * dh, j * dw]), w.ints(ends), w.ints([2, 3]), w.ints([sh, sw])]))
    return taps


def _sum(w: _Writer, terms: list[ir.Value]) -> ir.Value:
    return terms[0] if len(terms) == 1 else w.op("Sum", terms)


def _im2col(w: _Writer, taps: list[ir.Value], weight: ir.Value, channels: int, outputs: int, kernel) -> ir.Value:
    """(M, taps * C) filters times the (N, taps * C, Ho * Wo) columns: (N, M, Ho, Wo), without a transpose of
    the activations."""
    cols = taps[0] if len(taps) == 1 else w.op("Concat", taps, {"axis": 1})  # channel tap * C + c
    filters = w.op("Reshape", [w.op("Transpose", [weight], {"perm": [0, 2, 3, 1]}),
                               w.ints([outputs, kernel[0] * kernel[1] * channels])])
    flat = w.op("Reshape", [cols, w.ints([0, kernel[0] * kernel[1] * channels, -1])])
    shape = w.op("Concat", [w.dims(cols, 0, 1), w.ints([outputs]), w.dims(cols, 2, 4)], {"axis": 0},
                 dtype=ir.DataType.INT64)
    return w.op("Reshape", [w.op("MatMul", [filters, flat]), shape])


def _conv(w: _Writer, node: ir.Node) -> ir.Value:
    x, weight = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    _spatial(x, "Conv")
    if weight.shape is None or not all(isinstance(d, int) for d in weight.shape) or len(weight.shape) != 4:
        raise OnnxflipError(f"--compute native: the float64 Conv {node.name!r} needs a weight of fixed shape; use "
                            "--compute float32")
    outputs, per_group, kh, kw = weight.shape
    group = node.attributes.get_int("group", 1)
    kernel = [kh, kw]
    strides = list(node.attributes.get_ints("strides", [1, 1]))
    dilations = list(node.attributes.get_ints("dilations", [1, 1]))
    taps = _taps(w, x, kernel, strides, dilations, _pads(node, x, kernel, strides, dilations))
    if group == 1:
        y = _im2col(w, taps, weight, per_group, outputs, kernel)
    elif per_group == 1 and outputs == group:  # depthwise: one filter per channel
        terms = []
        for index, (i, j) in enumerate(itertools.product(range(kh), range(kw))):
            tap_weight = w.op("Slice", [weight, w.ints([i, j]), w.ints([i + 1, j + 1]), w.ints([2, 3])])
            terms.append(w.op("Mul", [taps[index], w.op("Reshape", [tap_weight, w.ints([1, outputs, 1, 1])])]))
        y = _sum(w, terms)
    else:
        per_out = outputs // group
        parts = []
        for g in range(group):
            group_taps = [w.op("Slice", [t, w.ints([g * per_group]), w.ints([(g + 1) * per_group]), w.ints([1])])
                          for t in taps]
            group_weight = w.op("Slice", [weight, w.ints([g * per_out]), w.ints([(g + 1) * per_out]), w.ints([0])])
            parts.append(_im2col(w, group_taps, group_weight, per_group, per_out, kernel))
        y = w.op("Concat", parts, {"axis": 1})
    if bias is not None:
        y = w.op("Add", [y, w.op("Reshape", [bias, w.ints([1, outputs, 1, 1])])])
    return y


def _global_average_pool(w: _Writer, node: ir.Node, opset: int) -> ir.Value:
    x = node.inputs[0]
    _spatial(x, "GlobalAveragePool")
    if opset >= 18:
        return w.op("ReduceMean", [x, w.ints([2, 3])], {"keepdims": 1})
    return w.op("ReduceMean", [x], {"axes": [2, 3], "keepdims": 1})


def _average_pool(w: _Writer, node: ir.Node) -> ir.Value:
    x = node.inputs[0]
    _spatial(x, "AveragePool")
    kernel = list(node.attributes.get_ints("kernel_shape"))
    strides = list(node.attributes.get_ints("strides", [1, 1]))
    dilations = list(node.attributes.get_ints("dilations", [1, 1]))
    pads = _pads(node, x, kernel, strides, dilations)
    if node.attributes.get_int("ceil_mode", 0) or (any(pads) and not node.attributes.get_int("count_include_pad", 0)):
        raise OnnxflipError(f"--compute native: the float64 AveragePool {node.name!r} (ceil_mode, or padding not "
                            "counted) has no float64 kernel on the CPU and no rewrite here; use --compute float32")
    return w.op("Div", [_sum(w, _taps(w, x, kernel, strides, dilations, pads)), w.double(kernel[0] * kernel[1])])


def _hard_sigmoid(w: _Writer, x: ir.Value, alpha: float, beta: float) -> ir.Value:
    return w.op("Clip", [w.op("Add", [w.op("Mul", [x, w.double(alpha)]), w.double(beta)]), w.double(0.0),
                         w.double(1.0)])


class LowerFloat64Pass(ir.passes.InPlacePass):
    """Write the float64 ops ONNX Runtime's CPU provider lacks in float64 ops it has (see the module docstring).

    ``refuse``: raise OnnxflipError for such an op without a rewrite (the graph computes in float64 because
    ``--compute native`` asked for it); else it is left as it is, for ONNX Runtime to refuse at load time (a
    model that computes in float64 itself).
    """

    def __init__(self, *, refuse: bool = True) -> None:
        super().__init__()
        self.refuse = refuse

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = model.opset_imports.get("", 0)
        graph = model.graph
        todo = [n for n in graph if (not n.domain or n.domain == "ai.onnx")
                and any(v is not None and v.dtype == ir.DataType.DOUBLE for v in (*n.inputs, *n.outputs))
                and not has_cpu_kernel(n, opset)]
        missing = sorted({n.op_type for n in todo if n.op_type not in _REWRITES})
        if not self.refuse:
            todo = [n for n in todo if n.op_type in _REWRITES]
        elif missing:
            raise OnnxflipError(f"--compute native: ONNX Runtime's CPU provider has no float64 kernel for "
                                f"{', '.join(missing)}, and onnxflip no float64 rewrite of it; use --compute float32 "
                                "(float64 stored, computed in float32)")
        if todo and opset < _MIN_OPSET:
            raise OnnxflipError(f"--compute native: writing float64 {todo[0].op_type} in other ops needs ONNX opset "
                                f"{_MIN_OPSET} or newer; the model uses opset {opset}; use --compute float32")
        for node in todo:
            self._lower(graph, node, opset)
        return ir.passes.PassResult(model, modified=bool(todo))

    @staticmethod
    def _lower(graph: ir.Graph, node: ir.Node, opset: int) -> None:
        w = _Writer(graph, node)
        result = _REWRITES[node.op_type](w, node, opset)
        graph.insert_before(node, w.nodes)
        old = node.outputs[0]
        name = old.name
        result.shape = old.shape
        for user, index in list(old.uses()):
            user.replace_input_with(index, result)
        for i, out in enumerate(graph.outputs):
            if out is old:
                graph.outputs[i] = result
        old.name = f"{name}_lowered"
        result.name = name
        graph.remove(node, safe=True)


_REWRITES = {
    "Conv": lambda w, node, opset: _conv(w, node),
    "GlobalAveragePool": _global_average_pool,
    "AveragePool": lambda w, node, opset: _average_pool(w, node),
    "HardSigmoid": lambda w, node, opset: _hard_sigmoid(w, node.inputs[0], node.attributes.get_float("alpha", 0.2),
                                                         node.attributes.get_float("beta", 0.5)),
    "HardSwish": lambda w, node, opset: w.op("Mul", [node.inputs[0], _hard_sigmoid(w, node.inputs[0], 1 / 6, 0.5)]),
}

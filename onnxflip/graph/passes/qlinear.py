"""Injected int8 QDQ graphs that keep ONNX Runtime's integer kernels, computing exactly.

FlipBits between QuantizeLinear and DequantizeLinear hides a Q -> DQ pair
from ONNX Runtime: it then fuses no ``DQ -> Conv -> Q`` into QLinearConv
(int8 activations are not allowed there on x86 CPUs without VNNI) and runs
every convolution in float.  Two passes restore the integer kernels:

1. :class:`StoreInt8AsUint8Pass` stores each int8 activation and weight as
   uint8 offset binary::

       DQ(FlipBits(Q(x, s, z)), s, z)  ->  DQ(FlipBits'(Q(x, s, z + 128)), s, z + 128)
       DQ(FlipBits(W), s, z)           ->  DQ(FlipBits'(W ^ 0x80), s, z + 128)

   ``Q_u8(x) = Q_s8(x) + 128``, whose bits are those of the int8 value with
   the sign bit inverted, and ``DQ`` gives the same float.  Bits 0-6 flip as
   they did; the sign bit's 0 -> 1 is the uint8 top bit's 1 -> 0, so
   FlipBits' is one node for bits 0-6 and one for bit 7 with p01 and p10
   (and the stuck-at pair s0, s1 where the operator has it) swapped, on its
   own stream.  A FlipBits node whose meaning depends on the stored bits in
   another way (an ECC word) keeps its tensor int8.  uint8 activations are what ONNX Runtime itself
   converts to on x86; uint8 weights make its kernels exact there: with int8
   weights and no VNNI, MLAS sums pairs of uint8 x int8 products in int16
   with saturation (the "U8S8 saturation" of ONNX Runtime's quantization
   documentation), which costs the shipped VGG-11 16 points of accuracy;
   uint8 x uint8 accumulates in int32.

2. :class:`NhwcIntegerConvPass` writes the convolutions and max pools of
   uint8 activations in the operator form ONNX Runtime itself runs them in,
   channels last, so the flips sit on the NHWC tensors between them::

       Q(Conv(DQ(x), DQ(W), DQ(B)))  ->  com.microsoft.QLinearConv<channels_last>(x', W, B)
       Q(MaxPool(DQ(x)))             ->  com.microsoft.NhwcMaxPool(x')

   with a Transpose where an NCHW tensor enters or leaves the chain.  The
   same values are stored and exposed to flips; a fixed seed draws its flips
   over the NHWC order of each tensor, not the NCHW order.

A unit that does not match (another op, a per-axis activation scale, a
bias whose scale is not the input scale times the weight scale) keeps the
QDQ form; ONNX Runtime fuses it where it can.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from onnxflip.bits import mask_to_attribute
from onnxflip.runtime.contract import DOMAIN, INPUT_NAMES, OP_TYPE, is_flipbits

__all__ = ["NhwcIntegerConvPass", "StoreInt8AsUint8Pass", "keep_integer_kernels"]

logger = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"
_TO_NHWC = (0, 2, 3, 1)
_TO_NCHW = (0, 3, 1, 2)
_SIGN = 0x80
# FlipBits attributes whose meaning does not depend on a bit's value, and those that do not when they hold the
# given value (no ECC word: its check bits are computed from the stored bits).  A tensor read by a node with any
# other stays int8, since the inverted sign bit would change that node's meaning.
_VALUE_FREE_ATTRIBUTES = frozenset({"stream", "bitmask", "randomness", "nonfinite", "on_detected"})
_VALUE_FREE_SETTINGS = {"ecc": "none"}  # on_detected then has no word to act on
# Inputs that hold a probability for 0 and for 1 (flip from 0 / from 1, stuck at 0 / at 1): the sign bit swaps them.
_PER_BIT_VALUE_PAIRS = (("p01", "p10"), ("s0", "s1"))

def _constant(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _is_value_free_flip(node: ir.Node) -> bool:
    """A FlipBits node whose flips treat a bit the same whatever its value, apart from the probability pairs."""
    if not is_flipbits(node) or len(node.outputs) != 1 or not 3 <= len(node.inputs) <= len(INPUT_NAMES):
        return False
    return all(name in _VALUE_FREE_ATTRIBUTES or _VALUE_FREE_SETTINGS.get(name) == attr.value
               for name, attr in node.attributes.items())


def _only_use(value: ir.Value) -> ir.Node | None:
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0][0]


def _producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op_type and node.domain == "" else None


class StoreInt8AsUint8Pass(ir.passes.InPlacePass):
    """Store the int8 activations and weights of a QDQ graph as uint8 offset binary (see the module docstring)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        self._twins: dict[str, ir.Value] = {}
        streams = [n.attributes["stream"].value for n in graph if is_flipbits(n) and "stream" in n.attributes]
        self._next_stream = 1 + max(streams, default=-1)
        converted = 0
        for weight in list(graph.initializers.values()):
            converted += self._try_weight(graph, weight)
        for node in list(graph):
            if node.op_type == "QuantizeLinear" and node.domain == "":
                converted += self._try_activation(graph, node)
        logger.info("stored %d int8 tensors as uint8", converted)
        return ir.passes.PassResult(model, modified=bool(converted))

    def _try_weight(self, graph: ir.Graph, weight: ir.Value) -> bool:
        array = _constant(weight)
        chain = self._chain(weight) if array is not None and weight.dtype == ir.DataType.INT8 else None
        if chain is None or weight.is_graph_input():
            return False
        name = f"{weight.name}_uint8"
        stored = ir.Value(name=name, shape=weight.shape, type=ir.TensorType(ir.DataType.UINT8),
                          const_value=ir.tensor(array.view(np.uint8) ^ np.uint8(_SIGN), name=name))
        graph.register_initializer(stored)
        weight.replace_all_uses_with(stored)
        graph.initializers.pop(weight.name)
        self._convert(graph, *chain)
        return True

    def _try_activation(self, graph: ir.Graph, quantize: ir.Node) -> bool:
        chain = self._chain(quantize.outputs[0])
        zero_point = quantize.inputs[2] if len(quantize.inputs) > 2 else None
        if chain is None or _constant(zero_point) is None:
            return False
        quantize.replace_input_with(2, self._uint8_zero_point(graph, zero_point))
        quantize.outputs[0].type = ir.TensorType(ir.DataType.UINT8)  # a new type: clones share type objects
        self._convert(graph, *chain)
        return True

    def _convert(self, graph: ir.Graph, flips: list[ir.Node], dequantizes: list[ir.Node]) -> None:
        for flip in flips:
            flip.outputs[0].type = ir.TensorType(ir.DataType.UINT8)
            self._swap_sign_bit(graph, flip)
        for dq in dequantizes:
            dq.replace_input_with(2, self._uint8_zero_point(graph, dq.inputs[2]))

    @staticmethod
    def _chain(value: ir.Value) -> tuple[list[ir.Node], list[ir.Node]] | None:
        """The FlipBits nodes and the DequantizeLinear readers of an int8 value, if those are all its readers."""
        if value.dtype != ir.DataType.INT8:
            return None
        flips, dequantizes, pending = [], [], [value]
        while pending:
            current = pending.pop()
            if current.is_graph_output() or not current.uses():
                return None
            for user, index in current.uses():
                if index == 0 and _is_value_free_flip(user):
                    flips.append(user)
                    pending.append(user.outputs[0])
                elif index == 0 and user.op_type == "DequantizeLinear" and user.domain == "" and (
                        _constant(user.inputs[2] if len(user.inputs) > 2 else None) is not None):
                    dequantizes.append(user)
                else:
                    return None
        return flips, dequantizes

    def _uint8_zero_point(self, graph: ir.Graph, zero_point: ir.Value) -> ir.Value:
        if zero_point.name not in self._twins:
            array = (_constant(zero_point).astype(np.int16) + 128).astype(np.uint8)
            name = f"{zero_point.name}_uint8"
            twin = ir.Value(name=name, shape=zero_point.shape, type=ir.TensorType(ir.DataType.UINT8),
                            const_value=ir.tensor(array, name=name))
            graph.register_initializer(twin)
            self._twins[zero_point.name] = twin
        return self._twins[zero_point.name]

    def _swap_sign_bit(self, graph: ir.Graph, flip: ir.Node) -> None:
        """Bit 7 of uint8 offset binary is the inverted int8 sign bit: its probabilities for 0 and 1 swap."""
        attr = flip.attributes.get("bitmask")
        mask = 0xFF if attr is None else attr.value & 0xFF
        low = mask & ~_SIGN
        if not mask & _SIGN:
            return
        swapped = _swapped_pairs(list(flip.inputs))
        if not low:
            for index, value in enumerate(swapped):
                flip.replace_input_with(index, value)
            return
        flip.attributes["bitmask"] = ir.AttrInt64("bitmask", mask_to_attribute(low))
        out = flip.outputs[0]
        uses = list(out.uses())
        attributes = {name: attr.value for name, attr in flip.attributes.items()}
        attributes.update(bitmask=mask_to_attribute(_SIGN), stream=self._next_stream)
        self._next_stream += 1
        sign = ir.node(OP_TYPE, [out, *swapped[1:]], attributes, domain=DOMAIN, name=f"{flip.name}/sign_bit")
        sign.outputs[0].name = f"{out.name}_sign_bit"
        sign.outputs[0].dtype, sign.outputs[0].shape = out.dtype, out.shape
        graph.insert_after(flip, sign)
        for user, index in uses:
            user.replace_input_with(index, sign.outputs[0])


def _swapped_pairs(inputs: list[ir.Value | None]) -> list[ir.Value | None]:
    """The inputs with each (for 0, for 1) probability pair the node has exchanged."""
    result = list(inputs)
    for zero, one in _PER_BIT_VALUE_PAIRS:
        if zero in INPUT_NAMES and one in INPUT_NAMES:
            i, j = INPUT_NAMES.index(zero), INPUT_NAMES.index(one)
            if max(i, j) < len(inputs):
                result[i], result[j] = inputs[j], inputs[i]
    return result


class NhwcIntegerConvPass(ir.passes.InPlacePass):
    """Write QDQ convolutions and max pools of uint8 activations as channels-last integer ops."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        self._nhwc: dict[ir.Value, ir.Value] = {}
        self._nchw: dict[ir.Value, ir.Value] = {}
        self._written: list[ir.Value] = []  # old values whose NHWC twin a converted unit or FlipBits writes
        self._replaced: set[ir.Node] = set()
        units = 0
        for node in list(graph):
            if node.op_type in ("Conv", "MaxPool") and node.domain == "":
                units += self._try_unit(graph, node)
            elif is_flipbits(node) and node.inputs[0] in self._nhwc:
                self._flip_in_nhwc(graph, node)
        if not units:
            return ir.passes.PassResult(model, modified=False)
        self._back_to_nchw(graph)
        model.opset_imports.setdefault(MS_DOMAIN, 1)
        RemoveUnusedNodesPass()(model)
        graph.sort()
        logger.info("wrote %d convolutions and max pools as channels-last integer ops", units)
        return ir.passes.PassResult(model, modified=True)

    # --- matching -----------------------------------------------------------------------------

    @staticmethod
    def _activation(value: ir.Value | None) -> tuple[ir.Node, ir.Value, ir.Value] | None:
        """(DQ, scale, zero point) of a uint8 NCHW activation read through a per-tensor DequantizeLinear."""
        dq = _producer(value, "DequantizeLinear")
        if dq is None or len(dq.inputs) < 3 or dq.inputs[0].dtype != ir.DataType.UINT8:
            return None
        scale, zero_point = _constant(dq.inputs[1]), _constant(dq.inputs[2])
        if scale is None or zero_point is None or scale.size != 1 or zero_point.size != 1:
            return None
        if dq.inputs[0].shape is None or len(dq.inputs[0].shape) != 4:
            return None
        return dq, dq.inputs[1], dq.inputs[2]

    @staticmethod
    def _output_quantize(node: ir.Node) -> ir.Node | None:
        quantize = _only_use(node.outputs[0])
        if quantize is None or quantize.op_type != "QuantizeLinear" or quantize.domain != "":
            return None
        if len(quantize.inputs) < 3 or quantize.outputs[0].dtype != ir.DataType.UINT8:
            return None
        scale, zero_point = _constant(quantize.inputs[1]), _constant(quantize.inputs[2])
        if scale is None or zero_point is None or scale.size != 1 or zero_point.size != 1:
            return None
        return quantize

    def _try_unit(self, graph: ir.Graph, node: ir.Node) -> int:
        source = self._activation(node.inputs[0])
        quantize = self._output_quantize(node)
        if source is None or quantize is None or len(node.outputs) != 1:
            return 0
        if node.op_type == "Conv":
            replacement = self._qlinear_conv(node, source, quantize)
        else:
            replacement = self._nhwc_max_pool(node, source, quantize)
        if replacement is None:
            return 0
        op_type, inputs, attributes = replacement
        nodes: list[ir.Node] = []
        inputs[0] = self._to_nhwc(source[0].inputs[0], nodes)
        new = ir.node(op_type, inputs, attributes, domain=MS_DOMAIN, name=f"onnxflip/nhwc/{node.name}")
        out = new.outputs[0]
        out.name = f"{quantize.outputs[0].name}_nhwc"
        out.dtype, out.shape = ir.DataType.UINT8, _permuted(quantize.outputs[0].shape, _TO_NHWC)
        nodes.append(new)
        graph.extend(nodes)
        self._nhwc[quantize.outputs[0]] = out
        self._written.append(quantize.outputs[0])
        self._replaced.update((node, quantize))  # its DequantizeLinear may have other readers
        return 1

    def _qlinear_conv(self, conv: ir.Node, source, quantize: ir.Node):
        _, x_scale, x_zero_point = source
        weight_dq = _producer(conv.inputs[1], "DequantizeLinear")
        if weight_dq is None or len(weight_dq.inputs) < 3 or weight_dq.inputs[0].dtype != ir.DataType.UINT8:
            return None
        w_scale, w_zero_point = _constant(weight_dq.inputs[1]), _constant(weight_dq.inputs[2])
        if w_scale is None or w_zero_point is None or len(weight_dq.inputs[0].shape or ()) != 4:
            return None
        if w_scale.size != 1 and weight_dq.attributes.get_int("axis", 1) != 0:
            return None
        inputs = [None, x_scale, x_zero_point, weight_dq.inputs[0], weight_dq.inputs[1], weight_dq.inputs[2],
                  quantize.inputs[1], quantize.inputs[2]]
        if len(conv.inputs) > 2 and conv.inputs[2] is not None:
            bias = self._bias(conv.inputs[2], _constant(x_scale) * w_scale)
            if bias is None:
                return None
            inputs.append(bias)
        attributes = {name: attr.value for name, attr in conv.attributes.items()}
        attributes["channels_last"] = 1
        return "QLinearConv", inputs, attributes

    @staticmethod
    def _bias(value: ir.Value, expected_scale: np.ndarray) -> ir.Value | None:
        """The int32 bias behind a DequantizeLinear whose scale is input scale x weight scale and zero point 0."""
        dq = _producer(value, "DequantizeLinear")
        if dq is None or dq.inputs[0].dtype != ir.DataType.INT32:
            return None
        scale = _constant(dq.inputs[1])
        zero_point = _constant(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] is not None else np.zeros(1)
        if scale is None or zero_point is None or zero_point.any():
            return None
        if not np.allclose(scale.astype(np.float64), expected_scale.astype(np.float64), rtol=1e-6, atol=0):
            return None
        return dq.inputs[0]

    @staticmethod
    def _nhwc_max_pool(pool: ir.Node, source, quantize: ir.Node):
        _, scale, zero_point = source
        same = (np.array_equal(_constant(scale), _constant(quantize.inputs[1]))
                and np.array_equal(_constant(zero_point), _constant(quantize.inputs[2])))
        if not same or pool.attributes.get_int("storage_order", 0) != 0:
            return None
        attributes = {name: attr.value for name, attr in pool.attributes.items() if name != "storage_order"}
        return "NhwcMaxPool", [None], attributes

    # --- layout -------------------------------------------------------------------------------

    def _to_nhwc(self, value: ir.Value, nodes: list[ir.Node]) -> ir.Value:
        if value not in self._nhwc:
            transpose = ir.node("Transpose", [value], {"perm": list(_TO_NHWC)}, name=f"onnxflip/to_nhwc/{value.name}")
            out = transpose.outputs[0]
            out.name, out.dtype, out.shape = f"{value.name}_nhwc", value.dtype, _permuted(value.shape, _TO_NHWC)
            nodes.append(transpose)
            self._nhwc[value] = out
        return self._nhwc[value]

    def _flip_in_nhwc(self, graph: ir.Graph, flip: ir.Node) -> None:
        """The same FlipBits node, on the NHWC twin of its input."""
        source = self._nhwc[flip.inputs[0]]
        attributes = {name: attr.value for name, attr in flip.attributes.items()}
        twin = ir.node(OP_TYPE, [source, *flip.inputs[1:]], attributes, domain=DOMAIN, name=flip.name)
        twin.outputs[0].name = f"{flip.outputs[0].name}_nhwc"
        twin.outputs[0].dtype, twin.outputs[0].shape = source.dtype, source.shape
        graph.append(twin)
        self._nhwc[flip.outputs[0]] = twin.outputs[0]
        self._written.append(flip.outputs[0])
        self._replaced.add(flip)

    def _back_to_nchw(self, graph: ir.Graph) -> None:
        """Readers outside the chain get the NHWC tensor transposed back; the replaced nodes become unused."""
        for value in self._written:
            for user, index in list(value.uses()):
                if not self._feeds_only_replaced(user):
                    user.replace_input_with(index, self._to_nchw(graph, value, self._nhwc[value]))

    def _feeds_only_replaced(self, node: ir.Node) -> bool:
        return node in self._replaced or (
            node.op_type == "DequantizeLinear" and all(u in self._replaced for u, _ in node.outputs[0].uses()))

    def _to_nchw(self, graph: ir.Graph, value: ir.Value, nhwc: ir.Value) -> ir.Value:
        if value not in self._nchw:
            transpose = ir.node("Transpose", [nhwc], {"perm": list(_TO_NCHW)}, name=f"onnxflip/to_nchw/{value.name}")
            out = transpose.outputs[0]
            out.name, out.dtype, out.shape = f"{value.name}_nchw", value.dtype, value.shape
            graph.append(transpose)
            self._nchw[value] = out
        return self._nchw[value]


def _permuted(shape: ir.Shape | None, perm: tuple[int, ...]) -> ir.Shape | None:
    if shape is None or len(shape) != len(perm):
        return None
    dims = list(shape)
    return ir.Shape([dims[i] for i in perm])


def keep_integer_kernels(model: ir.Model) -> ir.Model:
    """An injected int8 QDQ model rewritten so that ONNX Runtime keeps its integer kernels (in place)."""
    return ir.passes.Sequential(StoreInt8AsUint8Pass(), NhwcIntegerConvPass())(model).model

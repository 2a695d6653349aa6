"""Put FlipBits on the tensors ONNX Runtime holds in its blocked NCHWc layout, in the graph it optimised.

    ReorderOutput(xb) -> FlipBits(x) -> ReorderInput -> A      FlipBits<nchwc_block=b, channels=C>(xb) -> A
                                     -> B (plain)        =>                                          -> ReorderOutput -> B

ONNX Runtime's CPU convolutions and pools (domain ``com.microsoft.nchwc``)
read and write tensors in blocks of b channels (8 with AVX2, 16 with
AVX512), padded; between two of them an operator it does not know costs a
ReorderOutput before it and a ReorderInput after it.  FlipBits told the
layout draws every fault from the element's logical (NCHW) index, as it does
on the plain tensor, so the faults are the same, and never touches the
padding channels.  The blocked tensors get their shapes ([N, C rounded up to
b, H, W], which ONNX Runtime's own graph leaves out) so that its memory
planner lets FlipBits run in place.  A reader that needs the plain tensor
(or a graph output) keeps a ReorderOutput after FlipBits.
"""

from __future__ import annotations

import onnx_ir as ir

from onnxflip.graph.passes.store_in_format import take_over_output
from onnxflip.runtime.contract import is_flipbits

__all__ = ["NCHWC_DOMAIN", "BlockedFlipBitsPass"]

NCHWC_DOMAIN = "com.microsoft.nchwc"


def _is_reorder(node: ir.Node | None, op_type: str) -> bool:
    """An NCHWc reorder of ``op_type`` between NCHW and NCHWc (not channels-last)."""
    if node is None or node.domain != NCHWC_DOMAIN or node.op_type != op_type:
        return False
    channels_last = node.attributes.get("channels_last")
    return channels_last is None or channels_last.as_int() == 0


class BlockedFlipBitsPass(ir.passes.InPlacePass):
    """Move FlipBits from between NCHWc reorders onto the blocked tensors (see the module docstring)."""

    def __init__(self, block: int) -> None:
        super().__init__()
        self.block = block

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        moved = sum(self._try_move(graph, node) for node in list(graph) if is_flipbits(node))
        return ir.passes.PassResult(model, modified=moved > 0)

    def _try_move(self, graph: ir.Graph, flip: ir.Node) -> bool:
        reorder = flip.inputs[0].producer()
        if not _is_reorder(reorder, "ReorderOutput"):
            return False
        plain = reorder.outputs[0]
        channels = reorder.attributes["channels"].as_int()
        if plain.shape is None or len(plain.shape) != 4 or plain.shape[1] != channels:
            return False
        blocked = reorder.inputs[0]
        shape = ir.Shape([plain.shape[0], -(-channels // self.block) * self.block, *plain.shape[2:]])
        blocked.shape, blocked.dtype = shape, plain.dtype
        flip.replace_input_with(0, blocked)
        flip.attributes["nchwc_block"] = ir.AttrInt64("nchwc_block", self.block)
        flip.attributes["channels"] = ir.AttrInt64("channels", channels)
        out = flip.outputs[0]
        out.shape, out.dtype = ir.Shape(list(shape)), plain.dtype
        readers = []
        for user, index in list(out.uses()):
            if _is_reorder(user, "ReorderInput"):
                ir.convenience.replace_all_uses_with(user.outputs[0], out)
                graph.remove(user, safe=True)
            else:
                readers.append((user, index))
        if readers or out.is_graph_output():
            self._reorder_back(graph, flip, channels, plain, readers)
        if not plain.uses() and not plain.is_graph_output():
            graph.remove(reorder, safe=True)
        return True

    @staticmethod
    def _reorder_back(graph: ir.Graph, flip: ir.Node, channels: int, plain: ir.Value,
                      readers: list[tuple[ir.Node, int]]) -> None:
        """A ReorderOutput after FlipBits for the readers of the plain tensor (and the graph output)."""
        out = flip.outputs[0]
        back = ir.node("ReorderOutput", [out], {"channels": channels, "channels_last": 0}, domain=NCHWC_DOMAIN,
                       name=f"{flip.name}/ReorderOutput")
        result = back.outputs[0]
        result.shape, result.dtype = ir.Shape(list(plain.shape)), plain.dtype
        graph.insert_after(flip, back)
        for user, index in readers:
            user.replace_input_with(index, result)
        if out.is_graph_output():
            take_over_output(out, result, suffix="_nchwc")
        else:
            result.name = f"{out.name}_plain"

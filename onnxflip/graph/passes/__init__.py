"""The graph transforms, one job each, as onnx_ir passes: :mod:`onnxflip.graph.inject` runs them in sequence
(its docstring gives the order); a trial runs ``MaterializeParametersPass`` on the injected model, and
``BlockedFlipBitsPass`` on the graph ONNX Runtime optimised from it (:mod:`onnxflip.runtime.nchwc`)."""

from __future__ import annotations

from onnxflip.graph.passes.blocked_flipbits import BlockedFlipBitsPass
from onnxflip.graph.passes.compute_in_format import ComputeInFloat64Pass, RoundToFormatPass
from onnxflip.graph.passes.fold_batchnorm import FoldBatchNormPass
from onnxflip.graph.passes.infer_shapes import InferShapesPass
from onnxflip.graph.passes.insert_flipbits import InsertFlipBitsPass
from onnxflip.graph.passes.lower_float64 import LowerFloat64Pass
from onnxflip.graph.passes.materialize import MaterializeParametersPass
from onnxflip.graph.passes.qlinear import NhwcIntegerConvPass, StoreInt8AsUint8Pass
from onnxflip.graph.passes.store_in_format import StoreInFormatPass
from onnxflip.graph.passes.stored_constants import LiftStoredConstantsPass

__all__ = [
    "BlockedFlipBitsPass",
    "ComputeInFloat64Pass",
    "FoldBatchNormPass",
    "InferShapesPass",
    "InsertFlipBitsPass",
    "LiftStoredConstantsPass",
    "LowerFloat64Pass",
    "MaterializeParametersPass",
    "NhwcIntegerConvPass",
    "RoundToFormatPass",
    "StoreInFormatPass",
    "StoreInt8AsUint8Pass",
]

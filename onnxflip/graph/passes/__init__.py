"""The graph transforms, one job each, as onnx_ir passes (run in this order by :mod:`onnxflip.graph.inject`)."""

from __future__ import annotations

from onnxflip.graph.passes.fold_batchnorm import FoldBatchNormPass
from onnxflip.graph.passes.infer_shapes import InferShapesPass
from onnxflip.graph.passes.insert_flipbits import InsertFlipBitsPass
from onnxflip.graph.passes.materialize import MaterializeParametersPass
from onnxflip.graph.passes.qlinear import NhwcIntegerConvPass, StoreInt8AsUint8Pass
from onnxflip.graph.passes.store_in_format import StoreInFormatPass
from onnxflip.graph.passes.stored_constants import LiftStoredConstantsPass

__all__ = [
    "FoldBatchNormPass",
    "InferShapesPass",
    "InsertFlipBitsPass",
    "LiftStoredConstantsPass",
    "MaterializeParametersPass",
    "NhwcIntegerConvPass",
    "StoreInFormatPass",
    "StoreInt8AsUint8Pass",
]

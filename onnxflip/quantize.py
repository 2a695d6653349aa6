"""int8 QDQ quantisation with ONNX Runtime's static quantiser and CIFAR-10 calibration images.

Choices (recorded in the model's ``onnxflip.quantization`` metadata): QDQ
format, signed int8 activations and weights, per-channel weights, MinMax
calibration, int32 biases.  Preprocessing before the first Conv stays float.

A model exported with a fixed batch size is calibrated in batches of that
size; a model with external data (or too large for one protobuf) is
quantised with external data and written so.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile

import numpy as np
import onnx
import onnx_ir as ir
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from onnxflip.errors import OnnxflipError
from onnxflip.graph.inputs import batch_dimension
from onnxflip.modelio import has_external_data, load_model, save_model
from onnxflip.runtime.session import runtime_proto

__all__ = ["QUANT_METADATA_KEY", "quantize_model"]

QUANT_METADATA_KEY = "onnxflip.quantization"


class _Batches(CalibrationDataReader):
    def __init__(self, input_name: str, images: np.ndarray, batch_size: int) -> None:
        self._items = iter([{input_name: images[i : i + batch_size]} for i in range(0, len(images), batch_size)])

    def get_next(self):
        return next(self._items, None)


def _preprocessing_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes before the first Conv/Gemm/MatMul (input normalisation): kept in float."""
    names = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            break
        names.append(node.name)
    return names


def quantize_model(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    calibration: np.ndarray,
    batch_size: int = 100,
) -> None:
    """Quantise a float32 classifier to int8 QDQ, calibrated on ``calibration`` images, and write it.

    ``batch_size`` is overridden by the model's own batch size when it is
    fixed (the calibration images are then cut to a multiple of it).
    """
    loaded = load_model(model_path)
    fixed = batch_dimension(loaded)
    if fixed is not None:
        batch_size = fixed
        calibration = calibration[: len(calibration) // fixed * fixed]
    external = has_external_data(loaded)
    model = onnx.load(str(model_path))
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        raise OnnxflipError(f"{model_path} is already quantised")
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise OnnxflipError(f"quantize expects a model with one image input, found {len(inputs)}")
    if len(calibration) == 0:
        raise OnnxflipError(f"no calibration images{f' (the model takes batches of {fixed})' if fixed else ''}")
    outputs = model.graph.output
    dims = [d.dim_value if d.HasField("dim_value") else None for d in outputs[0].type.tensor_type.shape.dim] if outputs else []
    if len(outputs) != 1 or (dims and dims[-1] not in (None, 10)):
        raise OnnxflipError(f"{model_path} is not a classifier of 10 classes (its output is not 10 logits)")
    model = runtime_proto(model)
    for i, node in enumerate(model.graph.node):
        if not node.name:  # the quantiser selects nodes by name
            node.name = f"{node.op_type}_{i}"
    excluded = _preprocessing_nodes(model)
    with tempfile.TemporaryDirectory() as tmp:
        source = pathlib.Path(tmp) / "float.onnx"
        prepared = pathlib.Path(tmp) / "prepared.onnx"
        out = pathlib.Path(tmp) / "quantized.onnx"
        onnx.save(model, str(source), save_as_external_data=external, location="float.onnx.data")
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True, save_as_external_data=external,
                          all_tensors_to_one_file=True, external_data_location="prepared.onnx.data")
        quantize_static(
            prepared,
            out,
            _Batches(inputs[0], np.ascontiguousarray(calibration, dtype=np.float32), batch_size),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=excluded,
            use_external_data_format=external,
        )
        quantized = load_model(out)
        _record(quantized, excluded, len(calibration))
        save_model(quantized, output_path, external_data=external or None)


def _record(quantized: ir.Model, excluded: list[str], images: int) -> None:
    choices = {
        "format": "QDQ",
        "activations": "int8",
        "weights": "int8, per channel",
        "biases": "int32",
        "calibration": "MinMax",
        "calibration_images": images,
        "kept_float": excluded,
    }
    quantized.metadata_props[QUANT_METADATA_KEY] = json.dumps(choices)

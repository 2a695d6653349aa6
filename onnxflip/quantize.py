"""``onnxflip quantize``: int8 QDQ quantisation with ONNX Runtime's static quantiser.

Choices (recorded in the model's ``onnxflip.quantization`` metadata): QDQ
format, signed int8 activations and weights, per-channel weights, MinMax
calibration, and biases either int32 (``bias="int32"``, as ONNX Runtime's
quantiser writes them: ``DequantizeLinear`` of an int32 tensor with scale
input scale x weight scale) or kept float32 (``bias="float"``, as frameworks
that quantise only activations and weights do).  Preprocessing before the
first Conv/Gemm/MatMul stays float.  Calibration inputs come from a ``DataSource`` (ImageFolder,
.npz, CIFAR-10: see ``onnxflip.data``) or an array for a one-input model;
any number of inputs and outputs, any number of classes.

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
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from onnxflip.data.base import ArraySource, DataSource, InputSpec, check_arrays, model_inputs
from onnxflip.errors import OnnxflipError
from onnxflip.graph.formats import converted_format
from onnxflip.graph.inject import is_injected
from onnxflip.graph.inputs import batch_dimension
from onnxflip.modelio import has_external_data, load_model, save_model
from onnxflip.runtime.session import runtime_proto

__all__ = ["BIAS_TYPES", "QUANT_METADATA_KEY", "quantize_model"]

QUANT_METADATA_KEY = "onnxflip.quantization"
BIAS_TYPES = ("int32", "float")


class _Batches(CalibrationDataReader):
    """The source's batches, one feed dictionary at a time, as the calibrator asks for them."""

    def __init__(self, source: DataSource, batch_size: int) -> None:
        self._batches = source.batches(batch_size)

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else batch.feeds


def _calibration_source(
    calibration: np.ndarray | DataSource, inputs: list[InputSpec], samples: int | None, *, where: str
) -> DataSource:
    """The calibration data as a source checked against the model's inputs, cut to ``samples``."""
    if isinstance(calibration, np.ndarray):
        if len(inputs) != 1:
            names = ", ".join(s.name for s in inputs)
            raise OnnxflipError(f"{where} takes {len(inputs)} inputs ({names}); calibrate from a data source")
        calibration = ArraySource({inputs[0].name: np.ascontiguousarray(calibration, dtype=inputs[0].dtype)}, None)
    if len(calibration) == 0:
        raise OnnxflipError("no calibration samples")
    if samples is not None and samples < len(calibration):
        calibration = calibration.subset(samples)
    first = next(calibration.subset(1).batches(1))
    check_arrays(first.feeds, inputs, where="calibration data")
    return calibration


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
    calibration: np.ndarray | DataSource,
    samples: int | None = None,
    batch_size: int = 100,
    bias: str = "int32",
) -> None:
    """Quantise a float32 model to int8 QDQ, calibrated on ``calibration`` (its first ``samples``, class-balanced,
    when given), and write it.  Nothing is written when the model or the data is refused.

    ``batch_size`` is overridden by the model's own batch size when it is
    fixed (the calibration samples are then cut to a multiple of it).
    """
    if bias not in BIAS_TYPES:
        raise OnnxflipError(f"bias type {bias!r} is not one of {', '.join(BIAS_TYPES)}")
    loaded = load_model(model_path)
    fixed = batch_dimension(loaded)
    external = has_external_data(loaded)
    model = onnx.load(str(model_path))
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        raise OnnxflipError(f"{model_path} is already quantised")
    if is_injected(loaded):
        raise OnnxflipError(f"{model_path} is injected; quantise the original model and inject the int8 one")
    converted = converted_format(loaded)
    if converted is not None:
        raise OnnxflipError(f"{model_path} is converted to {converted}; quantise the original model")
    nonfinite = [init.name for init in loaded.graph.initializers.values()
                 if init.const_value is not None and init.const_value.dtype.is_floating_point()
                 and not np.isfinite(init.const_value.numpy()).all()]
    if nonfinite:
        raise OnnxflipError(f"{model_path} holds NaN or infinite values in {len(nonfinite)} initializer(s) (first: "
                            f"{nonfinite[0]}): int8 scales cannot be calibrated")
    data = _calibration_source(calibration, model_inputs(model), samples, where=str(model_path))
    if fixed is not None:
        batch_size = fixed
        if len(data) < fixed:
            raise OnnxflipError(f"{len(data)} calibration samples are fewer than the model's fixed batch of {fixed}")
        data = data.subset(len(data) // fixed * fixed)
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
        try:
            quantize_static(prepared, out, _Batches(data, batch_size), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded,
                            use_external_data_format=external, extra_options={"QuantizeBias": bias == "int32"})
        except AssertionError as exc:  # the quantiser's own checks, e.g. a NaN range: one line, nothing written
            raise OnnxflipError(f"ONNX Runtime's quantiser refused {model_path} ({exc or 'an internal check'}); its "
                                "values on the calibration data may not be finite") from None
        quantized = load_model(out)
        quantized.metadata_props[QUANT_METADATA_KEY] = json.dumps({
            "format": "QDQ",
            "activations": "int8",
            "weights": "int8, per channel",
            "biases": "int32" if bias == "int32" else "float32",
            "calibration": "MinMax",
            "calibration_samples": len(data),
            "kept_float": excluded,
        })
        save_model(quantized, output_path, external_data=external or None)

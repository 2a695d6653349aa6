"""int8 quantisation calibrated from ImageFolder, .npz and CIFAR-10 sources, for 1000, 4, 3 and 10 classes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import TokenClassifier, run_model, write_photo_folder, write_pickle_folder

from onnxflip import OnnxflipError
from onnxflip.data import Preprocess, open_source
from onnxflip.modelio import load_model
from onnxflip.quantize import QUANT_METADATA_KEY, quantize_model


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photo_folder(tmp_path_factory.mktemp("photos"), classes=4, per_class=3)


@pytest.mark.parametrize(("model", "data", "preprocess", "classes"), [
    ("resnet18_path", "photos", Preprocess.parse("imagenet"), 1000),
    ("squeezenet4_path", "photos", None, 4),
    ("token_model_path", "token_npz", None, 3),
    ("vgg_path", "cifar10", None, 10),
], ids=["resnet18-imagefolder", "squeezenet4-imagefolder", "tokens-npz", "zoo-vgg-cifar10"])
def test_quantize_calibrates_from_the_sources_evaluation_reads(request, tmp_path, model, data, preprocess, classes):
    path = request.getfixturevalue(model)
    folder = write_pickle_folder(tmp_path / "c", {"train": 1, "test": 1}) if data == "cifar10" else request.getfixturevalue(data)
    source = open_source(folder, model=load_model(path), preprocess=preprocess, split="train")
    out = tmp_path / "int8.onnx"
    quantize_model(path, out, calibration=source, samples=8, batch_size=3)
    proto = onnx.load(out)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in proto.graph.node}
    recorded = json.loads({p.key: p.value for p in proto.metadata_props}[QUANT_METADATA_KEY])
    assert recorded["calibration_samples"] == 8
    batch = next(source.batches(len(source)))
    (q,) = run_model(out, batch.feeds)
    (f,) = run_model(path, batch.feeds)
    assert q.shape == f.shape == (len(source), classes) and np.isfinite(q).all()
    assert np.corrcoef(q.ravel(), f.ravel())[0, 1] > 0.9


def test_refused_calibration_data_writes_nothing(tmp_path, token_model_path, squeezenet4_path, photos):
    arrays = TokenClassifier.arrays(10)
    del arrays["attention_mask"]
    np.savez(tmp_path / "ids.npz", **arrays)
    out = tmp_path / "int8.onnx"
    cases = [
        (token_model_path, open_source(tmp_path / "ids.npz"), "no array for model input 'attention_mask'"),
        (token_model_path, np.zeros((4, 12), np.int64), r"takes 2 inputs \(input_ids, attention_mask\)"),
        (squeezenet4_path, open_source(photos, preprocess=Preprocess(resize=(96, 96), layout="NHWC")),
         r"no array for model input 'image' \(expected \(batch, 96, 96, 3\) float32\)"),
        (squeezenet4_path, np.zeros((0, 96, 96, 3), np.float32), "different numbers of samples|no calibration"),
    ]
    for model, calibration, expected in cases:
        with pytest.raises(OnnxflipError, match=expected) as excinfo:
            quantize_model(model, out, calibration=calibration)
        assert "\n" not in str(excinfo.value)
        assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["ids.npz"]


def test_float_biases_stay_float32_and_are_the_bias_sites(synthetic_data, tmp_path):
    from conftest import save_model, template_classifier

    from onnxflip.data import load_split
    from onnxflip.graph.config import InjectionConfig
    from onnxflip.graph.inject import plan_sites

    save_model(template_classifier(), tmp_path / "float.onnx")
    calibration = load_split(synthetic_data, "train").as_float_nchw()
    quantize_model(tmp_path / "float.onnx", tmp_path / "int32.onnx", calibration=calibration)
    quantize_model(tmp_path / "float.onnx", tmp_path / "float_bias.onnx", calibration=calibration, bias="float")
    plans = {}
    for name in ("int32", "float_bias"):
        model = load_model(tmp_path / f"{name}.onnx")
        info = json.loads(model.metadata_props[QUANT_METADATA_KEY])
        _, _, sites = plan_sites(model, InjectionConfig.build(format="int8", targets=("weights", "biases")))
        plans[name] = (info["biases"], sorted((s.target, str(s.value.dtype)) for s in sites))
    gemms = 2  # the classifier's two Gemm layers, each with weights and a bias
    assert plans["int32"] == ("int32", sorted([("biases", "INT32")] * gemms + [("weights", "INT8")] * gemms))
    assert plans["float_bias"] == ("float32", sorted([("biases", "FLOAT")] * gemms + [("weights", "INT8")] * gemms))
    # The int8 weights and scales are the same either way; only the biases' storage differs.
    int32, float_bias = (onnx.load(str(tmp_path / f"{n}.onnx")) for n in ("int32", "float_bias"))
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in int32.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    for i in float_bias.graph.initializer:
        if i.name in weights:
            np.testing.assert_array_equal(onnx.numpy_helper.to_array(i), weights.pop(i.name))
    assert not weights
    with pytest.raises(OnnxflipError, match="bias type"):
        quantize_model(tmp_path / "float.onnx", tmp_path / "bad.onnx", calibration=calibration, bias="int16")
    assert not (tmp_path / "bad.onnx").exists()


def test_a_model_with_nan_weights_is_refused_in_one_line(vgg_path, tmp_path):
    """Noisy training can leave NaN weights behind; their int8 scales cannot be calibrated."""
    proto = onnx.load(vgg_path)
    weight = next(init for init in proto.graph.initializer if len(init.dims) == 4)
    array = onnx.numpy_helper.to_array(weight).copy()
    array.flat[3] = np.nan
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    broken = tmp_path / "nan.onnx"
    onnx.save(proto, broken)
    out = tmp_path / "int8.onnx"
    calibration = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    with pytest.raises(OnnxflipError, match=f"NaN or infinite values in 1 initializer.*first: {weight.name}") as info:
        quantize_model(broken, out, calibration=calibration)
    assert "\n" not in str(info.value) and not out.exists()

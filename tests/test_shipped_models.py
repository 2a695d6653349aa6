"""The shipped zoo models on the real CIFAR-10 test set (slow: run with `pytest -m slow`)."""

from __future__ import annotations

import json
import pathlib

import onnx
import onnxruntime as ort
import pytest

from onnxflip.data import load_split
from onnxflip.zoo.configs import MODELS as ZOO

MODELS = pathlib.Path(__file__).resolve().parent.parent / "models"
DATA = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "cifar10"
NAMES = [name for name in ZOO if (MODELS / f"{name}.onnx").is_file()]  # the CIFAR-10 networks shipped

pytestmark = pytest.mark.slow


def accuracy(path: pathlib.Path) -> float:
    """Top-1 on the test set, the graph run as it is written: ONNX Runtime's graph optimisations off, so that a QDQ
    model is not fused into integer kernels that saturate on x86 CPUs without VNNI (see tests/test_qlinear.py)."""
    split = load_split(DATA, "test")
    images = split.as_float_nchw()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    right = 0
    for start in range(0, len(images), 1000):
        (logits,) = session.run(None, {"input": images[start : start + 1000]})
        right += int((logits.argmax(1) == split.labels[start : start + 1000]).sum())
    return right / len(images)


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/cifar10")
@pytest.mark.parametrize("name", NAMES)
def test_shipped_model_reaches_its_recorded_accuracy(name):
    path = MODELS / f"{name}.onnx"
    recorded = json.loads({p.key: p.value for p in onnx.load(path).metadata_props}["onnxflip.model"])
    measured = accuracy(path)
    assert abs(measured - recorded["test_accuracy"]) < 0.002, (measured, recorded["test_accuracy"])
    for suffix in ("_int8", "_int8_floatbias"):  # int32 biases, float32 biases
        int8 = MODELS / f"{name}{suffix}.onnx"
        assert int8.is_file(), "every float model ships with its int8 QDQ versions"
        assert measured - accuracy(int8) < 0.01, suffix

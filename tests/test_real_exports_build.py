"""The corpus of real exports (tests/real_exports.py): every model builds, loads in ONNX Runtime and scores finite
values on the feeds the corpus makes, at two batch sizes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from real_exports import MAX_IR_VERSION, RECIPES


def needs(name: str) -> None:
    """Skip where a package the model's exporter needs is not installed (the test extra has them all)."""
    for module in RECIPES[name].requires:
        pytest.importorskip(module, reason=f"{name} needs {module}: pip install 'onnxflip[test]'")


@pytest.mark.parametrize("name", list(RECIPES))
def test_builds_and_runs(real_exports, name):
    needs(name)
    model = real_exports[name]
    assert model.path.is_file()
    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    assert model.output in outputs
    for batch in (2, 4):
        values = session.run(None, model.feeds(batch, seed=batch))
        scores = model.scores(values[outputs.index(model.output)])
        assert scores.shape[0] == batch
        assert scores.dtype == (np.float16 if model.float16 else np.float32)
        assert np.isfinite(scores).all()


@pytest.mark.parametrize("name", list(RECIPES))
def test_stored_form(real_exports, name):
    """The IR version ONNX Runtime reads (IR 3 only where meant), float16 and int8 weights where the flags say."""
    needs(name)
    model = real_exports[name]
    proto = onnx.load(str(model.path))
    graph = proto.graph
    if name == "ir3_cnn":
        assert proto.ir_version == 3
        assert {t.name for t in graph.initializer} <= {i.name for i in graph.input}
    else:
        assert proto.ir_version <= MAX_IR_VERSION
    types = {t.data_type for t in graph.initializer}
    if model.float16:
        assert onnx.TensorProto.FLOAT16 in types and onnx.TensorProto.FLOAT not in types
    assert bool(types & {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}) == model.quantised


def test_gpt2_head_is_tied_in_torch():
    """The GPT-2 the corpus exports ties its LM head to the token embedding (the exporters store two copies)."""
    pytest.importorskip("transformers")
    from real_exports import tiny_gpt2

    model = tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight

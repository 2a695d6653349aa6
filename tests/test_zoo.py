"""The model zoo: VGG configurations, training steps, export to ONNX, int8 quantisation."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
from conftest import assert_export_matches, four_logit_model, needs_zoo_extra, run_model, tiny_vgg

needs_zoo_extra()
import torch  # noqa: E402 - after the skip where the zoo extra is missing

from onnxflip.cli import main  # noqa: E402
from onnxflip.runtime.session import IR_VERSION  # noqa: E402
from onnxflip.zoo import CONFIGS, build_vgg  # noqa: E402
from onnxflip.zoo.train import TrainConfig, train  # noqa: E402


@pytest.mark.parametrize(("name", "convs"), [("vgg11", 8), ("vgg13", 10), ("vgg16", 13), ("vgg19", 16)])
def test_configurations_have_the_papers_depths(name, convs):
    model = build_vgg(name, width=0.125)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == convs
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 2  # weight layers: convs + 2 = 11..19
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert set(CONFIGS) == {"vgg11", "vgg13", "vgg16", "vgg19"}


def test_a_few_training_steps_lower_the_loss(synthetic_data):
    config = TrainConfig(model="vgg11", width=0.125, epochs=3, batch_size=25, lr=0.05, max_steps=24)
    result = train(config, data_dir=synthetic_data, progress=False)
    losses = result.losses
    assert len(losses) == 24
    assert np.mean(losses[-6:]) < np.mean(losses[:6])


def test_export_matches_torch_and_has_a_dynamic_batch(vgg_path):
    model = tiny_vgg()
    proto = onnx.load(vgg_path)
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}
    assert proto.ir_version <= IR_VERSION
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["onnxflip.model"])
    assert meta["classes"][0] == "airplane"
    assert_export_matches(model, vgg_path, (1, 7))


def test_quantised_model_is_qdq_and_close_to_float(vgg_path, qdq_path):
    proto = onnx.load(qdq_path)
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert json.loads({p.key: p.value for p in proto.metadata_props}["onnxflip.quantization"])["weights"] == \
        "int8, per channel"
    x = np.random.default_rng(3).random((4, 3, 32, 32), dtype=np.float32)
    (q,) = run_model(qdq_path, {"input": x})
    (f,) = run_model(vgg_path, {"input": x})
    assert q.shape == f.shape and np.isfinite(q).all()
    assert np.corrcoef(q.ravel(), f.ravel())[0, 1] > 0.9


def test_cli_trains_exports_and_quantises(synthetic_data, tmp_path, capsys):
    out = tmp_path / "vgg.onnx"
    code = main(["zoo", "train", "--model", "vgg11", "--width", "0.125", "--epochs", "1", "--batch-size", "50",
                 "--data", str(synthetic_data), "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert out.is_file() and out.with_suffix(".ckpt").is_file()
    q = tmp_path / "vgg_int8.onnx"
    assert main(["quantize", str(out), "-o", str(q), "--data", str(synthetic_data), "--samples", "50"]) == 0
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(q).graph.node}


def test_quantize_rejects_bad_input(synthetic_data, tmp_path, capsys, qdq_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    assert main(["quantize", str(bad), "-o", str(tmp_path / "q.onnx"), "--data", str(synthetic_data)]) == 1
    assert main(["quantize", str(qdq_path), "-o", str(tmp_path / "q.onnx"), "--data", str(synthetic_data),
                 "--samples", "10"]) == 1
    assert main(["quantize", str(qdq_path), "-o", str(tmp_path / "q.onnx"), "--data", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("onnxflip: error:") for line in err)


def test_quantize_takes_a_model_of_four_classes(synthetic_data, tmp_path, capsys):
    path = tmp_path / "four.onnx"
    onnx.save(four_logit_model(), path)
    assert main(["quantize", str(path), "-o", str(tmp_path / "q.onnx"), "--data", str(synthetic_data),
                 "--samples", "50"]) == 0, capsys.readouterr().err
    (y,) = run_model(tmp_path / "q.onnx", {"input": np.zeros((2, 3, 32, 32), np.float32)})
    assert y.shape == (2, 4)


def test_train_refuses_a_bad_device_or_checkpoint_in_one_line(synthetic_data, tmp_path, capsys, monkeypatch):
    import torch

    args = ["zoo", "train", "--model", "vgg11", "--width", "0.125", "--epochs", "1", "--batch-size", "50",
            "--data", str(synthetic_data), "-o", str(tmp_path / "vgg.onnx")]
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    other = tmp_path / "other.ckpt"
    torch.save({"weights": 1}, other)
    cases = [(["--device", "tpu"], 2, "'tpu' is not one of"), (["--checkpoint", str(junk)], 1, "is not a training checkpoint"),
             (["--checkpoint", str(other)], 1, "is not a training checkpoint")]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cases.append((["--device", "cuda"], 1, "no usable CUDA GPU"))
    for extra, status, message in cases:
        code = main([*args, *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == status and len(err) == 1 and message in err[0], (extra, err)
    assert junk.read_text() == "not a checkpoint" and not (tmp_path / "vgg.onnx").exists()

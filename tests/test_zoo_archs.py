"""The zoo's networks beyond VGG, ResNet-20 and the small MobileNetV2: shapes, sizes, a few training steps,
export with BatchNorm folded, the sites onnxflip finds in the export, int8 quantisation, and what reproduce
makes of them."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import assert_export_matches, needs_zoo_extra, run_model, tiny_network

needs_zoo_extra()
import torch  # noqa: E402 - after the skip where the zoo extra is missing

from onnxflip import OnnxflipError  # noqa: E402
from onnxflip.campaign.reproduce import GridSpec  # noqa: E402
from onnxflip.cli import main  # noqa: E402
from onnxflip.graph.sites import find_sites  # noqa: E402
from onnxflip.quantize import quantize_model  # noqa: E402
from onnxflip.zoo import ARCHITECTURES, VGG_MODELS, build_model  # noqa: E402
from onnxflip.zoo.configs import WEIGHT_LAYERS  # noqa: E402
from onnxflip.zoo.export import export_onnx, fold_batchnorm_torch  # noqa: E402
from onnxflip.zoo.noise import NoiseSettings, activation_sites, noisy_forward, weight_sites  # noqa: E402
from onnxflip.zoo.train import TrainConfig, train  # noqa: E402

# Small widths keep each export and training step to a fraction of a second on one CPU thread.
TINY_WIDTH = {"resnet20": 0.5, "mobilenetv2s": 0.5}


def tiny(name: str, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised network at a small width with non-trivial BatchNorm statistics, in eval mode."""
    return tiny_network(name, width=TINY_WIDTH[name], seed=seed)


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def exported(request, tmp_path_factory):
    """(name, torch model, path of its ONNX export)."""
    model = tiny(request.param)
    path = tmp_path_factory.mktemp("archs") / f"{request.param}.onnx"
    export_onnx(model, path)
    return request.param, model, path


@pytest.mark.parametrize(("name", "low", "high", "convs", "depthwise"), [
    ("resnet20", 0.26e6, 0.28e6, 19, 0),  # He et al. 2016, Table 6: 0.27M
    ("mobilenetv2s", 0.5e6, 1.0e6, 40, 13),
])
def test_the_networks_have_their_shapes_and_sizes(name, low, high, convs, depthwise):
    model = build_model(name)
    params = sum(p.numel() for p in model.parameters())
    assert low <= params <= high, params
    conv2d = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(conv2d) == convs
    assert sum(m.groups > 1 and m.groups == m.in_channels == m.out_channels for m in conv2d) == depthwise
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 1
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_export_folds_batchnorm_and_matches_torch_at_any_batch(exported):
    name, model, path = exported
    proto = onnx.load(path)
    ops = Counter(n.op_type for n in proto.graph.node)
    assert "BatchNormalization" not in ops
    assert ops["Add"] == {"resnet20": 9, "mobilenetv2s": 8}[name]  # one residual sum per block that keeps its shape
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    assert_export_matches(model, path, (1, 5))


def test_the_site_finder_finds_every_activation_and_parameter(exported):
    """Every ReLU (ResNet-20, after each residual sum too) or ReLU6 (exported as Clip) is an activation site,
    the logits another; every Conv (the depthwise ones too) and the Linear give a weight and a bias site; the
    torch activation and weight sites of noisy training mirror them."""
    name, model, path = exported
    graph = ir.serde.deserialize_model(onnx.load(path))
    nodes = list(graph.graph)
    activations = find_sites(graph, targets=["activations"])
    written_by = {site.value.producer().op_type for site in activations if site.name != "logits"}
    activation_op = {"resnet20": "Relu", "mobilenetv2s": "Clip"}[name]
    assert written_by == {activation_op}
    assert len(activations) == sum(n.op_type == activation_op for n in nodes) + 1
    residual_reads = [n for n in nodes if n.op_type == "Add" and all(
        use.op_type == "Relu" for use, _ in n.outputs[0].uses())]
    assert len(residual_reads) == (9 if name == "resnet20" else 0)  # ResNet's sums are written by their ReLU
    weights = {site.name for site in find_sites(graph, targets=["weights"])}
    biases = find_sites(graph, targets=["biases"])
    layers = [n for n in nodes if n.op_type in ("Conv", "Gemm")]
    assert {n.inputs[1].name for n in layers} == weights and len(biases) == len(layers)
    depthwise = [n for n in layers if n.attributes.get_int("group", 1) > 1]
    assert len(depthwise) == (13 if name == "mobilenetv2s" else 0)
    assert {n.inputs[1].name for n in depthwise} <= weights
    assert len(activations) == len(activation_sites(model)) + 1
    assert len(weights) == sum(n.endswith(".weight") for n in weight_sites(model))


def test_the_int8_model_loads_and_runs(exported, tmp_path):
    name, _, path = exported
    q = tmp_path / f"{name}_int8.onnx"
    calibration = np.random.default_rng(0).random((16, 3, 32, 32), dtype=np.float32)
    quantize_model(path, q, calibration=calibration)
    assert Counter(n.op_type for n in onnx.load(q).graph.node)["QuantizeLinear"] > 0
    x = np.random.default_rng(1).random((4, 3, 32, 32), dtype=np.float32)
    (got,) = run_model(q, {"input": x})
    (clean,) = run_model(path, {"input": x})
    assert got.shape == (4, 10) and np.isfinite(got).all()
    assert np.corrcoef(got.ravel(), clean.ravel())[0, 1] > 0.8


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_two_noisy_training_steps_then_export(name, synthetic_data, tmp_path):
    config = TrainConfig(model=name, width=TINY_WIDTH[name], epochs=1, batch_size=25, lr=0.05, max_steps=2,
                         noise=NoiseSettings(p=1e-4, targets="all", bits="mantissa"))
    result = train(config, data_dir=synthetic_data, checkpoint=tmp_path / "run.ckpt", progress=False)
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    assert torch.load(tmp_path / "run.ckpt", weights_only=False)["config"]["model"] == name
    path = tmp_path / f"{name}.onnx"
    proto = export_onnx(result.model, path)
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}
    (y,) = run_model(path, {"input": np.zeros((3, 3, 32, 32), np.float32)})
    assert y.shape == (3, 10)


def test_the_cli_trains_resnet20_at_its_own_width(synthetic_data, tmp_path, capsys):
    out = tmp_path / "resnet20.onnx"
    code = main(["zoo", "train", "--model", "resnet20", "--epochs", "1", "--batch-size", "100",
                 "--data", str(synthetic_data), "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    meta = json.loads({p.key: p.value for p in onnx.load(out).metadata_props}["onnxflip.model"])
    assert meta["model"] == "resnet20" and meta["width"] == 1.0 and meta["parameters"] == 269_722
    assert "resnet20 width 1.0" in capsys.readouterr().out


def test_fold_refuses_a_batchnorm_it_cannot_fold():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(), torch.nn.BatchNorm2d(4))
    with pytest.raises(OnnxflipError, match=r"BatchNorm2d 2 does not follow a Conv2d"):
        fold_batchnorm_torch(model)


def test_reproduce_takes_every_network_and_fields_the_others_in_float32():
    assert GridSpec().models == (*VGG_MODELS, *ARCHITECTURES)
    spec = GridSpec(models=("resnet20", "vgg13", "mobilenetv2s", "vgg11"))
    assert spec.fielded_models() == ("resnet20", "vgg13", "mobilenetv2s", "vgg11")
    assert spec.fielded_formats("resnet20") == ("float32",)
    assert spec.fielded_formats("vgg11") == ("float16", "bfloat16", "float32", "float64")
    assert GridSpec(models=("resnet20",), field_formats=("float16",)).fielded_formats("resnet20") == ("float16",)
    assert GridSpec(models=("vgg11", "resnet20"), field_models=("vgg11",)).fielded_models() == ("vgg11",)


def test_the_weight_layers_are_the_networks_conv_and_linear_layers():
    """The networks beyond VGG count their Conv and Linear layers; the VGGs keep the paper's names (the zoo's
    smaller head has two Linear layers, not three)."""
    for name in ARCHITECTURES:
        layers = WEIGHT_LAYERS[name]
        model = build_model(name, width=0.25)
        assert sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules()) == layers, name


def test_noise_flips_the_new_networks_activation_layers():
    model = tiny("mobilenetv2s").train()
    x = torch.rand(2, 3, 32, 32)
    clean = model(x).detach()
    noisy = noisy_forward(model, NoiseSettings(p=1e-3, targets="activations", bits="mantissa"), seed=0)(x, 0)
    assert not torch.equal(noisy.detach(), clean)
    assert all(isinstance(m, torch.nn.ReLU6) for m in activation_sites(model))

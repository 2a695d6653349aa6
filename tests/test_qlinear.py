"""Injected int8 models keep ONNX Runtime's integer kernels, and their flips mean what they meant.

The chain of evidence, for forced flip patterns (p = 1 on one bit, one or both directions):

1. today's placement (FlipBits on the int8 tensors between Q and DQ), run without fusion, equals the
   uint8 storage of the activations run without fusion, bit for bit;
2. that uint8 graph, fused by ONNX Runtime into its integer kernels, equals the injected model
   (channels-last integer ops with the flips between them), bit for bit.

The unfused and the fused graphs differ from each other (float convolution and requantisation against
integer accumulation), with or without flips, as the clean model does in ONNX Runtime.
"""

from __future__ import annotations

import json
import pathlib
from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from conftest import run_model
from onnx_ir.passes.common import ShapeInferencePass

from onnxflip.faults import FaultModel
from onnxflip.graph.config import InjectionConfig
from onnxflip.graph.inject import insert_flipbits, plan_sites
from onnxflip.graph.passes import InsertFlipBitsPass, StoreInFormatPass
from onnxflip.graph.passes.materialize import materialize_parameters
from onnxflip.graph.passes.qlinear import StoreInt8AsUint8Pass
from onnxflip.modelio import load_model, save_model
from onnxflip.report.sites_table import describe_sites
from onnxflip.runtime.session import runtime_bytes, session_options

MODELS = pathlib.Path(__file__).resolve().parent.parent / "models"
SHIPPED_INT8 = MODELS / "vgg11_int8.onnx"
SHIPPED_SITES = pathlib.Path(__file__).resolve().parent / "data" / "shipped_sites.json"


@pytest.fixture(params=["shipped", "tiny"])
def int8_model(request) -> ir.Model:
    if request.param == "shipped":
        return load_model(SHIPPED_INT8)
    return load_model(request.getfixturevalue("qdq_path"))


@pytest.fixture
def feeds(images) -> dict:
    return {"input": images}


def todays_placement(model: ir.Model, config: InjectionConfig) -> ir.Model:
    """FlipBits on the int8 tensors between QuantizeLinear and DequantizeLinear, nothing else."""
    prepared, fmt, sites = plan_sites(model, config)
    return ir.passes.Sequential(StoreInFormatPass(fmt, sites), InsertFlipBitsPass(config, sites))(prepared).model


def optimised_ops(model: ir.Model, tmp_path: pathlib.Path) -> Counter:
    """Op types of the graph ONNX Runtime runs (full optimisation, CPU)."""
    options = session_options()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(runtime_bytes(model), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


FORCED = {  # every element flips or sticks (p = 1)
    "p-bit0": {"p01": 1.0, "p10": 1.0, "bits": 0x01},
    "p01-bit3": {"p01": 1.0, "bits": 0x08},
    "p01-sign": {"p01": 1.0, "bits": 0x80},
    "p10-sign": {"p10": 1.0, "bits": 0x80},
    "p-bit6": {"p01": 1.0, "p10": 1.0, "bits": 0x40},
    "s0-sign": {"s0": 1.0, "bits": 0x80},
    "s1-bit2-sign": {"s1": 1.0, "bits": 0x84},
}


@pytest.mark.parametrize("forced", FORCED.values(), ids=FORCED.keys())
def test_forced_flips_equal_todays_placement(int8_model, feeds, forced):
    """Flips and stuck cells forced on every element (p = 1): the sign bit's pairs swap, the values do not."""
    fault = FaultModel(**forced)
    config = InjectionConfig(format="int8", activations=fault, weights=fault, biases=fault)
    today = todays_placement(int8_model, config)
    uint8 = StoreInt8AsUint8Pass()(today.clone()).model
    np.testing.assert_array_equal(run_model(uint8, feeds, exact=True)[0], run_model(today, feeds, exact=True)[0])
    injected = insert_flipbits(int8_model, config=config)
    fused = run_model(materialize_parameters(uint8), feeds)[0]
    materialized = materialize_parameters(injected)
    # the weight and bias flips (sign-bit nodes included) are constants; the activations' stay for each run
    assert {n.name.split("/")[1] for n in materialized.graph if n.op_type == "FlipBits"} == {"activations"}
    np.testing.assert_array_equal(run_model(materialized, feeds)[0], fused)
    assert not np.array_equal(fused, run_model(int8_model, feeds)[0])


def test_uint8_storage_draws_the_same_flips_at_a_fixed_seed(int8_model, feeds):
    """Below the sign bit the uint8 offset binary draws exactly today's flips (same seed, same stream)."""
    config = InjectionConfig(format="int8", activations=FaultModel.symmetric(0.05, bits=0x7F, seed=11),
                             weights=None, biases=None)
    today = todays_placement(int8_model, config)
    uint8 = StoreInt8AsUint8Pass()(today.clone()).model
    reference = run_model(today, feeds, exact=True)[0]
    np.testing.assert_array_equal(run_model(uint8, feeds, exact=True)[0], reference)
    assert not np.array_equal(reference, run_model(int8_model, feeds, exact=True)[0])


def output_step(model: ir.Model) -> float:
    """The quantisation step of the logits: the scale of the DequantizeLinear that writes the graph output."""
    return float(model.graph.outputs[0].producer().inputs[1].const_value.numpy())


def test_injected_int8_keeps_the_integer_kernels_and_p0_is_exact(int8_model, feeds, tmp_path):
    injected = materialize_parameters(insert_flipbits(int8_model, config=InjectionConfig(format="int8")))
    ops = optimised_ops(injected, tmp_path)
    clean_ops = optimised_ops(int8_model, tmp_path)
    assert ops["QLinearConv"] == clean_ops["QLinearConv"] > 0 and ops["QGemm"] == clean_ops["QGemm"]
    assert ops["Conv"] == ops["Gemm"] == 0
    assert ops["Transpose"] == clean_ops["Transpose"]
    out = run_model(injected, feeds)[0]
    # ONNX Runtime's own fusion of the clean model with its int8 tensors stored as uint8: bit for bit
    uint8_clean = StoreInt8AsUint8Pass()(int8_model.clone()).model
    np.testing.assert_array_equal(out, run_model(uint8_clean, feeds)[0])
    # the unfused QDQ graph (float convolution, then requantisation) rounds a few values the other way
    np.testing.assert_allclose(out, run_model(int8_model, feeds, exact=True)[0], rtol=0,
                               atol=2.01 * output_step(int8_model))


def test_integer_convolution_is_exact_where_uint8_x_int8_pairs_saturate(tmp_path):
    """Two products of 255 x 127 sum to 64,770, beyond int16: the injected model computes it exactly."""
    text = """
    <ir_version: 10, opset_import: ["" : 21]>
    g (float[1,2,1,1] x) => (float[1,1,1,1] y) <float s = {1.0}, int8 z = {-128}, int8[1,2,1,1] W = {127, 127},
        float ws = {1.0}, int8 wz = {0}, float ys = {300.0}, int8 yz = {-128}> {
      xq = QuantizeLinear (x, s, z)
      xd = DequantizeLinear (xq, s, z)
      wd = DequantizeLinear (W, ws, wz)
      c = Conv (xd, wd)
      yq = QuantizeLinear (c, ys, yz)
      y = DequantizeLinear (yq, ys, yz)
    }
    """
    model = ir.from_onnx_text(text)
    injected = materialize_parameters(insert_flipbits(model, config=InjectionConfig(format="int8")))
    assert optimised_ops(injected, tmp_path)["QLinearConv"] == 1
    (out,) = run_model(injected, {"x": np.full((1, 2, 1, 1), 255, np.float32)})
    np.testing.assert_array_equal(out, np.full((1, 1, 1, 1), 300.0 * round(2 * 255 * 127 / 300.0), np.float32))


@pytest.mark.parametrize(("attributes", "converted"), [("", True), (', ecc = "none", on_detected = "zero"', True),
                                                       (", s1 = 0.5", False), (', ecc = "secded"', False)])
def test_only_value_free_flips_move_to_uint8_storage(attributes, converted):
    """A FlipBits node with an attribute beyond the value-free ones (a probability for 0 or for 1 that the sign
    bit would have to swap, an ECC word computed from the stored bits) keeps its int8 tensor; the others move to
    uint8 with the sign bit's (for 0, for 1) inputs swapped: p01/p10 and s0/s1."""
    text = f"""
    <ir_version: 10, opset_import: ["" : 21, "onnxflip" : 1]>
    g (float[4] x) => (float[4] y) <float s = {{0.5}}, int8 z = {{-3}}, float p = {{1.0}}, float r = {{0.0}},
                                    int64 k = {{0}}, float a = {{0.25}}, float b = {{0.5}}, int64[0] t = {{}}> {{
      q = QuantizeLinear (x, s, z)
      f = onnxflip.FlipBits <bitmask = 255{attributes}> (q, p, r, k, a, b, t)
      y = DequantizeLinear (f, s, z)
    }}
    """
    model = ShapeInferencePass()(ir.from_onnx_text(text)).model
    assert StoreInt8AsUint8Pass()(model).modified == converted
    quantize = next(n for n in model.graph if n.op_type == "QuantizeLinear")
    assert quantize.inputs[2].dtype == (ir.DataType.UINT8 if converted else ir.DataType.INT8)
    flips = [n for n in model.graph if n.op_type == "FlipBits"]
    if converted:
        assert [(n.attributes["bitmask"].value, [v.name for v in n.inputs[1:]]) for n in flips] == [
            (0x7F, ["p", "r", "k", "a", "b", "t"]), (0x80, ["r", "p", "k", "b", "a", "t"])]
    else:
        assert len(flips) == 1


def test_ecc_sites_keep_their_int8_tensors(feeds, qdq_path):
    """Under ECC the stored words keep their int8 bits (check bits included): the injected model is today's
    placement, draws and word counts alike."""
    fault = FaultModel.symmetric(0.01, seed=5, ecc="secded")
    config = InjectionConfig(format="int8", activations=fault, weights=fault, biases=fault)
    model = load_model(qdq_path)
    injected = insert_flipbits(model, config=config)
    assert {n.outputs[0].dtype for n in injected.graph if n.op_type == "FlipBits"} == {ir.DataType.INT8,
                                                                                       ir.DataType.INT32}
    assert not any(n.domain == "com.microsoft" for n in injected.graph)
    outputs = run_model(injected, feeds, exact=True)
    for got, expected in zip(outputs, run_model(todays_placement(model, config), feeds, exact=True), strict=True):
        np.testing.assert_array_equal(got, expected)
    assert len(outputs) == 4 and outputs[1].sum() > 0  # logits, then each target's word counts


def test_ecc_biases_feed_the_integer_convolutions(feeds, qdq_path):
    """ECC on the int32 biases only: the int8 tensors move to uint8 and the convolutions become QLinearConv,
    reading the biases' corrected words; the word counts stay a graph output, as in today's placement."""
    config = InjectionConfig(format="int8", activations=None, weights=None,
                             biases=FaultModel.symmetric(0.01, seed=5, ecc="secded"))
    model = load_model(qdq_path)
    injected = insert_flipbits(model, config=config)
    convolutions = [n for n in injected.graph if n.op_type == "QLinearConv"]
    assert convolutions and all(n.inputs[8].producer().op_type == "FlipBits" for n in convolutions)
    logits, counts = run_model(injected, feeds)
    today_logits, today_counts = run_model(todays_placement(model, config), feeds, exact=True)
    np.testing.assert_array_equal(counts, today_counts)
    assert counts.sum() > 0
    # integer convolution against float convolution and requantisation, as at p = 0
    np.testing.assert_allclose(logits, today_logits, rtol=0, atol=2.01 * output_step(model))


@pytest.mark.parametrize("name", sorted(json.loads(SHIPPED_SITES.read_text())))
def test_inspect_lists_the_shipped_models_sites_as_before(name, tmp_path):
    """The site list of every shipped model, clean and injected, is the one inspect printed before the int8
    rewrite (recorded in data/shipped_sites.json by `inspect --json` of the code without the qlinear passes)."""
    expected = json.loads(SHIPPED_SITES.read_text())[name]
    config = InjectionConfig(format="int8" if "int8" in name else "float32")
    assert describe_sites(MODELS / name, config=config)[0] == expected["clean"]
    path = tmp_path / name
    save_model(insert_flipbits(load_model(MODELS / name), config=config), path)
    assert describe_sites(path, config=config)[0] == expected["injected"]


def test_inject_reports_sites_not_nodes(tmp_path, capsys):
    """The CLI counts the 35 sites of the shipped int8 VGG-11, not its 60 FlipBits nodes (25 of them for the sign bits of int8 weights and activations)."""
    from onnxflip.cli import main

    out = tmp_path / "injected.onnx"
    code = main(["inject", str(SHIPPED_INT8), "-o", str(out), "--format", "int8", "--p", "1e-5"])
    assert code == 0 and "35 FlipBits sites" in capsys.readouterr().out
    assert sum(n.op_type == "FlipBits" for n in onnx.load(out).graph.node) == 60


DATA = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "cifar10"


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/cifar10")
@pytest.mark.parametrize(("targets", "p"), [(("activations",), 1.6e-3), (("activations", "weights", "biases"), 1e-4)])
def test_accuracy_under_flips_matches_todays_placement(targets, p):
    """Shipped VGG-11 int8, 2,000 test images, 3 trials: the new placement draws other flips (NHWC order, the sign
    bit's own stream), so the two mean accuracies differ by trial noise only (about 0.01 per trial here; the
    tolerance, 0.04, is about 5 standard deviations of the difference of two 3-trial means)."""
    from onnxflip.campaign.trials import LocalRunner, TrialSettings
    from onnxflip.data.sources import open_source
    from onnxflip.metrics import metric_from_spec

    model = load_model(SHIPPED_INT8)
    source = open_source(DATA, model=model).subset(2000).cached(1 << 30)
    settings = TrialSettings(format="int8", targets=targets)
    today = LocalRunner(todays_placement(model, settings.injection()), source, metric_from_spec("top1"), settings)
    now = LocalRunner(model, source, metric_from_spec("top1"), settings)

    def mean(runner, p):
        return float(np.mean([o.score for o in runner.run(p, [0, 1, 2], 2000)]))

    # At p = 0 the new placement computes the QDQ model (its graph run unfused: 0.851 on these images); today's
    # placement drops every FlipBits there, and ONNX Runtime fuses what is left into its saturating kernels.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    unfused = ort.InferenceSession(str(SHIPPED_INT8), options, providers=["CPUExecutionProvider"])
    images = np.concatenate([b.feeds["input"] for b in source.batches(500)])
    exact = float((unfused.run(None, {"input": images})[0].argmax(1) == source.labels).mean())
    assert abs(mean(now, 0.0) - exact) <= 0.001
    assert abs(mean(now, p) - mean(today, p)) < 0.04


def _residual_net():
    """Conv, residual Add, depthwise Conv, global pooling: QDQ units the rewrite converts and ones it leaves."""
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
            self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8))
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

        def forward(self, x):
            y = self.stem(x)
            return self.head(nn.functional.relu(y + self.body(y)))

    return Net()


@pytest.mark.parametrize(("bit", "p01", "p10"), [(7, 1.0, 0.0), (2, 1.0, 1.0)])
def test_a_residual_network_keeps_its_meaning(tmp_path, bit, p01, p10):
    from conftest import needs_zoo_extra

    needs_zoo_extra()
    import torch

    from onnxflip.quantize import quantize_model
    from onnxflip.runtime.session import runtime_proto

    torch.manual_seed(0)
    program = torch.onnx.export(_residual_net().eval(), (torch.rand(2, 3, 16, 16),), input_names=["input"],
                                output_names=["y"], dynamo=True, verbose=False)
    onnx.save(runtime_proto(program.model_proto), tmp_path / "net.onnx")
    calibration = np.random.default_rng(0).random((8, 3, 16, 16), dtype=np.float32)
    quantize_model(tmp_path / "net.onnx", tmp_path / "int8.onnx", calibration=calibration, batch_size=2)
    model = load_model(tmp_path / "int8.onnx")
    feeds = {"input": np.random.default_rng(1).random((2, 3, 16, 16), dtype=np.float32)}
    fault = FaultModel(p01=p01, p10=p10, bits=1 << bit)
    config = InjectionConfig(format="int8", activations=fault, weights=fault, biases=fault)
    today = todays_placement(model, config)
    uint8 = StoreInt8AsUint8Pass()(today.clone()).model
    np.testing.assert_array_equal(run_model(uint8, feeds, exact=True)[0], run_model(today, feeds, exact=True)[0])
    injected = insert_flipbits(model, config=config)
    assert sum(n.op_type == "QLinearConv" for n in injected.graph) == 3
    np.testing.assert_array_equal(run_model(materialize_parameters(injected), feeds)[0],
                                  run_model(materialize_parameters(uint8), feeds)[0])

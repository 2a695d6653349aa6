"""The rewriter: FlipBits sites in small graphs, every format, and networks exported from torch."""

from __future__ import annotations

import json
from collections import Counter

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import model_from_text, needs_zoo_extra, run_model, save_model

from onnxflip import OnnxflipError
from onnxflip.faults import FaultModel
from onnxflip.graph.config import InjectionConfig, control_input_name
from onnxflip.graph.inject import convert_format, insert_flipbits
from onnxflip.graph.passes import LowerFloat64Pass
from onnxflip.graph.passes.fold_batchnorm import fold_batchnorm
from onnxflip.graph.passes.materialize import materialize_parameters
from onnxflip.graph.passes.qlinear import StoreInt8AsUint8Pass
from onnxflip.graph.record import InjectionRecord
from onnxflip.graph.sites import TARGETS, Selection
from onnxflip.modelio import load_model
from onnxflip.runtime.session import runtime_proto

RNG = np.random.default_rng(0)

CONV_GRAPH = """
<ir_version: 10, opset_import: ["" : 21]>
conv_net (float[N,3,8,8] x) => (float[N,5] y)
<float[4,3,3,3] W, float[4] B, float[4] s, float[4] t, float[4] m, float[4] v, float[5,64] G, float[5] C> {
  c = Conv <pads = [1, 1, 1, 1]> (x, W, B)
  n = BatchNormalization (c, s, t, m, v)
  r = Relu (n)
  p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r)
  f = Flatten (p)
  y = Gemm <transB = 1> (f, G, C)
}
"""

MATMUL_GRAPH = """
<ir_version: 10, opset_import: ["" : 21]>
mlp (float[N,6] x) => (float[N,8] y)
<float[6,4] W1, float[4] b1, float[6,4] W2> {
  h1 = MatMul (x, W1)
  a1 = Add (h1, b1)
  r1 = Relu (a1)
  h2 = MatMul (x, W2)
  r2 = Sigmoid (h2)
  y = Concat <axis = 1> (r1, r2)
}
"""


def _tensor(name: str, *shape: int, positive: bool = False) -> onnx.TensorProto:
    array = RNG.standard_normal(shape).astype(np.float32)
    return onnx.numpy_helper.from_array(np.abs(array) + 0.5 if positive else array, name)


def from_text(text: str, initializers: list[onnx.TensorProto]) -> ir.Model:
    return ir.serde.deserialize_model(model_from_text(text, initializers))


def conv_model() -> ir.Model:
    inits = [_tensor("W", 4, 3, 3, 3), _tensor("B", 4), _tensor("s", 4, positive=True), _tensor("t", 4),
             _tensor("m", 4), _tensor("v", 4, positive=True), _tensor("G", 5, 64), _tensor("C", 5)]
    return from_text(CONV_GRAPH, inits)


def matmul_model() -> ir.Model:
    return from_text(MATMUL_GRAPH, [_tensor("W1", 6, 4), _tensor("b1", 4), _tensor("W2", 6, 4)])


def op_counts(model: ir.Model) -> Counter:
    return Counter(node.op_type for node in model.graph)


def flip_targets(model: ir.Model) -> Counter:
    return Counter(node.name.split("/")[1] for node in model.graph if node.op_type == "FlipBits")


def check(model: ir.Model) -> onnx.ModelProto:
    proto = runtime_proto(model)
    onnx.checker.check_model(proto)
    return proto


@pytest.mark.parametrize(
    ("build", "feeds", "ops", "sites"),
    [
        (conv_model, {"x": RNG.random((2, 3, 8, 8), dtype=np.float32)},
         {"Conv": 1, "Relu": 1, "MaxPool": 1, "Flatten": 1, "Gemm": 1, "FlipBits": 7},
         {"weights": 2, "biases": 2, "activations": 3}),
        (matmul_model, {"x": RNG.random((3, 6), dtype=np.float32)},
         {"MatMul": 2, "Add": 1, "Relu": 1, "Sigmoid": 1, "Concat": 1, "FlipBits": 6},
         {"weights": 2, "biases": 1, "activations": 3}),
    ],
)
def test_small_graphs_get_expected_sites_and_p0_is_bit_identical(build, feeds, ops, sites):
    model = build()
    injected = insert_flipbits(model)
    counts = op_counts(injected)
    assert "BatchNormalization" not in counts
    for op, n in ops.items():
        assert counts[op] == n, counts
    assert flip_targets(injected) == Counter(sites)
    check(injected)
    # BatchNorm folding is part of injection: p = 0 reproduces the folded model bit for bit.
    folded = run_model(convert_format(model, format="float32"), feeds, exact=True)[0]
    out = run_model(injected, feeds, exact=True)[0]
    np.testing.assert_array_equal(out, folded)
    np.testing.assert_allclose(out, run_model(model, feeds)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("injected", "transform"), [
    (False, lambda m: insert_flipbits(m, config=InjectionConfig(format="bfloat16"))),
    (False, lambda m: convert_format(m, format="float16")),
    (False, fold_batchnorm),
    (True, lambda m: materialize_parameters(m, {control_input_name("weights", "p01"): np.array(0.5, np.float32)})),
], ids=["insert_flipbits", "convert_format", "fold_batchnorm", "materialize_parameters"])
def test_caller_model_is_not_mutated(injected, transform):
    model = insert_flipbits(conv_model()) if injected else conv_model()
    before = ir.serde.serialize_model(model).SerializeToString()
    result = transform(model)
    assert ir.serde.serialize_model(model).SerializeToString() == before
    assert ir.serde.serialize_model(result).SerializeToString() != before


def test_injection_config_build_shares_one_fault_model_across_the_chosen_targets():
    memory = {"s0": 0.01, "s1": 0.02, "ecc": "secded64", "on_detected": "zero"}
    fault = FaultModel(p01=0.1, p10=0.2, bits="exponent", seed=7, **memory)
    config = InjectionConfig.build(format="float16", targets=("activations", "weights"), fault=fault,
                                   parameter_randomness="per_run")
    assert config.biases is None and config.targets == ("activations", "weights")
    assert config.weights == FaultModel(p01=0.1, p10=0.2, bits="exponent", seed=7, randomness="per_run", **memory)
    assert config.activations == FaultModel(p01=0.1, p10=0.2, bits="exponent", seed=7, randomness="per_run", **memory)
    assert InjectionConfig.build().activations.randomness == "per_run"
    assert InjectionConfig.build().weights.randomness == "fixed"
    with pytest.raises(OnnxflipError, match="unknown target"):
        InjectionConfig.build(targets=("gradients",))


def test_controls_are_graph_inputs_with_defaults_and_settings_are_recorded():
    config = InjectionConfig(activations=FaultModel.symmetric(1e-3, randomness="per_run", seed=4),
                             weights=FaultModel(p01=1e-4, p10=2e-4, seed=9), biases=None)
    injected = insert_flipbits(conv_model(), config=config)
    inputs = {v.name: v for v in injected.graph.inputs}
    assert inputs[control_input_name("weights", "p10")].const_value.numpy() == np.float32(2e-4)
    assert inputs[control_input_name("activations", "seed")].const_value.numpy() == 4
    assert control_input_name("biases", "p01") not in inputs
    assert injected.opset_imports["onnxflip"] == 1
    recorded = json.loads(injected.metadata_props["onnxflip.injection"])
    assert recorded["config"]["weights"]["p10"] == 2e-4
    assert {s["target"] for s in recorded["sites"]} == {"activations", "weights"}
    assert [v.name for v in injected.graph.outputs] == ["y"]
    # The typed record reads what was written, and writes it back unchanged.
    record = InjectionRecord.read(injected)
    assert record.config == config and record.to_json() == recorded
    assert record.coverage is not None and record.coverage.totals() == recorded["coverage"]["totals"]
    assert InjectionRecord.read(conv_model()) is None


def test_a_broken_injection_record_is_one_line():
    model = conv_model()
    model.metadata_props["onnxflip.injection"] = "{not json"
    with pytest.raises(OnnxflipError, match="is not an injection record"):
        InjectionRecord.read(model)


def test_reinjection_is_refused():
    with pytest.raises(OnnxflipError, match="already injected"):
        insert_flipbits(insert_flipbits(conv_model()))


@pytest.mark.parametrize("compute", ["native", "float32"])
@pytest.mark.parametrize("fmt", ["float16", "bfloat16", "float64"])
def test_emulated_formats_store_in_the_format(fmt, compute):
    """Stored in the format, whichever the compute (tests/test_compute.py: how each computes); the converted
    float64 graph is written in ops ONNX Runtime's CPU provider has, as the injection is."""
    model = conv_model()
    feeds = {"x": RNG.random((2, 3, 8, 8), dtype=np.float32)}
    injected = insert_flipbits(model, config=InjectionConfig(format=fmt, compute=compute))
    check(injected)
    flips = [n for n in injected.graph if n.op_type == "FlipBits"]
    assert {n.inputs[0].dtype.name.lower() for n in flips} == {{"float16": "float16", "bfloat16": "bfloat16",
                                                                 "float64": "double"}[fmt]}
    clean = convert_format(model, format=fmt, compute=compute)
    LowerFloat64Pass()(clean)
    out = run_model(injected, feeds, exact=True)[0]
    np.testing.assert_array_equal(out, run_model(clean, feeds, exact=True)[0])
    eps = {"float16": np.finfo(np.float16).eps, "bfloat16": float(ml_dtypes.finfo(ml_dtypes.bfloat16).eps),
           "float64": np.finfo(np.float32).eps}[fmt]
    reference = run_model(model, feeds)[0]
    np.testing.assert_allclose(out, reference, rtol=0, atol=50 * eps * np.abs(reference).max())


def test_materialized_parameters_equal_in_graph_flips():
    model = conv_model()
    feeds = {"x": RNG.random((2, 3, 8, 8), dtype=np.float32)}
    controls = {control_input_name("weights", "p01"): np.array(0.01, np.float32),
                control_input_name("weights", "p10"): np.array(0.01, np.float32),
                control_input_name("weights", "seed"): np.array(3, np.int64)}
    config = InjectionConfig(activations=None, weights=FaultModel(nonfinite="zero"), biases=None)
    injected = insert_flipbits(model, config=config)
    in_graph = run_model(injected, {**feeds, **controls}, exact=True)[0]
    fixed = materialize_parameters(injected, controls)
    assert "FlipBits" not in op_counts(fixed)
    np.testing.assert_array_equal(run_model(fixed, feeds, exact=True)[0], in_graph)
    assert not np.array_equal(in_graph, run_model(model, feeds, exact=True)[0])


@pytest.mark.parametrize("given", [False, True])
def test_materialising_drops_flips_at_p0_only_when_the_trial_fixes_their_probabilities(given):
    """Activations' rates left to be fed at run time keep their FlipBits; given as 0 for the trial, they go."""
    model = conv_model()
    feeds = {"x": RNG.random((2, 3, 8, 8), dtype=np.float32)}
    injected = insert_flipbits(model, config=InjectionConfig(weights=None, biases=None))
    zero = {control_input_name("activations", w): np.array(0.0, np.float32) for w in ("p01", "p10", "s0", "s1")}
    fixed = materialize_parameters(injected, zero if given else None)
    assert flip_targets(fixed)["activations"] == (1 if given else 3)  # the logits, a graph output, stay
    clean = run_model(injected, feeds, exact=True)[0]
    noisy = {control_input_name("activations", w): np.array(0.3, np.float32) for w in ("p01", "p10")}
    assert not np.array_equal(run_model(fixed, {**feeds, **noisy}, exact=True)[0], clean)
    np.testing.assert_array_equal(run_model(fixed, feeds, exact=True)[0], clean)


def test_selection_by_op_type_pattern_and_every_intermediate():
    model = conv_model()
    only_pool = insert_flipbits(model, config=InjectionConfig(weights=None, biases=None,
                                                              selection=Selection(activation_ops=("MaxPool",))))
    assert flip_targets(only_pool) == Counter({"activations": 2})  # the MaxPool output and the logits
    excluded = insert_flipbits(model, config=InjectionConfig(selection=Selection(exclude="^(W|G)")))
    assert flip_targets(excluded)["weights"] == 0
    every = insert_flipbits(model, config=InjectionConfig(weights=None, biases=None,
                                                          selection=Selection(every_intermediate=True)))
    assert flip_targets(every)["activations"] == 5  # conv, relu, pool, flatten, gemm outputs
    with pytest.raises(OnnxflipError, match="unknown ONNX op type"):
        Selection(activation_ops=("Relu", "Frobnicate"))
    with pytest.raises(OnnxflipError, match="no site matches"):
        insert_flipbits(model, config=InjectionConfig(selection=Selection(include="nothing-is-called-this")))


def test_int8_needs_a_qdq_model():
    with pytest.raises(OnnxflipError, match="QDQ"):
        insert_flipbits(conv_model(), config=InjectionConfig(format="int8"))


# --- models exported from torch -----------------------------------------------------------------


def test_vgg_default_sites_match_inspect_and_p0_is_bit_identical(vgg_path, images):
    from onnxflip.report.sites_table import describe_sites

    model = load_model(vgg_path)
    injected = insert_flipbits(model)
    rows, _ = describe_sites(vgg_path, config=InjectionConfig())
    assert Counter(r["target"] for r in rows) == flip_targets(injected) == Counter(
        {"weights": 10, "biases": 10, "activations": 15})
    feeds = {"input": images}
    reference = run_model(model, feeds, exact=True)[0]
    np.testing.assert_array_equal(run_model(injected, feeds, exact=True)[0], reference)
    np.testing.assert_array_equal(run_model(materialize_parameters(injected), feeds)[0], run_model(model, feeds)[0])


@pytest.mark.parametrize("bit", [3, 27, 31])
def test_forced_flip_of_one_bit_at_one_site_matches_numpy(vgg_path, images, bit):
    model = load_model(vgg_path)
    site = "features.3.weight"
    config = InjectionConfig(activations=None, biases=None, weights=FaultModel(p01=1.0, p10=1.0, bits=1 << bit),
                             selection=Selection(include=f"^{site}$"))
    injected = insert_flipbits(model, config=config)
    assert flip_targets(injected) == Counter({"weights": 1})
    edited = model.clone()
    tensor = edited.graph.initializers[site]
    flipped = tensor.const_value.numpy().view(np.uint32) ^ np.uint32(1 << bit)
    tensor.const_value = ir.tensor(flipped.view(np.float32), name=site)
    feeds = {"input": images}
    np.testing.assert_array_equal(run_model(injected, feeds, exact=True)[0],
                                  run_model(edited, feeds, exact=True)[0])


def test_int8_qdq_sites_and_p0_is_bit_identical(qdq_path, images):
    model = load_model(qdq_path)
    injected = insert_flipbits(model, config=InjectionConfig(format="int8"))
    check(injected)
    flips = {n.name.split("/")[1]: n.inputs[0].dtype for n in injected.graph if n.op_type == "FlipBits"}
    # int8 weights and activations are stored as uint8 offset binary (graph.passes.qlinear), each with a second
    # node for the sign bit
    assert flips == {"weights": ir.DataType.UINT8, "biases": ir.DataType.INT32, "activations": ir.DataType.UINT8}
    sign_bits = Counter(n.name.split("/")[1] for n in injected.graph if n.name.endswith("/sign_bit"))
    assert sign_bits == Counter({"weights": 10, "activations": 15})
    assert flip_targets(injected) - sign_bits == Counter({"weights": 10, "biases": 10, "activations": 15})
    feeds = {"input": images}
    # what ONNX Runtime computes for the clean model with its int8 tensors stored as uint8 (exact integer kernels)
    clean = run_model(StoreInt8AsUint8Pass()(model.clone()).model, feeds)[0]
    np.testing.assert_array_equal(run_model(injected, feeds)[0], clean)
    np.testing.assert_array_equal(run_model(materialize_parameters(injected), feeds)[0], clean)
    # A trial at p = 0, as the evaluator builds it: every target's probabilities given.  Materialising removes
    # every FlipBits (weights, biases and activations, sign-bit nodes included): what is left computes `clean`.
    trial = {control_input_name(t, w): np.array(0.0, np.float32) for t in TARGETS for w in ("p01", "p10", "s0", "s1")}
    at_zero = materialize_parameters(injected, trial)
    assert not any(n.op_type == "FlipBits" for n in at_zero.graph)
    np.testing.assert_array_equal(run_model(at_zero, feeds)[0], clean)
    with pytest.raises(OnnxflipError, match="quantised"):
        insert_flipbits(model, config=InjectionConfig(format="float32"))


class _TinyResNet:
    @staticmethod
    def build():
        import torch
        from torch import nn

        class Block(nn.Module):
            def __init__(self, c):
                super().__init__()
                self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
                self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

            def forward(self, x):
                y = torch.relu(self.bn1(self.conv1(x)))
                return torch.relu(x + self.bn2(self.conv2(y)))

        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), Block(8), Block(8),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


class _TinyMobileNet:
    @staticmethod
    def build():
        from torch import nn

        def separable(cin, cout, stride):
            return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(),
                    nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()]

        return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU6(), *separable(8, 16, 1), *separable(16, 32, 2),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


@pytest.mark.parametrize("net", [_TinyResNet, _TinyMobileNet], ids=["resnet", "mobilenet"])
def test_other_architectures_with_dynamic_batch(net, tmp_path):
    needs_zoo_extra()
    import torch

    torch.manual_seed(0)
    module = net.build().eval()
    for layer in module.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.running_mean.uniform_(-0.1, 0.1)
            layer.bias.data.uniform_(-0.1, 0.1)
    path = tmp_path / "net.onnx"
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(module, (torch.rand(2, 3, 16, 16),), input_names=["x"], output_names=["y"],
                                dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
    onnx.save(runtime_proto(program.model_proto), path)
    model = load_model(path)
    injected = insert_flipbits(model)
    counts = flip_targets(injected)
    assert counts["weights"] >= 5 and counts["biases"] >= 5 and counts["activations"] >= 5
    assert "BatchNormalization" not in op_counts(injected)
    if net is _TinyResNet:
        adds = [n for n in injected.graph if n.op_type == "Add"]
        assert adds and all(n.outputs[0].uses() for n in adds)
    for n in (1, 3):
        feeds = {"x": np.random.default_rng(n).random((n, 3, 16, 16), dtype=np.float32)}
        np.testing.assert_array_equal(run_model(injected, feeds, exact=True)[0], run_model(model, feeds, exact=True)[0])
        noisy = run_model(injected, {**feeds, control_input_name("activations", "p01"): np.array(0.01, np.float32)},
                          exact=True)[0]
        assert noisy.shape == (n, 10) and not np.array_equal(noisy, run_model(model, feeds, exact=True)[0])


def test_a_plain_onnxruntime_session_runs_an_injected_model_with_the_library_path(tmp_path):
    """The README's recipe: register onnxflip.get_library_path() with SessionOptions, nothing else."""
    import onnxruntime

    import onnxflip

    path = tmp_path / "noisy.onnx"
    save_model(insert_flipbits(conv_model(), config=InjectionConfig(activations=FaultModel.symmetric(0.5, seed=1))),
               path)
    options = onnxruntime.SessionOptions()
    options.register_custom_ops_library(onnxflip.get_library_path())
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    (noisy,) = session.run(None, {"x": x})
    clean = run_model(convert_format(conv_model(), format="float32"), {"x": x})[0]
    assert noisy.shape == clean.shape == (2, 5)
    assert not np.array_equal(noisy, clean)

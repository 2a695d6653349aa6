"""Stored tensors behind chains and constants, old IR versions, integer quantised forms, and coverage.

Each model is written here from ONNX text or onnx.helper; each test checks a
number the model determines: which tensors are sites (once), that p = 0 keeps
the outputs, that flips happen (activations of an IR-3 model too), and what
``inspect`` reports as coverage.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import onnx
import pytest
from conftest import model_from_text, popcount, raw, run_model, write_unloadable_model
from onnx import helper, numpy_helper

from onnxflip.cli import main
from onnxflip.faults import FaultModel
from onnxflip.graph import InjectionConfig, control_input_name, insert_flipbits
from onnxflip.graph.inject import plan_sites, site_coverage
from onnxflip.graph.record import METADATA_KEY
from onnxflip.modelio import load_model, save_model

RNG = np.random.default_rng(5)


def _array(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.3).astype(np.float32)


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _classic_cnn(ir_version: int) -> onnx.ModelProto:
    """A model-zoo-style CNN: the conv weight in a Constant, a zero bias from ConstantOfShape, the head's
    weight an initializer read through Transpose (and, at IR 3, listed as a graph input as IR 3 requires)."""
    head = numpy_helper.from_array(_array(10, 128), "W2")
    nodes = [
        helper.make_node("Constant", [], ["W1"], value=numpy_helper.from_array(_array(8, 3, 3, 3))),
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([8], np.int64))),
        helper.make_node("ConstantOfShape", ["shape"], ["B1"], value=numpy_helper.from_array(np.zeros(1, np.float32))),
        helper.make_node("Conv", ["x", "W1", "B1"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["m"], ["f"]),
        helper.make_node("Transpose", ["W2"], ["W2t"]),
        helper.make_node("MatMul", ["f", "W2t"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])]
    if ir_version < 4:
        inputs.append(helper.make_tensor_value_info("W2", onnx.TensorProto.FLOAT, [10, 128]))
    graph = helper.make_graph(nodes, "classic", inputs, [helper.make_tensor_value_info("y", 1, ["N", 10])], [head])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=ir_version)


@pytest.fixture(params=[3, 7], ids=["ir3", "ir7"])
def classic(request, tmp_path) -> pathlib.Path:
    path = tmp_path / "classic.onnx"
    proto = _classic_cnn(request.param)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def test_constant_and_constant_of_shape_parameters_are_sites_and_p0_keeps_the_outputs(classic):
    model = load_model(classic)
    prepared, _, sites = plan_sites(model, InjectionConfig())
    parameters = {s.name: s.target for s in sites if s.target != "activations"}
    assert parameters == {"W1": "weights", "B1": "biases", "W2": "weights"}
    assert site_coverage(prepared, sites, InjectionConfig()).totals()["float"]["share_elements"] == 1.0
    x = RNG.random((4, 3, 8, 8), dtype=np.float32)
    (clean,) = run_model(classic, {"x": x})
    (injected,) = run_model(insert_flipbits(model), {"x": x}, exact=True)
    np.testing.assert_allclose(injected, clean, rtol=1e-5, atol=1e-6)


def test_activations_of_an_ir3_model_flip_in_evaluate(classic, tmp_path, capsys):
    data = tmp_path / "data.npz"
    np.savez(data, x=RNG.random((64, 3, 8, 8), dtype=np.float32))
    code, _, err = _cli(capsys, "evaluate", str(classic), "--data", str(data), "--metric", "agreement",
                        "--targets", "activations", "--p", "0,3e-2", "--trials", "2", "--out", str(tmp_path / "r"))
    assert code == 0, err
    rows = {row["p"]: row["mean"] for row in json.loads((tmp_path / "r" / "results.json").read_text())["rows"]}
    assert rows[0.0] == 1.0 and rows[3e-2] < 0.9


def test_a_control_input_a_trial_cannot_feed_is_an_error(tmp_path, capsys):
    """An injected model written at IR 3 (every initializer also an input, none of them feedable in ONNX
    Runtime): evaluating it at p > 0 would run its activations' FlipBits on their zero defaults."""
    clean = tmp_path / "classic.onnx"
    onnx.save(_classic_cnn(7), str(clean))
    injected = insert_flipbits(load_model(clean), config=InjectionConfig.build(targets=("activations",)))
    proto = save_and_read(injected, tmp_path)
    proto.ir_version = 3
    declared = {v.name for v in proto.graph.input}
    proto.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in proto.graph.initializer if t.name not in declared)
    old = tmp_path / "old_injected.onnx"
    onnx.save(proto, str(old))
    data = tmp_path / "data.npz"
    np.savez(data, x=RNG.random((8, 3, 8, 8), dtype=np.float32))
    code, _, err = _cli(capsys, "evaluate", str(old), "--data", str(data), "--metric", "agreement", "--p", "1e-2",
                        "--trials", "1", "--out", str(tmp_path / "r"))
    assert code == 1 and err.count("\n") == 1
    assert control_input_name("activations", "p01") in err and "would not flip" in err


def save_and_read(model, folder: pathlib.Path) -> onnx.ModelProto:
    path = folder / "injected.onnx"
    save_model(model, path)
    return onnx.load(str(path))


TIED = """<ir_version: 10, opset_import: ["" : 21]>
g (int64[N,5] ids) => (float[N,5,12] logits) <float[12,8] wte, float[8] gamma, float[8] beta> {
  e = Gather (wte, ids)
  n = LayerNormalization <axis = -1> (e, gamma, beta)
  t = Transpose <perm = [1, 0]> (wte)
  logits = MatMul (n, t)
}"""


def test_a_tied_embedding_is_one_site_flipped_once():
    """The embedding table read by Gather and, transposed, by the LM head is one memory: one site, and both
    readers see the same flipped bits (the injected model computes what the original computes with the
    flipped table and scale)."""
    arrays = {"wte": _array(12, 8), "gamma": np.ones(8, np.float32), "beta": np.zeros(8, np.float32)}
    model = onnx_ir_model(model_from_text(TIED, [numpy_helper.from_array(a, n) for n, a in arrays.items()]))
    _, _, sites = plan_sites(model, InjectionConfig())
    assert [(s.name, s.target) for s in sites if s.target != "activations"] == [
        ("wte", "weights"), ("gamma", "weights"), ("beta", "biases")]
    config = InjectionConfig.build(targets=("weights",), fault=FaultModel.symmetric(0.05, bits="mantissa"))
    injected = insert_flipbits(model, config=config)
    assert sorted(n.inputs[0].name for n in injected.graph if n.op_type == "FlipBits") == ["gamma", "wte"]
    flipped = {name: _flipped(injected, name) for name in ("wte", "gamma")}
    assert popcount(raw(flipped["wte"]) ^ raw(arrays["wte"])) > 0
    ids = (np.arange(10, dtype=np.int64).reshape(2, 5) * 5) % 12
    (logits,) = run_model(injected, {"ids": ids}, exact=True)
    reference = model_from_text(TIED, [numpy_helper.from_array({**arrays, **flipped}[n], n) for n in arrays])
    (expected,) = run_model(reference, {"ids": ids}, exact=True)
    np.testing.assert_array_equal(logits, expected)


def onnx_ir_model(proto: onnx.ModelProto):
    import onnx_ir as ir

    return ir.serde.deserialize_model(proto)


def _flipped(model, name: str) -> np.ndarray:
    """The value FlipBits computes from initializer ``name`` (its fixed flips, materialised)."""
    from onnxflip.graph.passes.materialize import materialize_parameters

    (value,) = [v for v in materialize_parameters(model).graph.initializers.values() if v.name == f"{name}_flipped_trial"]
    return value.const_value.numpy()


DYNAMIC_HEAD = """<ir_version: 10, opset_import: ["" : 21]>
g (float[N,4] x) => (float[N,3] y) <int8[4,3] Wq, float Ws, int8 Wz, float[3] B> {
  xq, xs, xz = DynamicQuantizeLinear (x)
  h = MatMulInteger (xq, Wq, xz, Wz)
  hf = Cast <to = 1> (h)
  s = Mul (xs, Ws)
  hs = Mul (hf, s)
  y = Add (hs, B)
}"""


def test_dynamic_quantisation_roles_and_coverage(tmp_path, capsys):
    """quantize_dynamic's form: the int8 weight is a weight site, the float bias a bias site, the weight's
    scale and zero point qparams (not in the defaults), the quantised input uint8 an activation site."""
    tensors = [numpy_helper.from_array(RNG.integers(-100, 100, (4, 3)).astype(np.int8), "Wq"),
               numpy_helper.from_array(np.array(0.02, np.float32), "Ws"),
               numpy_helper.from_array(np.array(0, np.int8), "Wz"), numpy_helper.from_array(_array(3), "B")]
    path = tmp_path / "dynamic.onnx"
    onnx.save(model_from_text(DYNAMIC_HEAD, tensors), str(path))
    code, out, err = _cli(capsys, "inspect", str(path), "--json")
    assert code == 0, err
    listing = json.loads(out)
    assert {(r["tensor"], r["target"], r["dtype"]) for r in listing["sites"]} == {
        ("Wq", "weights", "int8"), ("B", "biases", "float32"), ("y", "activations", "float32")}
    not_sites = {r["tensor"]: r["reason"] for r in listing["coverage"]["parameters"] if r["target"] is None}
    assert set(not_sites) == {"Ws", "Wz"} and all("qparams not selected" in r for r in not_sites.values())
    totals = listing["coverage"]["totals"]["all"]
    assert totals["elements"] == 12 + 1 + 1 + 3 and totals["share_elements"] == pytest.approx(15 / 17)
    code, out, _ = _cli(capsys, "inspect", str(path), "--json", "--targets", "weights,biases,qparams")
    assert {r["tensor"] for r in json.loads(out)["sites"]} == {"Wq", "B", "Ws", "Wz"}


def test_inspect_names_each_parameter_that_is_not_a_site_and_why(tmp_path, capsys):
    text = """<ir_version: 10, opset_import: ["" : 21]>
    g (float[N,4] x) => (float[N,3] y) <float[4] mean, float[4,3] W, float[3] B, float half, int64[2] shape> {
      c = Sub (x, mean)
      h = MatMul (c, W)
      a = Add (h, B)
      s = Mul (a, half)
      y = Reshape (s, shape)
    }"""
    tensors = [numpy_helper.from_array(a, n) for a, n in ((_array(4), "mean"), (_array(4, 3), "W"), (_array(3), "B"),
                                                          (np.array(0.5, np.float32), "half"),
                                                          (np.array([-1, 3], np.int64), "shape"))]
    path = tmp_path / "m.onnx"
    onnx.save(model_from_text(text, tensors), str(path))
    code, out, _ = _cli(capsys, "inspect", str(path), "--exclude", "^B$")
    assert code == 0
    lines = out.splitlines()
    reasons = {line.split()[0]: line for line in lines if line.startswith("  ") and line.split()[0] in
               ("mean", "half", "B", "shape")}
    assert "input preprocessing" in reasons["mean"] and "operator's constant" in reasons["half"]
    assert "excluded by the selection" in reasons["B"] and "shape" not in reasons  # shapes are no parameters
    assert any(line.startswith("  all sites: ") and "12 " not in line for line in lines)
    (totals,) = [line for line in lines if line.startswith("coverage of the")]
    assert totals.startswith("coverage of the 4 stored parameter tensors (20 elements, 640 bits")
    code, out, _ = _cli(capsys, "inspect", str(path), "--json")
    (shape,) = json.loads(out)["coverage"]["not_data"]
    assert code == 0 and shape["tensor"] == "shape" and shape["reason"].startswith("shape, index or mask data")


def test_an_injected_model_records_its_coverage(tmp_path, capsys):
    path = tmp_path / "classic.onnx"
    onnx.save(_classic_cnn(7), str(path))
    out = tmp_path / "injected.onnx"
    assert _cli(capsys, "inject", str(path), "-o", str(out), "--targets", "weights", "--p", "1e-3")[0] == 0
    record = json.loads(load_model(out).metadata_props[METADATA_KEY])
    rows = {r["tensor"]: (r["target"], r["reason"]) for r in record["coverage"]["parameters"]}
    assert rows == {"W1": ("weights", ""), "B1": (None, "target biases not selected"), "W2": ("weights", "")}
    code, listing, _ = _cli(capsys, "inspect", str(out), "--json")
    assert code == 0 and json.loads(listing)["coverage"] == record["coverage"]


def test_the_scales_and_zero_points_of_a_qdq_model_are_a_target_of_their_own(tmp_path, capsys):
    """qparams: not flipped by default; asked for, every scale and zero point is a site and flips lower the
    agreement of the shipped int8 VGG-11."""
    model = pathlib.Path(__file__).parent.parent / "models" / "vgg11_int8.onnx"
    code, out, _ = _cli(capsys, "inspect", str(model), "--json")
    default = json.loads(out)
    qparams = [r for r in default["coverage"]["parameters"] if r["reason"].startswith("target qparams not selected")]
    assert code == 0 and qparams and not any(r["target"] == "qparams" for r in default["sites"])
    code, out, _ = _cli(capsys, "inspect", str(model), "--json", "--targets", "qparams")
    assert code == 0 and {r["tensor"] for r in json.loads(out)["sites"]} == {r["tensor"] for r in qparams}
    data = tmp_path / "images.npz"
    np.savez(data, input=RNG.random((32, 3, 32, 32), dtype=np.float32))
    code, _, err = _cli(capsys, "evaluate", str(model), "--data", str(data), "--metric", "agreement", "--targets",
                        "qparams", "--p", "0,1e-2", "--trials", "2", "--out", str(tmp_path / "r"))
    assert code == 0, err
    rows = {row["p"]: row["mean"] for row in json.loads((tmp_path / "r" / "results.json").read_text())["rows"]}
    assert rows[0.0] == 1.0 and rows[1e-2] < 1.0


def test_evaluate_of_an_injected_model_measures_and_records_what_it_holds(tmp_path, capsys):
    """An injected model flips what it was injected with: other --targets or --bits are refused in one line,
    and without them the results record the model's targets and bits, not evaluate's defaults."""
    clean = tmp_path / "classic.onnx"
    onnx.save(_classic_cnn(7), str(clean))
    injected = tmp_path / "weights.onnx"
    assert _cli(capsys, "inject", str(clean), "-o", str(injected), "--targets", "weights", "--bits", "mantissa")[0] == 0
    data = tmp_path / "data.npz"
    np.savez(data, x=RNG.random((8, 3, 8, 8), dtype=np.float32))
    common = ["evaluate", str(injected), "--data", str(data), "--metric", "agreement", "--p", "0,1e-2", "--trials", "1"]
    for extra in (["--targets", "activations"], ["--bits", "exponent"]):
        code, _, err = _cli(capsys, *common, "--out", str(tmp_path / "refused"), *extra)
        assert code == 1 and err.count("\n") == 1 and "the model is injected with" in err
        assert not (tmp_path / "refused").exists()
    code, _, err = _cli(capsys, *common, "--out", str(tmp_path / "r"))
    assert code == 0, err
    result = json.loads((tmp_path / "r" / "results.json").read_text())
    assert result["settings"]["targets"] == ["weights"] and result["settings"]["bits"] == "mantissa"
    assert result["exposure"]["sites"] == {"weights": 2}


LSTM_MODEL = """<ir_version: 10, opset_import: ["" : 21]>
g (float[5,N,3] x) => (float[5,1,N,4] y, float[1,N,4] h) <float[1,16,3] W, float[1,16,4] R, float[1,32] B> {
  y, h = LSTM <hidden_size = 4> (x, W, R, B)
}"""


def test_a_recurrent_layer_stores_its_weights_recurrences_and_biases():
    tensors = [numpy_helper.from_array(a, n) for a, n in ((_array(1, 16, 3), "W"), (_array(1, 16, 4), "R"),
                                                          (_array(1, 32), "B"))]
    model = onnx_ir_model(model_from_text(LSTM_MODEL, tensors))
    _, _, sites = plan_sites(model, InjectionConfig())
    assert [(s.name, s.target) for s in sites] == [("W", "weights"), ("R", "weights"), ("B", "biases"),
                                                   ("y", "activations"), ("h", "activations")]


def _activation_names(text: str, tensors: list, *, format: str = "float32") -> list[str]:
    model = onnx_ir_model(model_from_text(text, tensors))
    _, _, sites = plan_sites(model, InjectionConfig.build(targets=("activations",), format=format))
    return [s.name for s in sites]


def test_each_written_activation_is_one_site_and_an_unread_one_none():
    """A graph output that only renames a site (Identity) is the same memory; a recurrent layer's final state
    that nothing reads cannot change any output; a float16 model's logits, cast to float32 as its output, are
    stored in float16."""
    identity = """<ir_version: 10, opset_import: ["" : 21]>
    g (float[N,4] x) => (float[N,3] y) <float[4,3] W> {
      h = MatMul (x, W)
      s = Softmax (h)
      y = Identity (s)
    }"""
    assert _activation_names(identity, [numpy_helper.from_array(_array(4, 3), "W")]) == ["s"]
    unread = LSTM_MODEL.replace("(float[5,1,N,4] y, float[1,N,4] h)", "(float[5,1,N,4] y)")
    tensors = [numpy_helper.from_array(a, n) for a, n in ((_array(1, 16, 3), "W"), (_array(1, 16, 4), "R"),
                                                          (_array(1, 32), "B"))]
    assert _activation_names(unread, tensors) == ["y"]
    cast = """<ir_version: 10, opset_import: ["" : 21]>
    g (float16[N,4] x) => (float[N,3] y) <float16[4,3] W> {
      h = MatMul (x, W)
      y = Cast <to = 1> (h)
    }"""
    w16 = numpy_helper.from_array(_array(4, 3).astype(np.float16), "W")
    assert _activation_names(cast, [w16], format="float16") == ["h"]


def test_inspect_counts_the_activations_of_a_fixed_batch_model_per_batch(tmp_path, capsys):
    text = """<ir_version: 10, opset_import: ["" : 21]>
    g (float[4,6] x) => (float[4,3] y) <float[6,3] W> {
      h = MatMul (x, W)
      y = Relu (h)
    }"""
    path = tmp_path / "fixed.onnx"
    onnx.save(model_from_text(text, [numpy_helper.from_array(_array(6, 3), "W")]), str(path))
    code, out, _ = _cli(capsys, "inspect", str(path))
    assert code == 0 and "activations: 1 sites, 12 elements, 384 flippable bits (per batch of 4)" in out


def test_gelu_and_layer_norm_written_out_are_the_same_sites_as_their_ops():
    """An exporter before opset 17/20 spells LayerNormalization and GELU out in elementary ops: the value each
    ends with is the activation site the fused op's output would be."""
    fused = """<ir_version: 10, opset_import: ["" : 21]>
    g (float[N,4] x) => (float[N,4] y) <float[4,4] W, float[4] gamma, float[4] beta> {
      h = MatMul (x, W)
      n = LayerNormalization <axis = -1> (h, gamma, beta)
      y = Gelu (n)
    }"""
    spelled = """<ir_version: 10, opset_import: ["" : 17]>
    g (float[N,4] x) => (float[N,4] y) <float[4,4] W, float[4] gamma, float[4] beta, float two, float eps,
                                        float root2, float one, float half> {
      h = MatMul (x, W)
      mean = ReduceMean <axes = [-1]> (h)
      d = Sub (h, mean)
      sq = Pow (d, two)
      var = ReduceMean <axes = [-1]> (sq)
      ve = Add (var, eps)
      sd = Sqrt (ve)
      z = Div (d, sd)
      zs = Mul (z, gamma)
      n = Add (zs, beta)
      a = Div (n, root2)
      e = Erf (a)
      e1 = Add (e, one)
      m = Mul (n, e1)
      y = Mul (m, half)
    }"""
    arrays = {"W": _array(4, 4), "gamma": _array(4), "beta": _array(4)}
    scalars = {"two": 2.0, "eps": 1e-5, "root2": 2**0.5, "one": 1.0, "half": 0.5}
    tensors = [numpy_helper.from_array(a, n) for n, a in arrays.items()]
    assert _activation_names(fused, tensors) == ["n", "y"]
    scalar_tensors = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in scalars.items()]
    assert _activation_names(spelled, tensors + scalar_tensors) == ["n", "y"]


def test_a_sparse_constant_is_refused_in_one_line_with_the_reason(tmp_path, capsys):
    values = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "Wv")
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(np.array([0, 5], np.int64)), [3, 3])
    nodes = [helper.make_node("Constant", [], ["W"], sparse_value=sparse), helper.make_node("MatMul", ["x", "W"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, ["N", 3])],
                              [helper.make_tensor_value_info("y", 1, ["N", 3])])
    path = tmp_path / "sparse.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    for command in ("inspect", "inject"):
        code, _, err = _cli(capsys, command, str(path), *(["-o", str(tmp_path / "o.onnx")] if command == "inject" else []))
        assert code == 1 and err.count("\n") == 1 and "holds a sparse tensor" in err


def test_a_model_onnx_runtime_cannot_load_is_refused_with_its_reason(tmp_path, capsys):
    """onnx.checker accepts it, ONNX Runtime has no kernel for it: inject writes nothing, evaluate says why."""
    path = write_unloadable_model(tmp_path / "m.onnx")
    out = tmp_path / "injected.onnx"
    code, _, err = _cli(capsys, "inject", str(path), "-o", str(out), "--p", "1e-3")
    assert code == 1 and err.count("\n") == 1 and "ONNX Runtime cannot load the model" in err and not out.exists()
    data = tmp_path / "x.npz"
    np.savez(data, x=RNG.random((4, 4)))
    code, _, err = _cli(capsys, "evaluate", str(path), "--data", str(data), "--metric", "rel-error", "--p", "1e-3",
                        "--trials", "1", "--out", str(tmp_path / "r"))
    assert code == 1 and err.count("\n") == 1 and "ONNX Runtime cannot load the model" in err


def test_inspect_says_how_many_batch_norms_it_folded(tmp_path, capsys):
    text = """<ir_version: 10, opset_import: ["" : 21]>
    g (float[N,3,8,8] x) => (float[N,4,8,8] y) <float[4,3,3,3] W, float[4] scale, float[4] shift, float[4] mean,
                                                 float[4] var> {
      c = Conv <pads = [1, 1, 1, 1]> (x, W)
      n = BatchNormalization (c, scale, shift, mean, var)
      y = Relu (n)
    }"""
    arrays = {"W": _array(4, 3, 3, 3), "scale": _array(4), "shift": _array(4), "mean": _array(4),
              "var": np.abs(_array(4)) + 0.5}
    path = tmp_path / "bn.onnx"
    onnx.save(model_from_text(text, [numpy_helper.from_array(a, n) for n, a in arrays.items()]), str(path))
    code, out, _ = _cli(capsys, "inspect", str(path))
    assert code == 0 and "1 BatchNormalization layers are folded into the Conv before them" in out
    code, out, _ = _cli(capsys, "inspect", str(path), "--no-fold-batchnorm")
    assert code == 0 and "folded" not in out and "var " in out.split("coverage of")[0]

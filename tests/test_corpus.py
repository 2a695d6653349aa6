"""A corpus of unusual but valid models (and a few broken ones), each through every command.

One builder per case writes the model to a folder; the tests run ``inspect``,
``inject`` (p = 0), ``convert`` and, where it applies, ``quantize`` through
the command line.  A case either works, with p = 0 outputs within 1e-6
relative of the original and the number of sites per target as stated, or
gives one line of error and exit status 1.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable

import numpy as np
import onnx
import pytest
from conftest import model_from_text

from onnxflip import make_session
from onnxflip.cli import main
from onnxflip.graph.inputs import batch_dimension
from onnxflip.modelio import external_data_path, load_model

RNG = np.random.default_rng(0)
OPSET = '<ir_version: 10, opset_import: ["" : 21]>'


def _tensors(dtype=np.float32, **shapes: tuple[int, ...]) -> list[onnx.TensorProto]:
    """Random initializers; names starting with ``var`` are positive (BatchNorm variances)."""
    out = []
    for name, shape in shapes.items():
        array = RNG.standard_normal(shape).astype(dtype)
        if name.startswith("var"):
            array = np.abs(array) + dtype(0.5)
        out.append(onnx.numpy_helper.from_array(array, name))
    return out


def _save(proto: onnx.ModelProto, folder: pathlib.Path, name: str = "model.onnx", **kwargs) -> pathlib.Path:
    path = folder / name
    onnx.save(proto, str(path), **kwargs)
    return path


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"scale{prefix}": (channels,), f"shift{prefix}": (channels,), f"mean{prefix}": (channels,),
            f"var{prefix}": (channels,)}


CLASSIFIER = """
g (float[{batch},3,32,32] x) => (float[{batch},10] y) <float[4,3,3,3] W, float[4] B, float[10,4] G, float[10] C> {{
  c = Conv <pads = [1, 1, 1, 1]> (x, W, B)
  r = Relu (c)
  p = GlobalAveragePool (r)
  f = Flatten (p)
  y = Gemm <transB = 1> (f, G, C)
}}"""


def classifier(batch: str = "N") -> onnx.ModelProto:
    return model_from_text(OPSET + CLASSIFIER.format(batch=batch),
                           _tensors(W=(4, 3, 3, 3), B=(4,), G=(10, 4), C=(10,)))


# --- builders: each writes the case's model into a folder and returns its path ----------------------


def opset11_bn(folder):
    text = """<ir_version: 6, opset_import: ["" : 11]>
    g (float[N,3,8,8] x) => (float[N,5] y)
    <float[4,3,3,3] W, float[4] scale, float[4] shift, float[4] mean, float[4] var, float[5,4] G, float[5] C> {
      c = Conv <pads = [1, 1, 1, 1]> (x, W)
      n = BatchNormalization (c, scale, shift, mean, var)
      r = Relu (n)
      p = GlobalAveragePool (r)
      f = Flatten (p)
      y = Gemm <transB = 1> (f, G, C)
    }"""
    return _save(model_from_text(text, _tensors(W=(4, 3, 3, 3), **_bn("", 4), G=(5, 4), C=(5,))), folder)


def int64_input(folder):
    text = OPSET + """
    g (int64[N,4] ids) => (float[N,4,5] y) <float[10,6] E, float[6,5] W, float[5] b> {
      e = Gather (E, ids)
      h = MatMul (e, W)
      a = Add (h, b)
      y = Relu (a)
    }"""
    return _save(model_from_text(text, _tensors(E=(10, 6), W=(6, 5), b=(5,))), folder)


def two_inputs_two_outputs(folder):
    text = OPSET + """
    g (float[N,4] x1, float[N,4] x2) => (float[N,3] y1, float[N,3] y2) <float[4,3] W1, float[4,3] W2> {
      h1 = MatMul (x1, W1)
      h2 = MatMul (x2, W2)
      s = Add (h1, h2)
      y1 = Relu (s)
      y2 = Tanh (h2)
    }"""
    return _save(model_from_text(text, _tensors(W1=(4, 3), W2=(4, 3))), folder)


def nhwc(folder):
    text = OPSET + """
    g (float[N,8,8,3] x) => (float[N,8,8,4] y) <float[4,3,3,3] W, float[4] B> {
      t = Transpose <perm = [0, 3, 1, 2]> (x)
      c = Conv <pads = [1, 1, 1, 1]> (t, W, B)
      r = Relu (c)
      y = Transpose <perm = [0, 2, 3, 1]> (r)
    }"""
    return _save(model_from_text(text, _tensors(W=(4, 3, 3, 3), B=(4,))), folder)


def depthwise(folder):
    text = OPSET + """
    g (float[N,3,8,8] x) => (float[N,3,1,1] y) <float[3,1,3,3] W, float[3] B> {
      c = Conv <group = 3, pads = [1, 1, 1, 1]> (x, W, B)
      r = Relu (c)
      y = GlobalAveragePool (r)
    }"""
    return _save(model_from_text(text, _tensors(W=(3, 1, 3, 3), B=(3,))), folder)


def conv_transpose(folder):
    text = OPSET + """
    g (float[N,3,4,4] x) => (float[N,4,8,8] y) <float[3,4,2,2] W, float[4] B> {
      c = ConvTranspose <strides = [2, 2]> (x, W, B)
      y = Relu (c)
    }"""
    return _save(model_from_text(text, _tensors(W=(3, 4, 2, 2), B=(4,))), folder)


def shared_weights(folder):
    text = OPSET + """
    g (float[N,3,8,8] x) => (float[N,4,8,8] y) <float[4,3,3,3] W> {
      c1 = Conv <pads = [1, 1, 1, 1]> (x, W)
      c2 = Conv <pads = [2, 2, 2, 2], dilations = [2, 2]> (x, W)
      s = Add (c1, c2)
      y = Relu (s)
    }"""
    return _save(model_from_text(text, _tensors(W=(4, 3, 3, 3))), folder)


def shared_weight_two_batchnorms(folder):
    text = OPSET + """
    g (float[N,3,8,8] x) => (float[N,4,8,8] y) <float[4,3,3,3] W, float[4] scale1, float[4] shift1, float[4] mean1,
      float[4] var1, float[4] scale2, float[4] shift2, float[4] mean2, float[4] var2> {
      c1 = Conv <pads = [1, 1, 1, 1]> (x, W)
      n1 = BatchNormalization (c1, scale1, shift1, mean1, var1)
      c2 = Conv <pads = [2, 2, 2, 2], dilations = [2, 2]> (x, W)
      n2 = BatchNormalization (c2, scale2, shift2, mean2, var2)
      s = Add (n1, n2)
      y = Relu (s)
    }"""
    return _save(model_from_text(text, _tensors(W=(4, 3, 3, 3), **_bn("1", 4), **_bn("2", 4))), folder)


def initializers_as_inputs(folder):
    text = """<ir_version: 6, opset_import: ["" : 11]>
    g (float[N,3,8,8] x, float[4,3,3,3] W, float[4] mean) => (float[N,4,8,8] y)
    <float[4,3,3,3] W, float[4] B, float[4] scale, float[4] shift, float[4] mean, float[4] var> {
      c = Conv <pads = [1, 1, 1, 1]> (x, W, B)
      n = BatchNormalization (c, scale, shift, mean, var)
      y = Relu (n)
    }"""
    return _save(model_from_text(text, _tensors(W=(4, 3, 3, 3), B=(4,), **_bn("", 4))), folder)


def float16_resnet(folder):
    text = OPSET + """
    g (float16[N,4,8,8] x) => (float16[N,4,1,1] y)
    <float16[4,4,3,3] W1, float16[4] B1, float16[4,4,3,3] W2, float16[4] B2> {
      c1 = Conv <pads = [1, 1, 1, 1]> (x, W1, B1)
      r1 = Relu (c1)
      c2 = Conv <pads = [1, 1, 1, 1]> (r1, W2, B2)
      s = Add (c2, x)
      r2 = Relu (s)
      y = GlobalAveragePool (r2)
    }"""
    return _save(model_from_text(text, _tensors(np.float16, W1=(4, 4, 3, 3), B1=(4,), W2=(4, 4, 3, 3), B2=(4,))),
                 folder)


def if_branches(folder):
    text = OPSET + """
    g (float[N,4] x) => (float[N,4] y) <float[4,4] W1, float[4,4] W2, float[4] b2> {
      h = MatMul (x, W1)
      r = Relu (h)
      m = ReduceMean <keepdims = 0> (r)
      zero = Constant <value = float {0.0}> ()
      cond = Greater (m, zero)
      y = If (cond) <
        then_branch = then_g () => (float[N,4] t) {
          u = MatMul (r, W2)
          v = Add (u, b2)
          t = Relu (v)
        },
        else_branch = else_g () => (float[N,4] e) {
          e = Sigmoid (r)
        }
      >
    }"""
    return _save(model_from_text(text, _tensors(W1=(4, 4), W2=(4, 4), b2=(4,))), folder)


def only_an_if(folder):
    text = OPSET + """
    g (bool c, float[N,4] x) => (float[N,3] y) <float[4,3] W1, float[4,3] W2> {
      y = If (c) <
        then_branch = then_g () => (float[N,3] t) { t = MatMul (x, W1) },
        else_branch = else_g () => (float[N,3] e) { e = MatMul (x, W2) }
      >
    }"""
    return _save(model_from_text(text, _tensors(W1=(4, 3), W2=(4, 3))), folder)


def loop(folder):
    text = OPSET + """
    g (float[N,4] x) => (float[N,4] y) <float[4,4] W, int64 trips = {3}, bool go = {1}> {
      y = Loop (trips, go, x) <
        body = body_g (int64 i, bool c, float[N,4] h) => (bool c_out, float[N,4] h_out) {
          c_out = Identity (c)
          t = MatMul (h, W)
          h_out = Tanh (t)
        }
      >
    }"""
    proto = model_from_text(text, _tensors(W=(4, 4)))
    proto.graph.initializer.extend([onnx.numpy_helper.from_array(np.array(3, np.int64), "trips"),
                                    onnx.numpy_helper.from_array(np.array(True), "go")])
    return _save(proto, folder)


def scan(folder):
    text = OPSET + """
    g (float[4] s0, float[T,4] xs) => (float[4] s_n, float[T,4] ys) <float[4,4] W> {
      s_n, ys = Scan (s0, xs) <
        num_scan_inputs = 1,
        body = body_g (float[4] s, float[4] xi) => (float[4] s_out, float[4] yi) {
          t = MatMul (xi, W)
          a = Add (s, t)
          s_out = Tanh (a)
          yi = Relu (a)
        }
      >
    }"""
    return _save(model_from_text(text, _tensors(W=(4, 4))), folder)


def static_batch(folder):
    return _save(classifier(batch="1"), folder)


def external_data(folder):
    return _save(classifier(), folder, save_as_external_data=True, all_tensors_to_one_file=True,
                 location="weights.bin", size_threshold=0)


def undefined_input(folder):
    text = OPSET + """
    g (float[N,4] x) => (float[N,3] y) <float[4,3] W> {
      h = MatMul (x, W)
      y = Add (h, nowhere)
    }"""
    return _save(model_from_text(text, _tensors(W=(4, 3))), folder)


def empty_graph(folder):
    return _save(onnx.parser.parse_model(OPSET + "g (float[N,4] x) => (float[N,4] x) {}"), folder)


def missing_external_data(folder):
    path = external_data(folder)
    (folder / "weights.bin").unlink()
    return path


def transformer(folder, *, activation: str, dynamo: bool):
    """A transformer encoder block (attention, LayerNorm, feed-forward with GELU or ReLU) from either exporter."""
    import torch

    torch.manual_seed(0)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0,
                                                          activation=activation, batch_first=True)

        def forward(self, x):
            return self.layer(x, src_mask=None, is_causal=False)

    path = folder / "model.onnx"
    kwargs = {"dynamo": True} if dynamo else {"dynamo": False, "dynamic_axes": {"x": {0: "batch"}}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Block().eval(), (torch.randn(2, 5, 8),), str(path), input_names=["x"], output_names=["y"],
                          **kwargs)
    return path


@dataclasses.dataclass(frozen=True)
class Case:
    build: Callable[[pathlib.Path], pathlib.Path]
    sites: dict[str, int] | None = None  # per target; None: the commands refuse the model
    error: str = ""  # what the one line of error says
    format: str = "float32"
    torch: bool = False


CASES = {
    "opset11_bn": Case(opset11_bn, {"activations": 3, "weights": 2, "biases": 2}),
    "int64_input": Case(int64_input, {"activations": 1, "weights": 2, "biases": 1}),  # E is an embedding table
    "two_inputs_two_outputs": Case(two_inputs_two_outputs, {"activations": 2, "weights": 2, "biases": 0}),
    "nhwc": Case(nhwc, {"activations": 2, "weights": 1, "biases": 1}),
    "depthwise": Case(depthwise, {"activations": 2, "weights": 1, "biases": 1}),
    "conv_transpose": Case(conv_transpose, {"activations": 1, "weights": 1, "biases": 1}),
    "shared_weights": Case(shared_weights, {"activations": 1, "weights": 1, "biases": 0}),
    "shared_weight_two_batchnorms": Case(shared_weight_two_batchnorms, {"activations": 1, "weights": 2, "biases": 2}),
    # the BatchNormalization stays (its mean is an input): its scale and variance are weights, shift and mean biases
    "initializers_as_inputs": Case(initializers_as_inputs, {"activations": 1, "weights": 3, "biases": 3}),
    "float16_resnet": Case(float16_resnet, {"activations": 3, "weights": 2, "biases": 2}, format="float16"),
    "if_branches": Case(if_branches, {"activations": 3, "weights": 2, "biases": 1}),
    "only_an_if": Case(only_an_if, {"activations": 1, "weights": 2, "biases": 0}),
    "loop": Case(loop, {"activations": 1, "weights": 1, "biases": 0}),
    "scan": Case(scan, {"activations": 2, "weights": 1, "biases": 0}),
    "static_batch": Case(static_batch, {"activations": 3, "weights": 2, "biases": 2}),
    "external_data": Case(external_data, {"activations": 3, "weights": 2, "biases": 2}),
    "undefined_input": Case(undefined_input, error="reads tensor 'nowhere', which no input"),
    "empty_graph": Case(empty_graph, error="empty graph"),
    "missing_external_data": Case(missing_external_data, error="external data file weights.bin, which does not"),
    # weights: packed QKV, attention output, two feed-forward, the LayerNorm scale (both exporters store the two
    # equal scales once); biases: packed QKV, two feed-forward and one zero tensor that the TorchScript exporter
    # shares between the attention output and both LayerNorms (the dynamo exporter drops the zero attention
    # output bias and shares the LayerNorm shift); activations: the attention Softmax, the GELU/ReLU, the first
    # LayerNormalization and the block's output (its second)
    "transformer_gelu_torchscript": Case(lambda f: transformer(f, activation="gelu", dynamo=False),
                                         {"activations": 4, "weights": 5, "biases": 4}, torch=True),
    "transformer_relu_torchscript": Case(lambda f: transformer(f, activation="relu", dynamo=False),
                                         {"activations": 4, "weights": 5, "biases": 4}, torch=True),
    "transformer_gelu_dynamo": Case(lambda f: transformer(f, activation="gelu", dynamo=True),
                                    {"activations": 4, "weights": 5, "biases": 4}, torch=True),
    "transformer_relu_dynamo": Case(lambda f: transformer(f, activation="relu", dynamo=True),
                                    {"activations": 4, "weights": 5, "biases": 4}, torch=True),
}
WORKING = [name for name, case in CASES.items() if case.sites is not None]
BROKEN = [name for name, case in CASES.items() if case.sites is None]


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


_BUILT: dict[str, pathlib.Path] = {}


def _built(name: str, tmp_path: pathlib.Path) -> tuple[Case, pathlib.Path]:
    """The case's model in a fresh folder of its own (each case is built once per test run, then copied)."""
    case = CASES[name]
    if case.torch:
        pytest.importorskip("torch")
    if name not in _BUILT:
        cache = pathlib.Path(tempfile.mkdtemp(prefix=f"corpus-{name}-"))
        _BUILT[name] = case.build(cache)
    source = _BUILT[name]
    folder = shutil.copytree(source.parent, tmp_path / "in")
    return case, folder / source.name


def _names(table: str) -> list[str]:
    """The tensor column of a site table (the rows between the header and the blank line before the totals)."""
    rows = table.split("\n\n")[0].splitlines()[1:]
    return [row.split()[0] for row in rows]


def _feeds(session) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    feeds = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) else 2 for d in arg.shape]
        if arg.type == "tensor(int64)":
            feeds[arg.name] = rng.integers(0, 4, size=shape).astype(np.int64)
        elif arg.type == "tensor(bool)":
            feeds[arg.name] = np.array(True)
        else:
            dtype = np.float16 if arg.type == "tensor(float16)" else np.float32
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def assert_same_outputs(original: pathlib.Path, other: pathlib.Path, *, rtol: float = 1e-6) -> None:
    """Same output names, and values within ``rtol`` of the largest magnitude of each original output."""
    reference, candidate = make_session(str(original)), make_session(str(other))
    assert [o.name for o in candidate.get_outputs()] == [o.name for o in reference.get_outputs()]
    feeds = _feeds(reference)
    for want, got in zip(reference.run(None, feeds), candidate.run(None, feeds)):
        scale = float(np.abs(want.astype(np.float64)).max()) or 1.0
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=0, atol=rtol * scale)


def _totals(table: str) -> dict[str, int]:
    counts = {"activations": 0, "weights": 0, "biases": 0}
    for target, count in re.findall(r"^(\w+): (\d+) sites", table, flags=re.M):
        counts[target] = int(count)
    return counts


@pytest.mark.parametrize("name", WORKING)
def test_inspect_counts_the_sites_of_each_target(name, tmp_path, capsys):
    case, path = _built(name, tmp_path)
    code, out, err = run(capsys, "inspect", path, "--format", case.format)
    assert code == 0, err
    assert _totals(out) == case.sites


@pytest.mark.parametrize("name", WORKING)
def test_inject_at_p0_keeps_the_outputs_and_inspect_reads_the_same_sites(name, tmp_path, capsys):
    case, path = _built(name, tmp_path)
    out = tmp_path / "injected.onnx"
    code, _, err = run(capsys, "inject", path, "-o", out, "--format", case.format)
    assert code == 0, err
    assert_same_outputs(path, out)
    code, table, err = run(capsys, "inspect", out)
    assert code == 0, err
    assert _totals(table) == case.sites
    assert _names(table) == _names(run(capsys, "inspect", path, "--format", case.format)[1])


@pytest.mark.parametrize("name", WORKING)
def test_convert_to_the_native_format_keeps_the_outputs(name, tmp_path, capsys):
    case, path = _built(name, tmp_path)
    out = tmp_path / "converted.onnx"
    code, _, err = run(capsys, "convert", path, "-o", out, "--format", case.format)
    assert code == 0, err
    assert_same_outputs(path, out)


@pytest.mark.parametrize("name", BROKEN)
@pytest.mark.parametrize("command", ["inspect", "inject", "convert"])
def test_a_broken_model_gives_one_line_and_exit_1(name, command, tmp_path, capsys):
    case, path = _built(name, tmp_path)
    args = [] if command == "inspect" else ["-o", tmp_path / "out.onnx", "--format", "float32"]
    code, _, err = run(capsys, command, path, *args)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("onnxflip: error:")
    assert case.error in err
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("fmt", ["float32", "bfloat16", "float64"])
def test_a_float16_model_refuses_another_format(fmt, tmp_path, capsys):
    _, path = _built("float16_resnet", tmp_path)
    for args in (["inspect", path], ["inject", path, "-o", tmp_path / "out.onnx"]):
        code, _, err = run(capsys, *args, "--format", fmt)
        assert code == 1
        assert err.strip() == (f"onnxflip: error: the model stores its values in float16; use --format float16, "
                               f"or inject a float32 copy of the model to study {fmt}")


def test_bfloat16_on_an_opset_without_bfloat16_cast_is_refused(tmp_path, capsys):
    _, path = _built("opset11_bn", tmp_path)
    code, _, err = run(capsys, "inject", path, "-o", tmp_path / "out.onnx", "--format", "bfloat16")
    assert code == 1
    assert err.strip() == ("onnxflip: error: format bfloat16 needs ONNX opset 13 or newer (Cast to bfloat16); "
                           "the model uses opset 11")


@pytest.mark.parametrize("name", ["if_branches", "loop", "scan", "only_an_if"])
@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
def test_subgraph_sites_in_an_emulated_format_compute_as_the_converted_model(name, fmt, tmp_path, capsys):
    _, path = _built(name, tmp_path)
    injected, converted = tmp_path / "injected.onnx", tmp_path / "converted.onnx"
    assert run(capsys, "inject", path, "-o", injected, "--format", fmt)[0] == 0
    assert run(capsys, "convert", path, "-o", converted, "--format", fmt)[0] == 0
    assert_same_outputs(converted, injected)
    assert_same_outputs(path, converted, rtol={"float16": 1e-2, "bfloat16": 5e-2}[fmt])


@pytest.mark.parametrize("name", ["if_branches", "loop", "scan"])
def test_ecc_at_a_site_inside_a_body_is_refused_in_one_line(name, tmp_path, capsys):
    """A body's word counts cannot reach the main graph's counts output; its outer-scope weights can be protected."""
    _, path = _built(name, tmp_path)
    out = tmp_path / "injected.onnx"
    code, _, err = run(capsys, "inject", path, "-o", out, "--targets", "activations", "--ecc", "secded")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("onnxflip: error: site ") and "inside an If/Loop/Scan body" in err
    assert not out.exists()
    assert run(capsys, "inject", path, "-o", out, "--targets", "weights", "--ecc", "secded", "--p", "1e-3")[0] == 0
    session = make_session(str(out))
    counts = dict(zip((o.name for o in session.get_outputs()), session.run(None, _feeds(session))))
    assert counts["onnxflip_weights_counts"].shape == (3,)


def test_float16_sites_are_flipped_as_float16(tmp_path, capsys):
    _, path = _built("float16_resnet", tmp_path)
    out = tmp_path / "injected.onnx"
    assert run(capsys, "inject", path, "-o", out, "--format", "float16")[0] == 0
    rows = run(capsys, "inspect", out)[1]
    assert re.findall(r"\bfloat16\b", rows) and "float32" not in rows
    flips = [n for n in load_model(out).graph if n.op_type == "FlipBits"]
    assert {n.inputs[0].dtype.name for n in flips} == {"FLOAT16"}
    assert not [n for n in load_model(out).graph if n.op_type == "Cast"]


def test_overridable_inputs_keep_working(tmp_path, capsys):
    """A weight or BatchNorm statistic that is a graph input, fed, changes the injected model as the original."""
    _, path = _built("initializers_as_inputs", tmp_path)
    out = tmp_path / "injected.onnx"
    assert run(capsys, "inject", path, "-o", out)[0] == 0
    reference, candidate = make_session(str(path)), make_session(str(out))
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    for feeds in ({"W": np.full((4, 3, 3, 3), 0.1, np.float32)}, {"mean": np.full(4, 3.0, np.float32)}):
        want = reference.run(None, {"x": x, **feeds})[0]
        np.testing.assert_allclose(candidate.run(None, {"x": x, **feeds})[0], want, rtol=1e-6, atol=1e-6)
        assert not np.allclose(want, reference.run(None, {"x": x})[0])


def test_external_data_stays_external(tmp_path, capsys, synthetic_data):
    _, path = _built("external_data", tmp_path)
    outputs = {
        "inject": tmp_path / "injected.onnx",
        "convert": tmp_path / "converted.onnx",
        "quantize": tmp_path / "quantized.onnx",
    }
    extra = {"inject": [], "convert": ["--format", "float16"], "quantize": ["--data", synthetic_data, "--samples", "20"]}
    for command, out in outputs.items():
        code, _, err = run(capsys, command, path, "-o", out, *extra[command])
        assert code == 0, err
        proto = onnx.load(str(out), load_external_data=False)
        external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        assert external, command
        assert {e.value for t in external for e in t.external_data if e.key == "location"} == {
            external_data_path(out).name}
        assert external_data_path(out).is_file()
    assert_same_outputs(path, outputs["inject"])


def test_static_batch_quantizes_and_reports_its_batch(tmp_path, capsys, synthetic_data):
    _, path = _built("static_batch", tmp_path)
    model = load_model(path)
    assert batch_dimension(model) == 1
    assert batch_dimension(load_model(_save(classifier(), tmp_path, "dynamic.onnx"))) is None
    out = tmp_path / "quantized.onnx"
    code, _, err = run(capsys, "quantize", path, "-o", out, "--data", synthetic_data, "--samples", "20")
    assert code == 0, err
    assert batch_dimension(load_model(out)) == 1


def test_a_model_failing_the_checker_is_loaded_with_a_warning(tmp_path, caplog):
    proto = classifier()
    proto.graph.output[0].ClearField("type")
    path = _save(proto, tmp_path)
    with caplog.at_level(logging.WARNING, logger="onnxflip"):
        load_model(path)
    assert any("does not pass onnx.checker" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="onnxflip"):
        load_model(_save(classifier(), tmp_path, "valid.onnx"))
    assert not caplog.records


def test_a_model_beyond_the_size_limit_is_written_with_external_data(tmp_path, monkeypatch):
    """The limit (1 GiB of tensors, under protobuf's 2 GB) lowered so that a small model crosses it."""
    import onnxflip.modelio as modelio

    path = _save(classifier(), tmp_path)
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_BYTES", 100)
    out = tmp_path / "written.onnx"
    modelio.save_model(load_model(path), out)
    assert external_data_path(out).is_file()
    assert_same_outputs(path, out)
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_BYTES", 1 << 30)
    small = tmp_path / "small.onnx"
    modelio.save_model(load_model(path), small)
    assert not external_data_path(small).exists()


def test_a_model_with_external_data_is_evaluated_from_any_folder(tmp_path, capsys, synthetic_data, monkeypatch):
    """ONNX Runtime gets the model as bytes: its external tensors are read from the model's folder, not the
    working one, for the clean model and for a model injected with external data."""
    _, path = _built("external_data", tmp_path)
    injected = tmp_path / "injected.onnx"
    assert run(capsys, "inject", path, "-o", injected)[0] == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for model in (path, injected):
        out = tmp_path / f"results_{model.stem}"
        code, _, err = run(capsys, "evaluate", model, "--data", synthetic_data, "--metric", "agreement", "--p",
                           "0,1e-3", "--trials", "1", "--out", out)
        assert code == 0, err
        assert json.loads((out / "results.json").read_text())["clean_score"] == 1.0


@pytest.mark.parametrize("batch", [1, 7])
def test_a_fixed_batch_model_is_evaluated_in_batches_of_its_size(tmp_path, capsys, synthetic_data, batch):
    """evaluate runs it in batches of its size unless told another (then one line); a last, shorter batch is
    filled up and its outputs are those of the model run on the true samples (100 = 14 x 7 + 2)."""
    proto = classifier(batch=str(batch))
    path = _save(proto, tmp_path)
    out = tmp_path / "results"
    code, _, err = run(capsys, "evaluate", path, "--data", synthetic_data, "--samples", "100", "--metric",
                       "agreement", "--p", "0,1e-2", "--trials", "2", "--out", out)
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["settings"]["batch_size"] == batch
    code, _, err = run(capsys, "evaluate", path, "--data", synthetic_data, "--batch-size", "5", "--out",
                       tmp_path / "refused")
    assert code == 1 and len(err.strip().splitlines()) == 1 and f"batches of exactly {batch}" in err, err

    from onnxflip.campaign.trials import LocalRunner, TrialSettings
    from onnxflip.data.sources import open_source
    from onnxflip.metrics import metric_from_spec

    model = load_model(path)
    source = open_source(synthetic_data, model=model, split="test").subset(100)
    runner = LocalRunner(model, source, metric_from_spec("agreement"), TrialSettings(batch_size=batch))
    for dim in (*proto.graph.input[0].type.tensor_type.shape.dim[:1], *proto.graph.output[0].type.tensor_type.shape.dim[:1]):
        dim.dim_param = "N"
    images = np.concatenate([b.feeds["x"] for b in source.batches(100)])
    (want,) = make_session(proto).run(None, {"x": images})
    np.testing.assert_allclose(runner._clean_outputs(100), want, rtol=1e-6, atol=1e-6)


def test_an_if_output_is_exposed_once_where_its_branch_stored_it(tmp_path, capsys):
    """The If output y is the then-branch's t: one write, flipped once.  Bits of y that differ from the fault-free
    run, at p = 1e-2 on t, e and y (20,000 float32 values, 640,000 bits): Binomial(640,000, 0.01), mean 6,400,
    sd 80; within 5 sd (two exposures gave about twice as many)."""
    _, path = _built("if_branches", tmp_path)
    out = tmp_path / "injected.onnx"
    code, _, err = run(capsys, "inject", path, "-o", out, "--targets", "activations", "--include", "^(t|e|y)$",
                       "--p", "1e-2")
    assert code == 0, err
    assert run(capsys, "inspect", out)[1].count("activations  float32") == 2
    session = make_session(str(out))
    x = np.abs(np.random.default_rng(5).standard_normal((5000, 4))).astype(np.float32)
    controls = [i.name for i in session.get_overridable_initializers() if i.name.endswith(("_p01", "_p10"))]
    (flipped,) = session.run(None, {"x": x})
    (clean,) = session.run(None, {"x": x, **{name: np.array(0.0, np.float32) for name in controls}})
    assert np.array_equal(clean, make_session(str(path)).run(None, {"x": x})[0])
    differing = int(np.unpackbits((flipped.view(np.uint32) ^ clean.view(np.uint32)).view(np.uint8)).sum())
    assert abs(differing - 6400) < 5 * 80, differing


def test_without_format_a_model_is_inspected_and_injected_in_its_own(tmp_path, capsys, qdq_path):
    """A float16 graph in float16, a QDQ graph in int8: what --format would give, without it."""
    _, float16 = _built("float16_resnet", tmp_path)
    for path, fmt in ((float16, "float16"), (qdq_path, "int8")):
        code, table, err = run(capsys, "inspect", path)
        assert code == 0, err
        assert table == run(capsys, "inspect", path, "--format", fmt)[1]
        out = tmp_path / f"injected_{fmt}.onnx"
        code, written, err = run(capsys, "inject", path, "-o", out, "--p", "1e-3")
        assert code == 0 and written.strip().endswith(f"format {fmt}"), err


def test_ecc_words_of_a_fixed_batch_model_count_each_batch_once(tmp_path, capsys, synthetic_data):
    """The sites' static shapes hold the batch: 100 samples in batches of 7 store 15 whole batches (105 samples'
    words, the filled rows included), as many per sample as the same model with a dynamic batch."""
    words = {}
    for batch in ("7", "N"):
        path = _save(classifier(batch=batch), tmp_path, f"b{batch}.onnx")
        out = tmp_path / f"r{batch}"
        code, _, err = run(capsys, "evaluate", path, "--data", synthetic_data, "--samples", "100", "--metric",
                           "agreement", "--targets", "activations", "--ecc", "secded", "--p", "1e-2", "--trials", "1",
                           "--batch-size", "7", "--out", out)
        assert code == 0, err
        trial = json.loads((out / "results.json").read_text())["trials"][-1]
        words[batch] = trial["words"]["activations"]["words"]
    assert words["7"] * 100 == words["N"] * 105

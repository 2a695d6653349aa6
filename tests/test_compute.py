"""Each format computed as it computes (--compute native) or emulated in float32 (--compute float32).

The references are NumPy computations of the same small graphs in the
format's own arithmetic (float64 arrays; float16 and bfloat16 results rounded
with ml_dtypes after each op), not onnxflip's passes.
"""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import model_from_text, run_model

from onnxflip.cli import main
from onnxflip.errors import OnnxflipError
from onnxflip.graph.config import InjectionConfig
from onnxflip.graph.inject import convert_format, insert_flipbits
from onnxflip.graph.passes import LowerFloat64Pass
from onnxflip.modelio import save_model

TOP_EXPONENT_BIT = 62  # float64's highest exponent bit


def _model(text: str, **arrays) -> ir.Model:
    return ir.serde.deserialize_model(model_from_text(text, [onnx.numpy_helper.from_array(a, n)
                                                             for n, a in arrays.items()]))


def _cancelling_model() -> ir.Model:
    """h = x @ I; r = Relu(h); y = Clip(r @ [1, -1]^T, 0, 6): two equal stored values whose difference is 0."""
    return _model("""
    <ir_version: 10, opset_import: ["" : 21]>
    g (float[N,2] x) => (float[N,1] y) <float[2,2] I, float[2,1] D, float lo, float hi> {
      h = MatMul (x, I)
      r = Relu (h)
      d = MatMul (r, D)
      y = Clip (d, lo, hi)
    }""", I=np.eye(2, dtype=np.float32), D=np.array([[1.0], [-1.0]], np.float32), lo=np.array(0, np.float32),
        hi=np.array(6, np.float32))


def _flip_top_exponent_bit(values: np.ndarray) -> np.ndarray:
    return (values.view(np.uint64) | np.uint64(1 << TOP_EXPONENT_BIT)).view(np.float64)


def _run_flipping(model: ir.Model, feeds: dict, *, bit: int, fmt: str, compute: str) -> np.ndarray:
    """Every activation site flips ``bit`` from 0 to 1 in every element (p01 = 1, that bit only)."""
    from onnxflip.faults import FaultModel

    config = InjectionConfig.build(format=fmt, targets=("activations",), fault=FaultModel(bits=1 << bit),
                                   compute=compute)
    injected = insert_flipbits(model, config=config)
    controls = {"onnxflip_activations_p01": np.array(1.0, np.float32),
                "onnxflip_activations_p10": np.array(0.0, np.float32)}
    return run_model(injected, {**feeds, **controls})[0]


@pytest.mark.parametrize("compute", ["native", "float32"])
def test_a_float64_exponent_flip_stays_finite_where_float64_holds_it(compute):
    """2^-28 with its top exponent bit set is 2^996: finite in float64, inf in float32.  Native: the two equal
    flipped values cancel (0, flipped again at the output site: 2.0, clamped); emulated in float32 they become
    inf, inf - inf is NaN, and the clamp passes NaN on."""
    x = np.full((3, 2), 2.0 ** -28, np.float32)
    out = _run_flipping(_cancelling_model(), {"x": x}, bit=TOP_EXPONENT_BIT, fmt="float64", compute=compute)
    # The reference, in float64: every activation site flips the bit (h, r, d and the output y are sites).
    h = _flip_top_exponent_bit(x.astype(np.float64))
    r = _flip_top_exponent_bit(np.maximum(h, 0))
    d = _flip_top_exponent_bit(r @ np.array([[1.0], [-1.0]]))
    expected = _flip_top_exponent_bit(np.clip(d, 0, 6))
    if compute == "native":
        assert out.dtype == np.float64
        np.testing.assert_array_equal(out, expected)
        assert np.isfinite(out).all()
    else:
        assert np.isnan(out).all()  # what the emulation does to the same flips, stated as such in the README


def _rounded(values, dtype) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # beyond the format's range: inf, as the format has it
        return np.asarray(values, np.float32).astype(dtype).astype(np.float32)


def _sum_model() -> ir.Model:
    """h = x @ I (a site); a = h + h; b = a + a; y = b - b: three ops between the stored values h and y."""
    return _model("""
    <ir_version: 10, opset_import: ["" : 21]>
    g (float[N,2] x) => (float[N,2] y) <float[2,2] I> {
      h = MatMul (x, I)
      a = Add (h, h)
      b = Add (a, a)
      y = Sub (b, b)
    }""", I=np.eye(2, dtype=np.float32))


def test_float16_overflows_between_stored_values_where_the_format_does():
    """20000 + 20000 = 40000 and 40000 + 40000 = 80000 > 65504: inf in float16, so y = inf - inf = NaN;
    the float32 emulation keeps 80000 and stores y = 0."""
    x = np.array([[20000.0, 1.0]], np.float32)
    out = {c: run_model(convert_format(_sum_model(), format="float16", compute=c), {"x": x})[0]
           for c in ("native", "float32")}
    h = _rounded(x, np.float16)
    a = _rounded(h + h, np.float16)
    b = _rounded(a + a, np.float16)
    with np.errstate(invalid="ignore"):
        reference = _rounded(b - b, np.float16)
    assert np.isnan(reference[0, 0]) and reference[0, 1] == 0
    np.testing.assert_array_equal(out["native"], reference)
    np.testing.assert_array_equal(out["float32"], [[0.0, 0.0]])


def test_bfloat16_rounds_every_ops_result():
    """1 + 2^-9 is 1 in bfloat16 (8 significant bits): native (1 + 2^-9) - 1 = 0, emulated 2^-9."""
    model = _model("""
    <ir_version: 10, opset_import: ["" : 21]>
    g (float[N,2] x) => (float[N,2] y) <float[2,2] I, float[2] e> {
      h = MatMul (x, I)
      s = Add (h, e)
      y = Sub (s, h)
    }""", I=np.eye(2, dtype=np.float32), e=np.array([2.0 ** -9, 2.0 ** -9], np.float32))
    x = np.ones((1, 2), np.float32)
    native = run_model(convert_format(model, format="bfloat16", compute="native"), {"x": x})[0]
    emulated = run_model(convert_format(model, format="bfloat16", compute="float32"), {"x": x})[0]
    bf16 = ml_dtypes.bfloat16
    h = _rounded(x, bf16)
    reference = _rounded(_rounded(h + _rounded([2.0 ** -9] * 2, bf16), bf16) - h, bf16)
    np.testing.assert_array_equal(native, reference)
    np.testing.assert_array_equal(native, [[0.0, 0.0]])
    np.testing.assert_array_equal(emulated, [[2.0 ** -9, 2.0 ** -9]])


def _conv_net() -> ir.Model:
    """Conv (padded, strided), depthwise Conv, grouped Conv, AveragePool, GlobalAveragePool, HardSwish, Gemm."""
    rng = np.random.default_rng(3)
    return _model("""
    <ir_version: 10, opset_import: ["" : 17]>
    g (float[N,3,12,12] x) => (float[N,5] y) <float[8,3,3,3] W1, float[8] B1, float[8,1,3,3] W2, float[8,4,3,3] W3,
                                              float[5,8] W4, float[5] B4> {
      c1 = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (x, W1, B1)
      a1 = HardSwish (c1)
      c2 = Conv <pads = [1, 1, 1, 1], group = 8> (a1, W2)
      a2 = Relu (c2)
      c3 = Conv <pads = [2, 2, 2, 2], dilations = [2, 2], group = 2> (a2, W3)
      p3 = AveragePool <kernel_shape = [2, 2], strides = [2, 2]> (c3)
      g3 = GlobalAveragePool (p3)
      f = Flatten (g3)
      y = Gemm <transB = 1> (f, W4, B4)
    }""", W1=rng.normal(size=(8, 3, 3, 3)).astype(np.float32), B1=rng.normal(size=8).astype(np.float32),
        W2=rng.normal(size=(8, 1, 3, 3)).astype(np.float32), W3=rng.normal(size=(8, 4, 3, 3)).astype(np.float32),
        W4=rng.normal(size=(5, 8)).astype(np.float32), B4=rng.normal(size=5).astype(np.float32))


def _torch_reference(x: np.ndarray, model: ir.Model) -> np.ndarray:
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    w = {name: torch.from_numpy(v.const_value.numpy().astype(np.float64)) for name, v in
         model.graph.initializers.items()}
    y = f.conv2d(torch.from_numpy(x.astype(np.float64)), w["W1"], w["B1"], stride=2, padding=1)
    y = f.relu(f.conv2d(f.hardswish(y), w["W2"], padding=1, groups=8))
    y = f.avg_pool2d(f.conv2d(y, w["W3"], padding=2, dilation=2, groups=2), 2)
    return (f.adaptive_avg_pool2d(y, 1).flatten(1) @ w["W4"].T + w["B4"]).numpy()


def test_float64_ops_without_a_cpu_kernel_compute_in_float64():
    """Conv (plain, depthwise, grouped, dilated), AveragePool, GlobalAveragePool and HardSwish have no float64
    kernel on ONNX Runtime's CPU provider: written in float64 ops, they match torch in float64 to 1e-12."""
    x = np.random.default_rng(0).normal(size=(2, 3, 12, 12)).astype(np.float32)
    model = _conv_net()
    converted = convert_format(model, format="float64")
    assert {n.op_type for n in converted.graph} >= {"Conv", "AveragePool"}  # the graph says what it computes
    LowerFloat64Pass()(converted)
    assert not {n.op_type for n in converted.graph} & {"Conv", "AveragePool", "GlobalAveragePool", "HardSwish"}
    out = run_model(converted, {"x": x})[0]
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, _torch_reference(x, model), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("fmt", "compute", "tolerance"), [
    ("float64", "native", 1e-12), ("float64", "float32", 0.0), ("float16", "native", 0.0),
    ("float16", "float32", 0.0), ("bfloat16", "native", 0.0), ("bfloat16", "float32", 0.0)])
def test_at_p_0_each_compute_is_the_clean_model_of_its_format(fmt, compute, tolerance):
    """The injected model at p = 0 computes what convert wrote (the format's clean model); that model is the
    float32 model within the format's rounding."""
    x = np.random.default_rng(1).normal(size=(4, 3, 12, 12)).astype(np.float32)
    model = _conv_net()
    clean = convert_format(model, format=fmt, compute=compute)
    LowerFloat64Pass()(clean)
    injected = insert_flipbits(model, config=InjectionConfig(format=fmt, compute=compute))
    expected, got = run_model(clean, {"x": x}, exact=True)[0], run_model(injected, {"x": x}, exact=True)[0]
    np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance * np.abs(expected).max())
    float32 = run_model(model, {"x": x})[0]
    step = {"float64": 1e-5, "float16": 2e-2, "bfloat16": 1.5e-1}[fmt]  # float32's and the format's rounding
    np.testing.assert_allclose(got, float32, atol=step * np.abs(float32).max())


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("compute", [None, "native", "float32"])
def test_evaluate_records_and_states_the_compute(tmp_path, capsys, compute):
    save_model(_conv_net(), tmp_path / "m.onnx")
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(8, 3, 12, 12)).astype(np.float32))
    args = ["evaluate", tmp_path / "m.onnx", "--data", tmp_path / "d.npz", "--metric", "agreement", "--format",
            "float64", "--p", "0,1e-3", "--trials", "1", "--out", tmp_path / "r"]
    code, out, err = _cli(capsys, *args, *(["--compute", compute] if compute else []))
    assert code == 0, err
    settings = json.loads((tmp_path / "r" / "results.json").read_text())["settings"]
    assert settings["compute"] == (compute or "native")
    stated = "float64 throughout" if compute != "float32" else "computed in float32 (emulated"
    assert stated in out


def test_a_compute_the_model_cannot_take_is_refused_in_one_line(tmp_path, capsys):
    """--compute float32 on a model that computes in float64 itself; native float64 of an op without a float64
    kernel or rewrite (Erf); another compute than the one a converted model was written in."""
    save_model(convert_format(_conv_net(), format="float64"), tmp_path / "f64.onnx")
    save_model(convert_format(_conv_net(), format="float16", compute="float32"), tmp_path / "f16.onnx")
    save_model(_model("""
    <ir_version: 10, opset_import: ["" : 21]>
    g (float[N,2] x) => (float[N,2] y) <float[2,2] I> {
      h = MatMul (x, I)
      y = Erf (h)
    }""", I=np.eye(2, dtype=np.float32)), tmp_path / "erf.onnx")
    cases = [("f64.onnx", ["--compute", "float32"], "computes in double itself"),
             ("erf.onnx", ["--format", "float64"], "no float64 kernel for Erf"),
             ("f16.onnx", ["--compute", "native"], "converted to float16 with --compute float32")]
    for name, extra, reason in cases:
        code, _, err = _cli(capsys, "inject", tmp_path / name, "-o", tmp_path / "out.onnx", *extra)
        assert code == 1 and err.count("\n") == 1 and reason in err, (name, err)
        assert not (tmp_path / "out.onnx").exists()


def test_a_converted_model_computes_as_it_was_written():
    converted = convert_format(_conv_net(), format="bfloat16", compute="float32")
    injected = insert_flipbits(converted, config=InjectionConfig(format="bfloat16", compute=None))
    from onnxflip.graph.record import InjectionRecord

    assert InjectionRecord.read(injected).config.compute == "float32"
    with pytest.raises(OnnxflipError, match="--compute float32"):
        insert_flipbits(converted, config=InjectionConfig(format="bfloat16", compute="native"))


def test_an_injected_model_computes_as_it_was_injected(tmp_path, capsys):
    """evaluate reads the compute from the injection record; another --compute is refused in one line."""
    save_model(_conv_net(), tmp_path / "m.onnx")
    assert _cli(capsys, "inject", tmp_path / "m.onnx", "-o", tmp_path / "i.onnx", "--format", "float64",
                "--compute", "float32")[0] == 0
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(8, 3, 12, 12)).astype(np.float32))
    args = ["evaluate", tmp_path / "i.onnx", "--data", tmp_path / "d.npz", "--metric", "agreement", "--p", "0,1e-3",
            "--trials", "1"]
    code, _, err = _cli(capsys, *args, "--out", tmp_path / "a", "--compute", "native")
    assert code == 1 and err.count("\n") == 1 and "injected with --compute float32, not --compute native" in err
    code, _, err = _cli(capsys, *args, "--out", tmp_path / "b")
    assert code == 0, err
    assert json.loads((tmp_path / "b" / "results.json").read_text())["settings"]["compute"] == "float32"

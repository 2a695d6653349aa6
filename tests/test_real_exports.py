"""onnxflip on models written by real exporters (tests/real_exports.py), each through the command line.

Per model: ``inspect`` finds the stated sites per target and the weight and
bias sites cover at least 95% of the stored parameter elements (of the float
ones, in a float model); ``inject --p 0`` computes the original's outputs
(within 1e-5 of their largest magnitude; a float16 graph within four float16
steps of it), ``inject --p 1e-3`` changes them; ``evaluate --metric agreement
--p 0,1e-2`` scores 1.0 at p = 0 and less at 1e-2.  A model onnxflip cannot
inject is refused in one line with the reason, exit 1.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from real_exports import RECIPES

from onnxflip import make_session
from onnxflip.cli import main

# Sites per target (activations, weights, biases) of each model as its exporter writes it.  Weights count the
# embedding tables and LayerNorm scales (GPT-2: wte, wpe, the LM head (the exporters store a transposed copy of
# wte for it), per layer four matrices and two LayerNorm scales, the final LayerNorm's; ViT: the patch kernel,
# the class token and the position table too); activations never count the past models' present.* outputs (the
# cache a run returns: its new entries are the kv-cache target's), and they count the same GELUs whether an exporter writes a Gelu op or spells it out with Erf (optimum): one count per architecture.
SITES = {
    "bert_torchscript": (11, 22, 19), "bert_dynamo": (11, 22, 19), "bert_optimum": (11, 22, 19),
    "gpt2_torchscript": (10, 16, 13), "gpt2_dynamo": (10, 16, 13), "gpt2_optimum": (10, 16, 13),
    "gpt2_past_torchscript": (10, 16, 13), "gpt2_past_dynamo": (10, 16, 13), "gpt2_past_optimum": (10, 16, 13),
    "vit_torchscript": (10, 21, 19), "vit_dynamo": (10, 21, 19), "vit_optimum": (10, 21, 19),
    "sklearn_mlp": (2, 2, 2), "cnn_torchscript": (6, 4, 4), "cnn_qoperator_int8": (6, 4, 4),
    "bert_dynamic_int8": (24, 22, 19), "cnn_float16": (6, 4, 4), "ir3_cnn": (5, 3, 3), "constant_weights": (3, 2, 2),
    "matmul_transpose": (4, 3, 2), "indirect_weights": (5, 4, 3), "scripted_loop": (2, 2, 2),
}  # fmt: skip
# Models refused, with what the one line of error says.
REFUSED = {"sklearn_logistic": "held in an attribute of LinearClassifier (ai.onnx.ml), which FlipBits cannot reach"}
FLOAT16_STEP = float(np.finfo(np.float16).eps)


def test_every_model_of_the_corpus_has_an_expectation():
    assert set(SITES) | set(REFUSED) == set(RECIPES) and not set(SITES) & set(REFUSED)


def _model(real_exports, name: str):
    for module in RECIPES[name].requires:
        pytest.importorskip(module, reason=f"{name} needs {module}: pip install 'onnxflip[test]'")
    return real_exports[name]


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _scored(model, path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = make_session(path)
    names = [o.name for o in session.get_outputs()]
    with np.errstate(invalid="ignore"):  # flipped outputs may hold NaN
        return model.scores(session.run(None, feeds)[names.index(model.output)]).astype(np.float64)


@pytest.mark.parametrize("name", list(RECIPES))
def test_inspect_finds_the_sites_and_their_coverage(real_exports, name, capsys):
    model = _model(real_exports, name)
    code, out, err = _cli(capsys, "inspect", model.path, "--json")
    assert code == 0, err
    listing = json.loads(out)
    counts = {t: sum(1 for r in listing["sites"] if r["target"] == t) for t in ("activations", "weights", "biases")}
    totals = listing["coverage"]["totals"]
    if name in REFUSED:
        assert listing["sites"] == [] and totals["all"]["share_elements"] == 0.0
        assert all(REFUSED[name] in r["reason"] for r in listing["coverage"]["parameters"])
        return
    assert tuple(counts.values()) == SITES[name]
    for scope in ("all", "float") if not model.quantised else ("all",):
        parameters = sum(t["elements"] for target, t in totals[scope]["targets"].items() if target != "qparams")
        assert parameters / totals[scope]["elements"] >= 0.95, (scope, totals[scope])


@pytest.mark.parametrize("name", list(RECIPES))
def test_inject_keeps_the_outputs_at_p0_and_changes_them_at_1e3(real_exports, name, tmp_path, capsys):
    model = _model(real_exports, name)
    feeds = model.feeds(4, seed=1)
    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    original = model.scores(session.run(None, feeds)[names.index(model.output)]).astype(np.float64)
    scale = np.abs(original).max()
    for p in ("0", "1e-3"):
        injected = tmp_path / f"p{p}.onnx"
        code, _, err = _cli(capsys, "inject", model.path, "-o", injected, "--p", p)
        if name in REFUSED:
            assert code == 1 and err.count("\n") == 1 and REFUSED[name] in err
            return
        assert code == 0, err
        outputs = _scored(model, injected, feeds)
        if p == "0":
            tolerance = 4 * FLOAT16_STEP * scale if model.float16 else 1e-5 * scale
            np.testing.assert_allclose(outputs, original, rtol=0, atol=tolerance)
        else:
            assert not np.array_equal(outputs, original)


@pytest.mark.parametrize("name", list(RECIPES))
def test_evaluate_agreement_is_one_at_p0_and_falls_at_1e2(real_exports, name, tmp_path, capsys):
    model = _model(real_exports, name)
    data = tmp_path / "inputs.npz"
    np.savez(data, **model.feeds(16, seed=2))
    first = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"]).get_outputs()[0].name
    out = tmp_path / "results"
    args = ["evaluate", model.path, "--data", data, "--metric", "agreement", "--p", "0,1e-2", "--trials", "2",
            "--out", out, *(["--output", model.output] if model.output != first else [])]
    code, _, err = _cli(capsys, *args)
    if name in REFUSED:
        assert code == 1 and err.count("\n") == 1 and REFUSED[name] in err
        return
    assert code == 0, err
    rows = {row["p"]: row["mean"] for row in json.loads((out / "results.json").read_text())["rows"]}
    assert rows[0.0] == 1.0 and rows[1e-2] < 1.0

"""Decoder language models: the key-value cache as a target, perplexity and greedy generation, token data."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from real_exports import LAYERS, VOCABULARY

from onnxflip.cli import main
from onnxflip.data.base import model_inputs
from onnxflip.data.decoder import complete_arrays
from onnxflip.graph.config import InjectionConfig
from onnxflip.graph.inject import insert_flipbits
from onnxflip.language import Greedy, Perplexity
from onnxflip.metrics import metric_from_spec
from onnxflip.modelio import load_model
from onnxflip.runtime.session import make_session

DECODERS = ["gpt2_past_torchscript", "gpt2_past_dynamo", "gpt2_past_optimum"]


def _sites(model, targets):
    injected = insert_flipbits(model, config=InjectionConfig.build(targets=targets))
    return json.loads(injected.metadata_props["onnxflip.injection"])["sites"], injected


@pytest.mark.parametrize("name", DECODERS)
def test_kv_cache_finds_one_key_and_one_value_site_per_layer(real_exports, name):
    model = load_model(real_exports[name].path)
    sites, _ = _sites(model, ("kv-cache",))
    assert [s["target"] for s in sites] == ["kv-cache"] * (2 * LAYERS)
    from onnxflip.graph.inject import plan_sites

    _, _, found = plan_sites(model, InjectionConfig.build(targets=("kv-cache",)))
    assert sorted(s.node_name for s in found) == sorted(f"present.{i}.{k}" for i in range(LAYERS)
                                                       for k in ("key", "value"))


@pytest.mark.parametrize("name", DECODERS)
def test_the_cache_a_run_returns_is_not_an_activation_site(real_exports, name):
    """present.* holds the old entries a run only reads: flipping it would flip them again at every step."""
    sites, _ = _sites(load_model(real_exports[name].path), ("activations",))
    assert sites and not any(s["tensor"].startswith("present") for s in sites)
    assert any(s["tensor"] == "logits" for s in sites)


def _decode(session, tokens: np.ndarray, layout: dict, controls: dict | None = None) -> list[dict]:
    """Teacher-forced decode: one token per run, present fed back as past; the outputs of every step."""
    batch = len(tokens)
    feeds = {name: np.zeros((batch, shape[1], 0, shape[3]), np.float32) for name, shape in layout.items()}
    steps = []
    positions = "position_ids" in {i.name for i in session.get_inputs()}
    for t in range(tokens.shape[1]):
        feeds["input_ids"] = tokens[:, t : t + 1]
        feeds["attention_mask"] = np.ones((batch, t + 1), np.int64)
        if positions:
            feeds["position_ids"] = np.full((batch, 1), t, np.int64)
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {**feeds, **(controls or {})})))
        steps.append(outputs)
        for name in layout:
            feeds[name] = outputs[name.replace("past_key_values", "present")]
    return steps


def test_a_cache_entry_is_flipped_once_when_written_and_read_unchanged_after(real_exports):
    """Layer 0's keys and values of a token depend on the token and its position only, so the clean model's
    entries are known.  With the cache a target (p = 0.02 per bit, new flips at every run): each entry's
    flipped bits are fixed at the step that writes it and identical at every later step; across entries their
    count is binomial (within 5 sd of p x bits); the other entries of a step are not flipped again."""
    corpus = real_exports["gpt2_past_optimum"]
    model = load_model(corpus.path)
    layout = {s.name: s.shape for s in model_inputs(model) if s.name.startswith("past_key_values")}
    tokens = np.random.default_rng(0).integers(0, VOCABULARY, (3, 6)).astype(np.int64)
    clean = _decode(make_session(model), tokens, layout)
    _, injected = _sites(model, ("kv-cache",))
    p = 0.02
    controls = {"onnxflip_kv-cache_p01": np.array(p, np.float32), "onnxflip_kv-cache_p10": np.array(p, np.float32)}
    noisy = _decode(make_session(injected), tokens, layout, controls)
    flipped_bits, stored_bits = 0, 0
    for name in ("present.0.key", "present.0.value"):
        final = noisy[-1][name]
        for j in range(tokens.shape[1]):
            written = noisy[j][name][:, :, j]
            for later in noisy[j:]:
                assert np.array_equal(later[name][:, :, j].view(np.uint32), written.view(np.uint32))
            difference = written.view(np.uint32) ^ clean[-1][name][:, :, j].view(np.uint32)
            flipped_bits += int(np.unpackbits(difference.view(np.uint8)).sum())
            stored_bits += difference.size * 32
        assert final.shape == clean[-1][name].shape
    expected = p * stored_bits
    assert abs(flipped_bits - expected) < 5 * math.sqrt(expected * (1 - p))


def test_perplexity_is_one_when_clean_and_zero_at_chance():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 16, (4, 6))
    logits = rng.normal(size=(4, 6, 16)).astype(np.float32)
    logits[np.arange(4)[:, None], np.arange(5)[None, :], ids[:, 1:]] += 4.0  # a model that predicts the text
    metric = Perplexity()
    assert np.allclose(metric.scores(logits, logits, ids), 1.0)
    assert np.allclose(metric.scores(np.zeros_like(logits), logits, ids), 0.0)  # uniform: chance
    assert np.allclose(metric.scores(np.full_like(logits, np.nan), logits, ids), 0.0)
    half = logits.copy()
    half[:, :, :] *= 0.5  # less sure of the right tokens: between
    assert ((0 < metric.scores(half, logits, ids)) & (metric.scores(half, logits, ids) < 1)).all()
    assert metric.floor([None, None, 16]) == 0.0


def test_metric_specs_name_the_language_metrics():
    assert isinstance(metric_from_spec("perplexity"), Perplexity)
    assert metric_from_spec("greedy:8") == Greedy(tokens=8) and Greedy(tokens=8).name == "greedy:8"
    assert Greedy(tokens=3).floor([None, None, 128]) == 1 / 128
    from onnxflip.errors import OnnxflipError

    with pytest.raises(OnnxflipError, match="greedy:N"):
        metric_from_spec("greedy:x")


def test_a_greedy_token_chosen_from_non_finite_logits_agrees_with_no_clean_token():
    """The decode loop of greedy:N on a stand-in model: step 1's logits are all NaN (argmax: token 0, which is
    also the clean model's token there); that step scores 0, the others 1, and the loop goes on."""
    vocabulary, steps = 4, 3

    def run(feeds, step):
        logits = np.full((2, 1, vocabulary), -1.0, np.float32)
        logits[:, :, 0] = 1.0
        if step == 1:
            logits[:] = np.nan
        return {"logits": logits, "present.0.key": np.zeros((2, 1, 1, 1), np.float32)}

    feeds = {"input_ids": np.zeros((2, 3), np.int64), "attention_mask": np.ones((2, 3), np.int64)}
    metric = Greedy(tokens=steps)
    tokens = metric.generate(run, feeds, output="logits", pairs=[("past_key_values.0.key", "present.0.key")])
    clean = np.zeros((2, steps), np.int64)
    np.testing.assert_array_equal(metric.scores(tokens, clean, None), [2 / 3, 2 / 3])
    assert tokens.shape == (2, steps) and (tokens[:, [0, 2]] == 0).all()


def test_token_data_is_completed_for_a_decoder_with_a_cache(real_exports):
    model = load_model(real_exports["gpt2_past_optimum"].path)
    ids = np.zeros((5, 7), np.int64)
    arrays = complete_arrays({"input_ids": ids}, model_inputs(model), where="t.npz")
    assert arrays["attention_mask"].shape == (5, 7) and arrays["attention_mask"].all()
    past = [k for k in arrays if k.startswith("past_key_values")]
    assert len(past) == 2 * LAYERS and all(arrays[k].shape[0] == 5 and arrays[k].shape[2] == 0 for k in past)
    given = {"input_ids": ids, **{k: arrays[k] for k in past}, "attention_mask": arrays["attention_mask"]}
    assert complete_arrays(given, model_inputs(model), where="t.npz") is given  # what the data holds is kept


def _tokens(tmp_path, count=12, length=10):
    path = tmp_path / "tokens.npz"
    np.savez(path, input_ids=np.random.default_rng(3).integers(0, VOCABULARY, (count, length)).astype(np.int64))
    return path


@pytest.mark.parametrize("metric", ["perplexity", "greedy:4"])
def test_language_metrics_score_one_clean_and_less_with_flips(real_exports, tmp_path, capsys, metric):
    path = real_exports["gpt2_past_optimum"].path
    code = main(["evaluate", str(path), "--data", str(_tokens(tmp_path)), "--metric", metric, "--p", "0,1e-2",
                 "--trials", "2", "--out", str(tmp_path / "r")])
    assert code == 0, capsys.readouterr().err
    rows = {r["p"]: r["mean"] for r in json.loads((tmp_path / "r" / "results.json").read_text())["rows"]}
    assert rows[0.0] == 1.0 and rows[0.01] < 0.9


def test_greedy_decodes_with_the_cache_and_flips_it(real_exports, tmp_path, capsys):
    """kv-cache alone as the target: greedy generation falls with flips in the entries it writes."""
    path = real_exports["gpt2_past_torchscript"].path
    code = main(["evaluate", str(path), "--data", str(_tokens(tmp_path)), "--metric", "greedy:4", "--targets",
                 "kv-cache", "--p", "0,0.05", "--trials", "2", "--out", str(tmp_path / "r")])
    assert code == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "r" / "results.json").read_text())
    rows = {r["p"]: r["mean"] for r in result["rows"]}
    assert rows[0.0] == 1.0 and rows[0.05] < 0.9
    assert result["exposure"]["sites"] == {"kv-cache": 2 * LAYERS}


def test_greedy_needs_a_cache(real_exports, tmp_path, capsys):
    corpus = real_exports["gpt2_dynamo"]
    data = tmp_path / "t.npz"
    feeds = corpus.feeds(4)
    np.savez(data, **feeds)
    code = main(["evaluate", str(corpus.path), "--data", str(data), "--metric", "greedy:2", "--p", "0",
                 "--trials", "1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1 and "past key values" in err and len(err.strip().splitlines()) == 1


def test_a_map_takes_the_cache_and_perplexity(real_exports, tmp_path):
    from onnxflip.campaign.sensitivity import SensitivitySettings, measure
    from onnxflip.data.npz import open_npz

    model = load_model(real_exports["gpt2_past_optimum"].path)
    source = open_npz(_tokens(tmp_path), specs=model_inputs(model))
    result = measure(model, source, metric_from_spec("perplexity"), SensitivitySettings(budget=2.0, targets=("kv-cache",)))
    assert {r["target"] for r in result.rows} == {"kv-cache"}
    assert len({r["site"] for r in result.rows}) == 2 * LAYERS


def test_an_injected_decoder_keeps_its_outputs_at_p0(real_exports):
    model = load_model(real_exports["gpt2_past_optimum"].path)
    _, injected = _sites(model, ("kv-cache", "activations"))
    proto = onnx.load(str(real_exports["gpt2_past_optimum"].path))
    assert {o.name for o in injected.graph.outputs} >= {o.name for o in proto.graph.output}


def test_the_shipped_language_model_is_exposed_whole_and_generates(tmp_path, capsys):
    """models/lm.onnx: one key and one value site per layer, weight and biases sites >= 95% of its stored float
    elements, and greedy:8 scores 1 clean and less at p = 1e-3."""
    import pathlib

    models = pathlib.Path(__file__).resolve().parent.parent / "models"
    metadata = {p.key: p.value for p in onnx.load(str(models / "lm.onnx"), load_external_data=False).metadata_props}
    layers = json.loads(metadata["onnxflip.model"])
    model = load_model(models / "lm.onnx")
    sites, _ = _sites(model, ("kv-cache",))
    assert len(sites) == 2 * layers["architecture"]["layers"]
    assert main(["inspect", str(models / "lm.onnx"), "--json"]) == 0
    coverage = json.loads(capsys.readouterr().out)["coverage"]["totals"]["float"]
    assert coverage["share_elements"] >= 0.95
    data = tmp_path / "eval.npz"
    np.savez(data, input_ids=np.load(models / "lm_eval.npz")["input_ids"][:32])
    assert main(["evaluate", str(models / "lm.onnx"), "--data", str(data), "--metric", "greedy:8", "--p", "0,1e-3",
                 "--trials", "2", "--out", str(tmp_path / "r")]) == 0
    rows = {r["p"]: r["mean"] for r in json.loads((tmp_path / "r" / "results.json").read_text())["rows"]}
    assert rows[0.0] == 1.0 and rows[0.001] < 1.0


def test_a_map_of_a_decoder_sizes_its_sites_from_the_data(real_exports, tmp_path):
    """Activation and cache tensors of symbolic size (the sequence length) are sized by the data's sequences."""
    from onnxflip.campaign.sensitivity import SensitivitySettings, measure
    from onnxflip.data.npz import open_npz

    model = load_model(real_exports["gpt2_past_optimum"].path)
    source = open_npz(_tokens(tmp_path, length=10), specs=model_inputs(model))
    result = measure(model, source, metric_from_spec("perplexity"),
                     SensitivitySettings(budget=2.0, targets=("activations", "kv-cache")))
    kv = {r["site"]: r["elements"] for r in result.rows if r["target"] == "kv-cache"}
    assert set(kv.values()) == {10 * 32}  # 10 positions x hidden 32 (heads x head size) per sample
    assert all(isinstance(r["elements"], int) and r["elements"] > 0 for r in result.rows)


def test_a_generation_past_the_models_positions_is_one_line(tmp_path, capsys):
    import pathlib

    models = pathlib.Path(__file__).resolve().parent.parent / "models"
    data = tmp_path / "eval.npz"
    np.savez(data, input_ids=np.load(models / "lm_eval.npz")["input_ids"][:4])
    code = main(["evaluate", str(models / "lm.onnx"), "--data", str(data), "--metric", "greedy:70", "--p", "0",
                 "--trials", "1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1 and "ONNX Runtime cannot run the model on this data" in err and len(err.strip().splitlines()) == 1


def test_kv_cache_on_a_model_without_a_cache_says_so(classifier_path, tmp_path, capsys):
    code = main(["inject", str(classifier_path), "-o", str(tmp_path / "i.onnx"), "--targets", "kv-cache"])
    err = capsys.readouterr().err
    assert code == 1 and "no key-value cache" in err

"""Vulnerability maps and protection plans: the interval's coverage, the probes, the map on small models, plans."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import model_from_text

from onnxflip.campaign.sensitivity import SensitivitySettings, flip_bit, interval, measure
from onnxflip.cli import cli, main
from onnxflip.data.base import ArraySource
from onnxflip.graph.probes import insert_probes
from onnxflip.metrics import metric_from_spec
from onnxflip.modelio import load_model, save_model
from onnxflip.protection import Protection, choose_plan, read_plan
from onnxflip.runtime.session import make_session

# --- the interval -------------------------------------------------------------------------------------------------


def _simulated_losses(kind: str, v: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n losses in [-1, 1] with mean v: 0/1 ruin (activation flips under top1), a loss that also helps sometimes
    (wrong -> right), or a continuous share of samples lost (parameter flips scored over many samples)."""
    if kind == "ruin":
        return (rng.random(n) < v).astype(float)
    if kind == "signed":  # +1 with probability v + h, -1 with probability h
        h = min(0.05, (1 - v) / 2)
        u = rng.random(n)
        return np.where(u < v + h, 1.0, np.where(u < v + 2 * h, -1.0, 0.0))
    # a flip ruins with probability 2v and then costs a uniform share of the samples (mean 1/2)
    ruined = rng.random(n) < 2 * v
    return np.where(ruined, rng.random(n), 0.0)


@pytest.mark.parametrize("kind", ["ruin", "signed", "share"])
def test_the_interval_covers_known_vulnerabilities(kind):
    """Simulated cells with known v (0 to 0.45, including v so small that most cells see no loss at all) and
    the trial counts a map gives (2 to 200): the 95% interval covers v in at least 93% of 3,000 cells."""
    rng = np.random.default_rng(7)
    covered = 0
    cells = 3000
    for _ in range(cells):
        v = float(rng.choice([0.0, 0.001, 0.01, 0.03, 0.1, 0.25, 0.45]))
        n = int(rng.choice([2, 3, 5, 10, 20, 50, 200]))
        losses = _simulated_losses(kind, v, n, rng)
        low, high = interval(np.clip(losses, 0, None).sum(), np.clip(-losses, 0, None).sum(), n)
        covered += low <= v <= high
    assert covered / cells >= 0.93


def test_a_naive_interval_would_fail_the_same_simulation():
    """The simulation can tell: a normal-theory interval (mean +- 1.96 sd / sqrt(n)) covers far less than 93%
    of the same 0/1 cells, most of which saw no loss."""
    rng = np.random.default_rng(7)
    covered, cells = 0, 3000
    for _ in range(cells):
        v = float(rng.choice([0.0, 0.001, 0.01, 0.03, 0.1, 0.25, 0.45]))
        n = int(rng.choice([2, 3, 5, 10, 20, 50, 200]))
        losses = _simulated_losses("ruin", v, n, rng)
        half = 1.96 * losses.std(ddof=1) / math.sqrt(n)
        covered += losses.mean() - half <= v <= losses.mean() + half
    assert covered / cells < 0.9


def test_no_loss_seen_leaves_an_interval_from_zero():
    low, high = interval(0.0, 0.0, 20)
    assert low <= 0 < high < 0.2


def test_flip_bit_matches_the_integer_reference():
    x = np.array([0.5, -3.25, 1e-3], np.float32)
    for bit in (0, 22, 23, 30, 31):
        assert np.array_equal(flip_bit(x, bit).view(np.uint32), x.view(np.uint32) ^ np.uint32(1 << bit))
    q = np.array([-128, 0, 127], np.int8)
    assert np.array_equal(flip_bit(q, 7).view(np.uint8), q.view(np.uint8) ^ np.uint8(0x80))


# --- the probes ---------------------------------------------------------------------------------------------------


def _two_layer() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    return model_from_text("""
    <ir_version: 10, opset_import: ["" : 21]>
    g (float[N,6] x) => (float[N,4] y) <float[6,5] W1, float[5] b1, float[5,4] W2> {
      h = Gemm (x, W1, b1)
      a = Relu (h)
      y = MatMul (a, W2)
    }""", [onnx.numpy_helper.from_array(rng.normal(size=(6, 5)).astype(np.float32), "W1"),
           onnx.numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "b1"),
           onnx.numpy_helper.from_array(rng.normal(size=(5, 4)).astype(np.float32), "W2")])


def test_a_probe_writes_one_element_of_one_sample():
    """Fed nothing, the probed model computes the clean outputs bit for bit; fed one element of sample 1's
    activation, only sample 1's output moves, to what NumPy computes with that element flipped."""
    proto = _two_layer()
    model = load_model_from_proto(proto)
    probes = insert_probes(model, targets=("activations",))
    (site,) = [s for s in probes.sites if s.name == "a"]
    session = make_session(probes.probed)
    x = np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32)
    empty = {site.inputs[0]: np.zeros((0, 2), np.int64), site.inputs[1]: np.zeros(0, np.float32)}
    for other in probes.sites:
        if other.target == "activations" and other is not site:
            empty |= {other.inputs[0]: np.zeros((0, 2), np.int64), other.inputs[1]: np.zeros(0, np.float32)}
    clean, values = session.run(["y", site.value_output], {"x": x, **empty})
    assert np.array_equal(clean, make_session(proto).run(["y"], {"x": x})[0])
    flipped = flip_bit(values[1, 2:3], 30)
    written = session.run(["y"], {"x": x, **empty, site.inputs[0]: np.array([[1, 2]], np.int64),
                                  site.inputs[1]: flipped})[0]
    a = values.copy()
    a[1, 2] = flipped[0]
    w2 = onnx.numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "W2"))
    assert np.array_equal(written[[0, 2]], clean[[0, 2]])
    np.testing.assert_allclose(written[1], a[1] @ w2, rtol=1e-5)


def load_model_from_proto(proto: onnx.ModelProto):
    import onnx_ir as ir

    return ir.serde.deserialize_model(proto)


def test_parameters_are_bound_per_session_and_stay_as_stored(tmp_path):
    """The template holds no parameter data; the sites hold the stored arrays (float16 when stored so)."""
    probes = insert_probes(load_model_from_proto(_two_layer()), format="float16", targets=("weights", "biases"))
    template = onnx.load_from_string(probes.template)
    bound = {s.stored_name for s in probes.sites}
    assert bound and all(init.data_location == onnx.TensorProto.EXTERNAL
                         for init in template.graph.initializer if init.name in bound)
    assert all(s.value.dtype == np.float16 and s.etype.name == "float16" for s in probes.sites)


# --- maps on small models -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template_map(classifier_path, synthetic_data):
    from onnxflip.campaign.experiment import scored_source

    model = load_model(classifier_path)
    metric = metric_from_spec("top1")
    source, _ = scored_source(model, synthetic_data, metric=metric, samples=100)
    settings = SensitivitySettings(budget=25.0, width=0.15, seed=3)
    return measure(model, source, metric, settings)


def test_the_top_exponent_bit_is_the_most_vulnerable_bit_of_every_weight_site(template_map):
    rows = [r for r in template_map.rows if r["target"] == "weights"]
    assert {r["site"] for r in rows} == {"T", "I"}
    for site in ("T", "I"):
        cells = [r for r in rows if r["site"] == site]
        assert max(cells, key=lambda r: r["vulnerability"])["bit"] == 30
        top = next(r for r in cells if r["bit"] == 30)
        assert top["low"] > 0.05  # measured, not a point estimate alone


def test_low_mantissa_bits_intervals_include_zero(template_map):
    low_bits = [r for r in template_map.rows if r["bit"] < 8]
    assert low_bits
    assert all(r["low"] <= 0 <= r["high"] for r in low_bits)
    assert all(r["trials"] >= 2 for r in template_map.rows)


def test_trials_go_where_the_intervals_are_wide(template_map):
    """Activation cells share runs and get many flips; among the parameter cells, those whose flips sometimes
    ruin (the top exponent bit of T) get more trials than those that never change a score."""
    rows = {(r["site"], r["bit"]): r for r in template_map.rows}
    assert rows[("T", 30)]["trials"] > rows[("T", 0)]["trials"]


def test_a_map_on_an_int8_qdq_model(qdq_path):
    model = load_model(qdq_path)
    x = np.random.default_rng(0).random((40, 3, 32, 32), dtype=np.float32)
    source = ArraySource({"input": x}, None)
    result = measure(model, source, metric_from_spec("agreement"), SensitivitySettings(format="int8", budget=3.0, seed=1))
    targets = {r["target"] for r in result.rows}
    assert targets == {"activations", "weights", "biases"}
    assert {r["dtype"] for r in result.rows if r["target"] != "biases"} == {"int8"}
    assert {r["bit"] for r in result.rows if r["dtype"] == "int8"} == set(range(8))
    assert result.clean == 1.0 and not result.unmeasured


def test_a_map_on_a_small_transformer(real_exports):
    corpus = real_exports["vit_torchscript"]
    model = load_model(corpus.path)
    feeds = corpus.feeds(24)
    source = ArraySource(feeds, None)
    result = measure(model, source, metric_from_spec("agreement"),
                     SensitivitySettings(budget=3.0, seed=1, targets=("activations", "weights")),
                     output=corpus.output)
    sites = {r["site"] for r in result.rows}
    assert any(r["target"] == "activations" for r in result.rows) and len(sites) > 10
    assert all(-1.5 <= r["vulnerability"] <= 1.5 for r in result.rows if r["trials"])


# --- plans and protection -----------------------------------------------------------------------------------------


def _rows():
    def row(site, bit, elements, v, target="weights"):
        return {"site": site, "target": target, "bit": bit, "element_bits": 32, "elements": elements, "trials": 20,
                "vulnerability": v, "low": v - 0.01, "high": v + 0.01}

    return [row("big", 30, 1000, 0.5), row("big", 25, 1000, 0.05), row("big", 0, 1000, 0.0),
            row("small", 30, 10, 0.9), row("act", 30, 100, 0.3, "activations")]


def test_a_plan_protects_the_most_vulnerable_bits_that_fit():
    """Stored bits: 1000 + 10 + 100 elements x 32; a 3% budget (1,065 bits) fits small:30 and big:30 but then
    not big:25 (1,000 more), yet still act:30 (100)."""
    plan = choose_plan(_rows(), 0.03)
    assert plan["stored_bits"] == 1110 * 32
    assert [(p["site"], p["bit"]) for p in plan["protect"]] == [("small", 30), ("big", 30)]
    assert plan["protected_bits"] == 1010 <= 0.03 * plan["stored_bits"]
    plan = choose_plan(_rows(), 0.04)
    assert [(p["site"], p["bit"]) for p in plan["protect"]] == [("small", 30), ("big", 30), ("act", 30)]


def test_protected_bits_never_flip(classifier_path, synthetic_data, tmp_path):
    """Every bit of every site protected: at p = 0.5 the model scores as clean; the injection records the
    masks; an unprotected run at p = 0.5 is ruined."""
    model = load_model(classifier_path)
    probes = insert_probes(model)
    plan = {"protect": [{"site": s.name, "bit": b} for s in probes.sites for b in range(32)]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    runner = CliRunner()
    scores = {}
    for name, extra in (("protected", ["--protect", str(tmp_path / "plan.json")]), ("plain", [])):
        result = runner.invoke(cli, ["evaluate", str(classifier_path), "--data", str(synthetic_data), "--p", "0.5",
                                     "--trials", "1", "--out", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
        rows = json.loads((tmp_path / name / "results.json").read_text())["rows"]
        scores[name] = {r["p"]: r["mean"] for r in rows}
    assert scores["protected"][0.5] == scores["protected"][0.0] > 0.9
    assert scores["plain"][0.5] < 0.3
    recorded = json.loads((tmp_path / "protected" / "results.json").read_text())["settings"]["protection"]
    assert recorded == {s.name: "0xffffffff" for s in probes.sites}


def test_inject_records_the_protected_mask(classifier_path, tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"protect": [{"site": "T", "bit": 30}, {"site": "T", "bit": 31}]}))
    out = tmp_path / "injected.onnx"
    result = CliRunner().invoke(cli, ["inject", str(classifier_path), "-o", str(out), "--p", "1e-3",
                                      "--protect", str(tmp_path / "plan.json")])
    assert result.exit_code == 0, result.output
    sites = json.loads(onnx.load(out).metadata_props[0].value)["sites"]
    assert next(s for s in sites if s["tensor"] == "T")["mask"] == "0x3fffffff"
    assert next(s for s in sites if s["tensor"] == "I")["mask"] == "0xffffffff"


def test_a_plan_for_another_model_is_refused_in_one_line(classifier_path, synthetic_data, tmp_path, capsys):
    (tmp_path / "plan.json").write_text(json.dumps({"protect": [{"site": "conv9.weight", "bit": 30}]}))
    code = main(["evaluate", str(classifier_path), "--data", str(synthetic_data), "--p", "1e-3", "--trials", "1",
                 "--out", str(tmp_path / "r"), "--protect", str(tmp_path / "plan.json")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "conv9.weight" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("text", ["not json", '{"protect": [{"bit": 3}]}'])
def test_a_file_that_is_not_a_plan_is_refused(tmp_path, text):
    from onnxflip.errors import OnnxflipError

    (tmp_path / "plan.json").write_text(text)
    with pytest.raises(OnnxflipError, match="is not a protection plan"):
        read_plan(tmp_path / "plan.json")


def test_protection_masks_combine_bits_per_site():
    protection = Protection.of_pairs([("a", 3), ("a", 30), ("b", 0)])
    assert protection.mask("a") == (1 << 3) | (1 << 30) and protection.mask("c") == 0


# --- the command --------------------------------------------------------------------------------------------------


def test_the_sensitivity_command_writes_the_map_and_plans(classifier_path, synthetic_data, tmp_path):
    out = tmp_path / "map"
    result = CliRunner().invoke(cli, ["sensitivity", str(classifier_path), "--data", str(synthetic_data), "--samples",
                                      "50", "--budget", "4s", "--out", str(out), "--plan-budget", "0.01,0.05"])
    assert result.exit_code == 0, result.output
    assert "most vulnerable (site, bit)" in result.output
    header = (out / "sensitivity.csv").read_text().splitlines()[0].split(",")
    assert {"site", "target", "bit", "elements", "vulnerability", "low", "high"} <= set(header)
    data = json.loads((out / "sensitivity.json").read_text())
    assert len(data["rows"]) == len((out / "sensitivity.csv").read_text().splitlines()) - 1
    assert (out / "sensitivity.png").stat().st_size and (out / "sites.png").stat().st_size
    for budget in ("0.01", "0.05"):
        plan = json.loads((out / f"plan-{budget}.json").read_text())
        assert plan["protected_bits"] <= float(budget) * plan["stored_bits"]
        read_plan(out / f"plan-{budget}.json")


@pytest.mark.parametrize("args, message", [
    (["--measure"], "--measure needs --plan-budget"),
    (["--plan-budget", "2"], "share of the stored bits"),
])
def test_bad_sensitivity_options_are_usage_errors(classifier_path, synthetic_data, tmp_path, args, message, capsys):
    code = main(["sensitivity", str(classifier_path), "--data", str(synthetic_data), "--out", str(tmp_path / "m"),
                 *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_save_model_round_trip_keeps_protection_out_of_clean_results(classifier_path, tmp_path):
    """Without --protect nothing about protection is recorded (results stay comparable with earlier ones)."""
    from onnxflip.campaign.trials import TrialSettings

    assert "protection" not in TrialSettings().to_json()
    save_model(load_model(classifier_path), tmp_path / "copy.onnx")


@pytest.mark.parametrize("budget", ["400", "abc", "0s"])
def test_a_budget_that_is_not_a_time_is_an_input_error(classifier_path, synthetic_data, tmp_path, budget, capsys):
    code = main(["sensitivity", str(classifier_path), "--data", str(synthetic_data), "--out", str(tmp_path / "m"),
                 "--budget", budget])
    err = capsys.readouterr().err
    assert code == 1 and "budget" in err and "trials" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("text, says", [("not json", "not JSON"), ('{"protect": [{"bit": 3}]}', '"site", "bit"'),
                                        ('{"protect": [{"site": "T", "bit": "x"}]}', "bit position")])
def test_a_broken_plan_is_an_input_error_in_one_line(classifier_path, tmp_path, text, says, capsys):
    (tmp_path / "plan.json").write_text(text)
    code = main(["inject", str(classifier_path), "-o", str(tmp_path / "i.onnx"), "--protect", str(tmp_path / "plan.json")])
    err = capsys.readouterr().err
    assert code == 1 and says in err and len(err.strip().splitlines()) == 1
    assert "Error" not in err.replace("error:", "")  # no Python exception names
    assert not (tmp_path / "i.onnx").exists()


def test_a_plan_for_another_format_or_width_is_refused(classifier_path, tmp_path, capsys):
    (tmp_path / "plan.json").write_text(json.dumps({"format": "float32", "protect": [{"site": "T", "bit": 30}]}))
    code = main(["inject", str(classifier_path), "-o", str(tmp_path / "i.onnx"), "--format", "float16",
                 "--protect", str(tmp_path / "plan.json")])
    assert code == 1 and "format float32" in capsys.readouterr().err
    (tmp_path / "wide.json").write_text(json.dumps({"protect": [{"site": "T", "bit": 40}]}))
    code = main(["inject", str(classifier_path), "-o", str(tmp_path / "i.onnx"), "--protect",
                 str(tmp_path / "wide.json")])
    assert code == 1 and "bit 40" in capsys.readouterr().err


def test_results_of_a_model_injected_with_protection_record_it(classifier_path, synthetic_data, tmp_path, capsys):
    (tmp_path / "plan.json").write_text(json.dumps({"protect": [{"site": "T", "bit": 30}]}))
    injected = tmp_path / "i.onnx"
    assert main(["inject", str(classifier_path), "-o", str(injected), "--protect", str(tmp_path / "plan.json")]) == 0
    assert main(["evaluate", str(injected), "--data", str(synthetic_data), "--p", "0,1e-3", "--trials", "1",
                 "--out", str(tmp_path / "r")]) == 0
    settings = json.loads((tmp_path / "r" / "results.json").read_text())["settings"]
    assert settings["protection"] == {"T": "0x40000000"}


def test_a_map_in_bfloat16(classifier_path, synthetic_data):
    from onnxflip.campaign.experiment import scored_source

    model = load_model(classifier_path)
    metric = metric_from_spec("top1")
    source, _ = scored_source(model, synthetic_data, metric=metric, samples=40)
    result = measure(model, source, metric, SensitivitySettings(format="bfloat16", budget=2.0))
    assert {r["dtype"] for r in result.rows} == {"bfloat16"} and {r["bit"] for r in result.rows} == set(range(16))
    assert any(r["target"] == "activations" and r["trials"] for r in result.rows)


def test_the_existing_folder_message_does_not_offer_resume(classifier_path, synthetic_data, tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x").write_text("")
    code = main(["sensitivity", str(classifier_path), "--data", str(synthetic_data), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 1 and "--overwrite" in err and "--resume" not in err


def test_a_map_of_a_model_with_external_data(real_exports):
    """The dynamo exporter writes its weights beside the model (model.onnx.data): each parameter trial's session
    reads the tensors no trial binds from the model's folder, whatever the working folder."""
    corpus = real_exports["bert_dynamo"]
    assert (corpus.path.parent / "model.onnx.data").is_file()
    result = measure(load_model(corpus.path), ArraySource(corpus.feeds(8), None), metric_from_spec("agreement"),
                     SensitivitySettings(budget=2.0, targets=("weights",)), output=corpus.output)
    assert result.runs["parameter_trials"] > 0 and all(r["target"] == "weights" for r in result.rows)

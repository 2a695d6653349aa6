"""evaluate and reproduce under memory faults: ECC word fractions, the stuck-at sweep, per-trial memories, bad input."""

from __future__ import annotations

import csv
import json

import onnx
import onnxruntime as ort
import pytest
from conftest import save_model, template_classifier

import onnxflip.campaign.trials as trials
from onnxflip import OnnxflipError
from onnxflip.campaign.trials import LocalRunner, TrialSettings
from onnxflip.cli import main
from onnxflip.data.sources import open_source
from onnxflip.faults import FaultModel
from onnxflip.metrics import metric_from_spec
from onnxflip.modelio import load_model
from onnxflip.runtime.session import runtime_bytes, session_options


def _settings(**settings) -> TrialSettings:
    """TrialSettings whose fault-model fields (bits, nonfinite, stuck-at rates, ECC) go into its FaultModel."""
    fault = {k: settings.pop(k) for k in ("bits", "nonfinite", "s0", "s1", "ecc", "on_detected") if k in settings}
    return TrialSettings(fault=FaultModel(**fault), **settings)


@pytest.fixture(scope="module")
def source(synthetic_data):
    return open_source(synthetic_data, model=template_classifier())


def _runner(source, **settings) -> LocalRunner:
    return LocalRunner(template_classifier(), source, metric_from_spec("top1"), _settings(**settings))


def test_evaluate_with_secded_reports_the_word_fractions_per_point(classifier_path, synthetic_data, tmp_path, capsys):
    out = tmp_path / "ecc"
    code = main(["evaluate", str(classifier_path), "--data", str(synthetic_data), "--p", "0,1e-3,1e-2", "--trials", "2",
                 "--ecc", "secded", "--out", str(out)])
    console = capsys.readouterr().out
    assert code == 0 and "corrected" in console and "silent" in console
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["ecc"] == "secded"
    clean, low, high = data["rows"]
    assert (clean["corrected"], clean["detected"], clean["silent"]) == (0.0, 0.0, 0.0)
    for row in (low, high):
        words = sum(t["words"] for t in row["words"].values())
        assert set(row["words"]) == {"activations", "weights", "biases"} and words > 0
        assert 0 < row["corrected"] < 1 and 0 <= row["silent"] <= row["detected"] < row["corrected"]
    assert high["corrected"] > low["corrected"] and high["detected"] > low["detected"]
    # 39-bit words at p = 1e-2: one error in 39 p (1 - p)^38 = 0.266 of them, two in 0.052
    assert high["corrected"] == pytest.approx(0.266, abs=0.03) and high["detected"] == pytest.approx(0.052, abs=0.02)
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["corrected"]) == high["corrected"] and float(rows[-1]["silent"]) == high["silent"]


def test_without_ecc_results_have_no_word_fractions(classifier_path, synthetic_data, tmp_path, capsys):
    out = tmp_path / "plain"
    assert main(["evaluate", str(classifier_path), "--data", str(synthetic_data), "--p", "0,1e-3", "--trials", "1",
                 "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    assert all("corrected" not in r and r["s0"] == r["s1"] == 0.0 for r in data["rows"])
    assert all("words" not in t for t in data["trials"])
    assert "corrected" not in (out / "results.csv").read_text().splitlines()[0]


def test_a_stuck_at_sweep_finds_its_midpoint(classifier_path, synthetic_data, tmp_path, capsys):
    out = tmp_path / "stuck"
    code = main(["evaluate", str(classifier_path), "--data", str(synthetic_data), "--sweep", "stuck-at",
                 "--targets", "weights", "--midpoint", "--p-range", "1e-6:0.5", "--precision", "0.8",
                 "--budget", "400", "--out", str(out)])
    console = capsys.readouterr().out
    assert code == 0 and "midpoint stuck-at rate = " in console
    data = json.loads((out / "results.json").read_text())
    mid = data["midpoint"]
    assert data["settings"]["sweep"] == "stuck-at" and mid["status"] in ("precision", "budget")
    assert 1e-6 < mid["p"] < 0.5
    faulty = [r for r in data["rows"] if r["p"] > 0]
    assert all(r["s0"] == r["s1"] == r["p"] / 2 and r["p01"] == r["p10"] == 0.0 for r in faulty)
    flips = tmp_path / "flips"
    assert main(["evaluate", str(classifier_path), "--data", str(synthetic_data), "--targets", "weights", "--p",
                 "0,1e-3", "--trials", "1", "--out", str(flips)]) == 0
    capsys.readouterr()
    assert main(["compare", str(flips), str(out), "-o", str(tmp_path / "both.png")]) == 1  # no common x axis
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sweep different quantities" in err[0] and not (tmp_path / "both.png").exists()


def test_each_trial_is_a_new_memory_whatever_the_batches(source):
    """Stuck weights follow the trial's seed: the same numbers for any batch size, other numbers for another trial."""
    settings = {"sweep": "stuck-at", "targets": ("weights",)}
    whole = _runner(source, batch_size=300, **settings).run(3e-4, [0, 1, 2], len(source))
    batched = _runner(source, batch_size=64, **settings).run(3e-4, [0, 1, 2], len(source))
    assert [o.score for o in whole] == [o.score for o in batched]
    assert len({o.score for o in whole}) > 1


def test_stuck_activations_read_one_memory_in_every_batch_of_a_trial(source, monkeypatch):
    runner = _runner(source, batch_size=64, targets=("activations",), s1=1e-3)
    fed = []
    original = runner._outputs

    def spy(session, names, feeds, *args):
        result = original(session, names, feeds, *args)
        fed.append(args)
        return result

    monkeypatch.setattr(runner, "_outputs", spy)
    (outcome,) = runner.run(1e-4, [3], len(source))
    seeds = {trial_seed for _, _, trial_seed in fed}
    assert seeds == {outcome.seed} and len({batch_seed for batch_seed, _, _ in fed}) == len(fed) == 5


def test_stuck_cells_add_to_every_faulty_point_of_a_flip_sweep(source):
    runner = _runner(source, batch_size=100, s0=0.05, s1=0.05)
    assert runner.settings.rates(0.0) == (0.0, 0.0, 0.0, 0.0)  # p = 0: the fault-free reference
    assert runner.settings.rates(1e-3) == (1e-3, 1e-3, 0.05, 0.05)
    (clean,) = runner.run(0.0, [0], len(source))
    (stuck,) = runner.run(1e-9, [0], len(source))
    assert clean.score > 0.9 and stuck.score < 0.5


_BAD_OPTIONS = [(["--stuck-at0", "0.6", "--stuck-at1", "0.5"], "exceeds 1")]
_BAD_CHOICES = [(["--on-detected", "trap"], "--on-detected"), (["--ecc", "parity"], "--ecc")]
_BAD_SWEEPS = [
    (["--sweep", "stuck-at", "--stuck-at1", "1e-3"], "give no fixed stuck-at rates"),
    (["--flip-p", "1e-3"], "a fixed one is for a stuck-at sweep"),
]


@pytest.mark.parametrize(("command", "options", "message", "status"),
                         [(command, *case, 1) for command in ("evaluate", "reproduce") for case in _BAD_OPTIONS]
                         + [(command, *case, 2) for command in ("evaluate", "reproduce") for case in _BAD_CHOICES]
                         + [("evaluate", *case, 2) for case in _BAD_SWEEPS])
def test_bad_memory_fault_options_are_one_line_errors(classifier_path, tmp_path, capsys, command, options, message,
                                                      status):
    # Parameters the fault model refuses are input errors (exit 1); values outside a choice list and options that
    # contradict each other, usage errors (exit 2).
    model = [str(classifier_path)] if command == "evaluate" else []
    code = main([command, *model, "--out", str(tmp_path / "out"), *options])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == status and len(err) == 1 and err[0].startswith("onnxflip: error:") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_ecc_on_a_width_it_cannot_protect_is_an_input_error_in_evaluate(classifier_path, synthetic_data, tmp_path,
                                                                        capsys, monkeypatch):
    import onnxflip.faults

    monkeypatch.setattr(onnxflip.faults, "ECC_CODES", {"secded": {8: (8, 5)}, "secded64": {}})
    code = main(["evaluate", str(classifier_path), "--data", str(synthetic_data), "--ecc", "secded", "--out",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "cannot protect 32-bit float32" in err[0], err


def test_reproduce_runs_every_cell_under_the_memory_faults(synthetic_data, tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    save_model(template_classifier(), models / "vgg11.onnx")
    out = tmp_path / "repro"
    code = main(["reproduce", "--models", "vgg11", "--models-dir", str(models), "--formats", "float32", "--no-extras", "--bits", "all",
                 "--targets", "weights", "--p-range", "1e-6:0.3", "--precision", "1", "--budget", "60",
                 "--ecc", "secded64", "--on-detected", "zero", "--stuck-at1", "1e-4", "--data", str(synthetic_data),
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    (cell,) = json.loads((out / "report.json").read_text())["cells"]
    assert cell["memory"] == {"s1": 1e-4, "ecc": "secded64", "on_detected": "zero"}
    assert cell["folder"] == "cells/vgg11-float32-weights-all-both-keep-s1_0.0001-ecc_secded64-on_detected_zero"
    settings = json.loads((out / cell["folder"] / "results.json").read_text())["settings"]
    assert (settings["s1"], settings["ecc"], settings["on_detected"]) == (1e-4, "secded64", "zero")
    assert "Memory faults in every cell: s1 0.0001, ecc secded64, on_detected zero." in (out / "report.md").read_text()


def test_int8_trials_under_ecc_run_the_exact_integer_kernels(qdq_path, synthetic_data, tmp_path):
    """ECC words keep int8 weights int8 in the injected graph; once a trial has flipped them into constants they are
    stored as uint8 like the others, so p = 0 computes bit for bit what the trial without ECC computes."""
    model = load_model(qdq_path)
    data = open_source(synthetic_data, model=model)
    batch = next(data.batches(300))

    def logits(ecc: str, p: float):
        runner = LocalRunner(model, data, metric_from_spec("top1"),
                             TrialSettings(format="int8", targets=("weights",), fault=FaultModel(ecc=ecc)))
        session = runner._session(p, p, 7).session
        return session.run([runner.output], batch.feeds)[0], runner

    plain, _ = logits("none", 0.0)
    protected, runner = logits("secded", 0.0)
    assert plain.std() > 0
    assert protected.tobytes() == plain.tobytes()
    options = session_options()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(runtime_bytes(runner._materialize(runner._controls(1e-2, 1e-2, 7))), options,
                         providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert "QLinearConv" in ops and "Conv" not in ops



def test_ecc_sites_without_a_static_size_leave_their_fractions_out(source, monkeypatch, caplog):
    """A site whose words cannot be counted (no static size) gives no fraction, with one warning, not a guess."""
    counted = trials.words_per_run

    def words_per_run(sites, target, *, batch=1):
        if target == "activations":
            raise OnnxflipError("site hidden has no static size; count its words from its tensor")
        return counted(sites, target, batch=batch)

    monkeypatch.setattr(trials, "words_per_run", words_per_run)
    outcomes = _runner(source, batch_size=100, ecc="secded").run(1e-3, [0, 1], len(source))
    assert all(set(o.words) == {"weights", "biases"} for o in outcomes)
    warnings = [r for r in caplog.records if "no word fractions for activations" in r.getMessage()]
    assert len(warnings) == 1

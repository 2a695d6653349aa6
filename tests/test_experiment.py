"""Experiments on a tiny classifier and synthetic data: exactness, reproducibility, files, resume, errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
from conftest import four_logit_model, run_model, template_classifier

from onnxflip import OnnxflipError
from onnxflip.campaign.design import Budget, SearchSettings
from onnxflip.campaign.experiment import Experiment, parse_probabilities, run
from onnxflip.campaign.trials import LocalRunner, TrialSettings, mix_seed
from onnxflip.cli import main
from onnxflip.data import load_split
from onnxflip.data.sources import open_source
from onnxflip.faults import FaultModel
from onnxflip.metrics import metric_from_spec


def _settings(**settings) -> TrialSettings:
    """TrialSettings whose fault-model fields (bits, nonfinite, stuck-at rates, ECC) go into its FaultModel."""
    fault = {k: settings.pop(k) for k in ("bits", "nonfinite", "s0", "s1", "ecc", "on_detected") if k in settings}
    return TrialSettings(fault=FaultModel(**fault), **settings)


@pytest.fixture(scope="module")
def source(synthetic_data):
    return open_source(synthetic_data, model=template_classifier())


def runner(source, **settings) -> LocalRunner:
    return LocalRunner(template_classifier(), source, metric_from_spec("top1"), _settings(**settings))


def test_p0_is_the_clean_accuracy_of_a_plain_onnxruntime_run(source, synthetic_data):
    split = load_split(synthetic_data, "test")
    (logits,) = run_model(template_classifier(), {"input": split.as_float_nchw()})
    clean = float((logits.argmax(1) == split.labels).mean())
    assert clean > 0.9
    (outcome,) = runner(source, batch_size=64).run(0.0, [0], len(source))
    assert outcome.score == clean


def test_half_of_all_bits_flipped_is_chance(source):
    scores = [o.score for o in runner(source, batch_size=100).run(0.5, [0, 1], len(source))]
    assert abs(np.mean(scores) - 0.1) < 0.06


def test_a_trial_depends_only_on_the_seed_the_trial_and_p(source):
    first = runner(source, batch_size=50, seed=7).run(1e-2, [0, 1], len(source))
    again = runner(source, batch_size=50, seed=7).run(1e-2, [1, 0], len(source))
    other = runner(source, batch_size=50, seed=8).run(1e-2, [0, 1], len(source))
    assert [o.score for o in first] == [o.score for o in reversed(again)]
    assert [o.score for o in first] != [o.score for o in other]
    assert [o.seed for o in first] == [mix_seed(7, 0), mix_seed(7, 1)]


def test_a_label_free_metric_on_a_four_class_model(synthetic_data, tmp_path):
    path = tmp_path / "four.onnx"
    onnx.save(four_logit_model(), path)
    experiment = Experiment(search=None, probabilities=(0.0, 1e-2), trials_per_point=2, metric="agreement")
    result = run(experiment, model_path=path, data=synthetic_data, out=tmp_path / "r")
    assert result["clean_score"] == 1.0 and result["floor"] == pytest.approx(0.25)
    assert result["rows"][-1]["mean"] < 1.0


def test_grid_midpoint_and_compare_from_the_command_line(classifier_path, synthetic_data, tmp_path, capsys):
    grid = tmp_path / "grid"
    code = main(["evaluate", str(classifier_path), "--data", str(synthetic_data), "--p", "1e-6:1e-1:6",
                 "--trials", "2", "--out", str(grid)])
    assert code == 0 and "clean top1" in capsys.readouterr().out
    assert {p.name for p in grid.iterdir()} == {"results.json", "results.csv", "accuracy.png"}
    search = tmp_path / "search"
    code = main(["evaluate", str(classifier_path), "--data", str(synthetic_data), "--midpoint", "--p-range",
                 "1e-7:1e-1", "--precision", "0.6", "--out", str(search)])
    assert code == 0, capsys.readouterr().err
    data = json.loads((search / "results.json").read_text())
    mid = data["midpoint"]
    assert data["experiment"]["mode"] == "midpoint" and mid["status"] == "precision"
    assert mid["low"] < mid["p"] < mid["high"] and mid["width_decades"] <= 0.6
    assert data["fit"]["trials"] == sum(r["trials"] for r in data["rows"] if r["p"] > 0)
    assert len(data["trials"]) == data["evaluations"] and data["design"]["samples_per_trial"] == 300
    capsys.readouterr()
    plot = tmp_path / "both.png"
    assert main(["compare", str(grid), str(search), "-o", str(plot)]) == 0
    table = capsys.readouterr().out
    assert plot.is_file() and "midpoint" in table and len(table.strip().splitlines()) == 3
    figure = (grid / "accuracy.png").read_bytes()
    for output, message in ((grid / "accuracy.png", "is a file of the results"), (tmp_path / "both.txt", ".png")):
        assert main(["compare", str(grid), str(search), "-o", str(output)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert (grid / "accuracy.png").read_bytes() == figure and not (tmp_path / "both.txt").exists()


def test_only_p0_measures_the_clean_score_and_draws_it(classifier_path, synthetic_data, tmp_path, capsys):
    out = tmp_path / "clean"
    code = main(["evaluate", str(classifier_path), "--data", str(synthetic_data), "--p", "0", "--trials", "1",
                 "--samples", "100", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "results.json").read_text())
    assert [r["p"] for r in data["rows"]] == [0.0] and data["midpoint"]["status"] == "not reached"
    assert (out / "accuracy.png").stat().st_size > 10_000


def test_an_interrupted_campaign_resumes_to_the_same_numbers(classifier_path, synthetic_data, tmp_path, monkeypatch):
    experiment = Experiment(search=SearchSettings(low=1e-7, high=1e-1, precision=0.6))
    fresh = run(experiment, model_path=classifier_path, data=synthetic_data, out=tmp_path / "fresh")
    calls = {"n": 0}
    original = LocalRunner.trial

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 25:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(LocalRunner, "trial", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(experiment, model_path=classifier_path, data=synthetic_data, out=out)
    monkeypatch.setattr(LocalRunner, "trial", original)
    kept = json.loads((out / "results.json").read_text())
    assert 0 < len(kept["trials"]) < 25
    with pytest.raises(OnnxflipError, match="exists"):
        run(experiment, model_path=classifier_path, data=synthetic_data, out=out)
    other = dataclasses.replace(experiment, trials=dataclasses.replace(experiment.trials, seed=5), samples=200)
    with pytest.raises(OnnxflipError, match=r"other settings \(samples: 300 -> 200, seed: 0 -> 5\)"):
        run(other, model_path=classifier_path, data=synthetic_data, out=out, resume=True)
    resumed = run(experiment, model_path=classifier_path, data=synthetic_data, out=out, resume=True)
    strip = lambda trials: [{k: v for k, v in t.items() if k != "seconds"} for t in trials]  # noqa: E731
    assert strip(resumed["trials"]) == strip(fresh["trials"])
    assert resumed["midpoint"]["p"] == fresh["midpoint"]["p"]


@pytest.mark.parametrize(("text", "values"), [("1e-6:1e-2:5", [1e-6, 1e-5, 1e-4, 1e-3, 1e-2]),
                                              ("1e-3, 1e-5", [1e-5, 1e-3]), ("0", [0.0])])
def test_probability_lists(text, values):
    assert parse_probabilities(text) == pytest.approx(values)


@pytest.mark.parametrize("text", ["", ",", "1e-5:1e-3", "a,b", "0.5,2", "1e-9:-1:3"])
def test_bad_probability_lists(text):
    with pytest.raises(OnnxflipError):
        parse_probabilities(text)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--p", ","], "empty"),
        (["--samples", "100000"], "only 300"),
        (["--p", "3"], "outside [0, 1]"),
        (["--midpoint", "--p-range", "0:1e-2"], "needs 0 < LOW < HIGH <= 1"),
        (["--midpoint", "--p-range", "1e-3"], "use LOW:HIGH"),
        (["--midpoint", "--precision", "0"], "precision"),
        (["--midpoint", "--budget", "-5m"], "budget"),
        (["--midpoint", "--budget", "3"], "cannot even bracket"),
        (["--midpoint", "--budget", "0.001s"], "cannot even bracket"),
        (["--metric", "top1:nothing"], "metric"),
        (["--midpoint", "--p", "0,1e-3"], "--midpoint does not use --p"),
        (["--midpoint", "--trials", "5"], "--midpoint does not use --trials"),
        (["--p", "0,1e-3", "--p-range", "1e-6:1e-3", "--precision", "0.3"], "does not use --p-range, --precision"),
        (["--budget", "5m"], "does not use --budget"),
        (["--resume", "--overwrite"], "--resume and --overwrite contradict each other"),
        (["--resume"], "has no results.json to resume"),
        (["--on-detected", "zero"], "--on-detected needs --ecc"),
        (["--sweep", "stuck-at", "--direction", "10"], "a stuck-at sweep without --flip-p does not use --direction"),
        (["--parameter-randomness", "per_run", "--targets", "activations"], "hold no stored parameters"),
        (["--parameter-randomness", "per_run", "--stuck-at0", "1e-3"], "without stuck-at cells and ECC"),
    ],
)
def test_bad_campaign_input_is_one_line(classifier_path, synthetic_data, tmp_path, capsys, extra, message):
    out = tmp_path / "r"
    code = main(["evaluate", str(classifier_path), "--data", str(synthetic_data), "--out", str(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code in (1, 2) and len(err) == 1 and message in err[0], err
    if not {"--p", "--p-range", "--trials", "--budget", "--resume", "--on-detected", "--direction",
            "--parameter-randomness"} & set(extra):
        assert code == 1
    assert not out.exists()


def test_an_existing_results_folder_is_never_replaced_silently(classifier_path, synthetic_data, tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code = main(["evaluate", str(classifier_path), "--data", str(synthetic_data), "--out", str(out), "--p", "1e-3"])
    assert code == 1 and "--resume" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"


def test_an_injected_model_brings_its_format(classifier_path, synthetic_data, tmp_path, capsys):
    injected = tmp_path / "bf16.onnx"
    assert main(["inject", str(classifier_path), "-o", str(injected), "--format", "bfloat16", "--p", "0"]) == 0
    out = tmp_path / "r"
    assert main(["evaluate", str(injected), "--data", str(synthetic_data), "--p", "1e-3", "--trials", "1",
                 "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["settings"]["format"] == "bfloat16"
    capsys.readouterr()
    assert main(["evaluate", str(injected), "--data", str(synthetic_data), "--format", "float16", "--p", "1e-3",
                 "--out", str(tmp_path / "r2")]) == 1
    assert "the model is injected with --format bfloat16, not --format float16" in capsys.readouterr().err


def test_budgets_in_the_experiment_are_recorded(classifier_path, synthetic_data, tmp_path):
    experiment = Experiment(search=SearchSettings(low=1e-7, high=1e-1, precision=0.01, budget=Budget(trials=30)))
    result = run(experiment, model_path=classifier_path, data=synthetic_data, out=tmp_path / "r")
    assert result["midpoint"]["status"] == "budget" and result["stop_reason"] == "the budget was spent"
    assert result["experiment"]["search"]["budget"] == {"seconds": None, "trials": 30}


@pytest.mark.parametrize("fmt", ["float32", "bfloat16"])
def test_a_trial_session_computes_what_materialising_the_trial_computes(source, fmt):
    """The trial's session binds its flipped constants into a model materialised once: the numbers must be those
    of materialising each trial in full (the same seed gives the same flips)."""
    from onnxflip.graph.passes.materialize import materialize_parameters
    from onnxflip.runtime.session import make_session

    r = runner(source, format=fmt, targets=("weights", "biases"))
    batch = next(source.batches(300))
    for trial in range(3):
        seed = mix_seed(0, trial)
        bound = r._session(3e-3, 3e-3, seed).session
        full = make_session(materialize_parameters(r.injected, r._controls(3e-3, 3e-3, seed)))
        np.testing.assert_array_equal(bound.run(None, batch.feeds)[0], full.run(None, batch.feeds)[0])
    assert r._template not in (None, False)


def test_evaluate_reads_an_npz_of_token_ids_with_a_label_free_metric(token_model_path, token_npz, tmp_path, capsys):
    out = tmp_path / "tokens"
    code = main(["evaluate", str(token_model_path), "--data", str(token_npz), "--metric", "agreement",
                 "--targets", "weights,biases", "--p", "0,1e-2,0.2", "--trials", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "results.json").read_text())
    rows = {r["p"]: r["mean"] for r in data["rows"]}
    assert rows[0.0] == 1.0 and rows[0.2] < 1.0 and data["metric"] == "agreement"


def test_evaluate_a_resnet_on_an_image_folder_with_top5(resnet18_path, tmp_path, capsys):
    from conftest import write_photo_folder

    photos = write_photo_folder(tmp_path / "photos", classes=3, per_class=2)
    out = tmp_path / "resnet"
    code = main(["evaluate", str(resnet18_path), "--data", str(photos), "--preprocess", "imagenet", "--metric",
                 "top5", "--targets", "weights", "--p", "0,1e-3", "--trials", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "results.json").read_text())
    assert data["floor"] == pytest.approx(5 / 1000) and data["metric"] == "top5"


@pytest.mark.parametrize("floor", ["1", "2"])
def test_a_clean_score_at_or_below_the_floor_has_no_midpoint(classifier_path, synthetic_data, tmp_path, capsys, floor):
    """Agreement of the clean model with itself is 1: a floor of 1 (or above) leaves no fall to measure.  A grid
    still measures its scores and says there is no midpoint; the search, which needs a fall, is refused."""
    args = ["evaluate", str(classifier_path), "--data", str(synthetic_data), "--metric", "agreement", "--floor", floor]
    code = main([*args, "--p", "0,1e-3", "--trials", "2", "--out", str(tmp_path / "grid")])
    out = capsys.readouterr().out
    assert code == 0 and "no midpoint: the clean score 1 is not above the floor" in out, out
    data = json.loads((tmp_path / "grid" / "results.json").read_text())
    assert data["midpoint"]["status"] == "no fall" and [r["trials"] for r in data["rows"]] == [1, 2]
    code = main([*args, "--midpoint", "--out", str(tmp_path / "search")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "not above the floor" in err[0], err


def test_overwrite_replaces_only_a_results_folder_that_holds_no_input(classifier_path, synthetic_data, tmp_path,
                                                                      capsys):
    """--overwrite on a mistyped --out (a folder of other files, the model's folder, the data) deletes nothing."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    model = model_dir / "model.onnx"
    model.write_bytes(classifier_path.read_bytes())
    (model_dir / "results.json").write_text("{}")  # even beside a results file
    cases = [(mine, "holds no results.json"), (model_dir, "holds the input"), (tmp_path, "holds the input"),
             (synthetic_data, "holds the input"), (synthetic_data / "results", "lies inside the input")]
    for out, message in cases:
        code = main(["evaluate", str(model), "--data", str(synthetic_data), "--p", "0", "--out", str(out),
                     "--overwrite"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and message in err[0], (out, err)
    assert (mine / "notes.txt").read_text() == "keep" and model.read_bytes() == classifier_path.read_bytes()
    assert not (synthetic_data / "results").exists()
    results = tmp_path / "results"
    for _ in range(2):  # a results folder is replaced
        assert main(["evaluate", str(model), "--data", str(synthetic_data), "--p", "0", "--out", str(results),
                     "--overwrite"]) == 0


def test_the_clean_reference_of_an_injected_model_has_none_of_its_default_faults(classifier_path, synthetic_data,
                                                                                  tmp_path, capsys):
    """Its stuck cells (and flips) are defaults of its control inputs: the fault-free pass, the reference of
    agreement, feeds zero rates to every FlipBits left, the logits' too."""
    injected = tmp_path / "stuck.onnx"
    assert main(["inject", str(classifier_path), "-o", str(injected), "--stuck-at1", "0.05", "--p", "0.01"]) == 0
    out = tmp_path / "r"
    assert main(["evaluate", str(injected), "--data", str(synthetic_data), "--metric", "agreement", "--p", "0,1e-9",
                 "--trials", "2", "--out", str(out)]) == 0, capsys.readouterr().err
    data = json.loads((out / "results.json").read_text())
    assert [t["score"] for t in data["trials"]] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("trials", [5, 12, 30])
def test_a_budget_in_trials_is_a_cap(classifier_path, synthetic_data, tmp_path, trials):
    """The clean passes count; the bracket's ends, the pilot and every batch stop at the budget."""
    out = tmp_path / "r"
    assert main(["evaluate", str(classifier_path), "--data", str(synthetic_data), "--midpoint", "--p-range",
                 "1e-7:1e-1", "--precision", "0.05", "--budget", str(trials), "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["evaluations"] == len(data["trials"]) == trials and data["stop_reason"] == "the budget was spent"


def test_read_noise_keeps_the_mean_score_and_narrows_the_trials(source):
    """Write noise (one set of weight flips per trial, read by every batch) and read noise (each batch of 10 reads
    its own flips) give every sample the same chance of a flip pattern, so the same expected score; a trial's
    30 independent reads average out much of what one write leaves to chance.  60 trials each, at p where the
    score is about half the clean one: the means within 4 standard errors, the read-noise trials' standard
    deviation under half the write-noise trials'."""
    scores = {}
    for randomness in ("fixed", "per_run"):
        trials = runner(source, targets=("weights",), batch_size=10, parameter_randomness=randomness)
        scores[randomness] = np.array([o.score for o in trials.run(3e-5, range(60), len(source))])
    write, read = scores["fixed"], scores["per_run"]
    se = np.sqrt(write.var(ddof=1) / len(write) + read.var(ddof=1) / len(read))
    assert abs(write.mean() - read.mean()) < 4 * se, (write.mean(), read.mean(), se)
    assert read.std(ddof=1) < 0.5 * write.std(ddof=1), (read.std(ddof=1), write.std(ddof=1))
    assert 0.2 < read.mean() < 0.8  # a p where flips matter, not the clean or the ruined model


def test_read_noise_is_recorded_with_the_results(classifier_path, synthetic_data, tmp_path, capsys):
    out = tmp_path / "r"
    code = main(["evaluate", str(classifier_path), "--data", str(synthetic_data), "--targets", "weights",
                 "--parameter-randomness", "per_run", "--batch-size", "100", "--p", "0,3e-5", "--trials", "2",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["settings"]["parameter_randomness"] == "per_run"


class _Scored:
    """A runner whose every trial at p > 0 scores ``score_at(p)`` (clean 1, floor 0): a table, given."""

    samples, floor = 100, 0.0

    def __init__(self, score_at) -> None:
        self.score_at = score_at

    def run(self, p, trials, samples):
        from onnxflip.campaign.design import TrialOutcome

        return [TrialOutcome(p, t, samples, 1.0 if p == 0 else self.score_at(p), 0.0) for t in trials]


@pytest.mark.parametrize(("means", "status", "note"), [
    ({1e-4: 0.9, 1e-3: 0.8, 1e-2: 0.6}, "above", "stays above the midpoint level up to p = 0.01"),
    ({1e-4: 0.4, 1e-3: 0.2, 1e-2: 0.0}, "below", "below the midpoint level already at p = 0.0001"),
    # Below at the lowest p, above at the highest: not "above" (the old verdict read only the last point).
    ({1e-4: 0.3, 1e-3: 0.35, 1e-2: 0.7}, "non-monotone",
     "falls below the midpoint level 0.5 at p = 0.0001 (mean 0.3000) but is above it again at p = 0.01 (mean 0.7000)"
     ": the measured range holds no midpoint"),
    # Above at the lowest p, below at the highest, one point back above between: the fitted curve crosses the
    # level in the range, so the midpoint stands, and the note says which point rose again.
    ({1e-6: 1.0, 1e-5: 0.95, 1e-4: 0.45, 1e-3: 0.55, 1e-2: 0.05, 1e-1: 0.0}, "grid",
     "falls below the midpoint level 0.5 at p = 0.0001 (mean 0.4500) but is above it again at p = 0.001"),
    ({1e-6: 1.0, 1e-5: 0.9, 1e-4: 0.6, 1e-3: 0.3, 1e-2: 0.0}, "grid", None),
])
def test_the_grid_verdict_follows_from_every_point(means, status, note):
    from onnxflip.campaign.experiment import _grid, _midpoint

    experiment = Experiment(search=None, probabilities=(0.0, *means), trials_per_point=3)
    measured = []
    fit, got, clean = _grid(_Scored(means.__getitem__), experiment, measured.extend)
    mid = _midpoint(fit, got, clean[100], 0.0, measured, grid=True)
    assert mid["status"] == status and mid["level"] == 0.5
    assert (note is None and "note" not in mid) or note in mid["note"], mid
    if status == "grid":
        assert 1e-6 <= mid["p"] <= 1e-1  # the fitted curve crosses the level inside the range
    else:
        assert mid["p"] is None


def test_a_search_whose_low_end_is_below_the_level_and_high_end_above_it_is_not_called_below():
    from onnxflip.campaign.design import search_midpoint
    from onnxflip.campaign.experiment import _midpoint

    found = search_midpoint(_Scored(lambda p: 0.2 if p < 1e-5 else 0.9), SearchSettings(low=1e-9, high=1e-2))
    mid = _midpoint(found.fit, found.status, 1.0, 0.0, found.outcomes)
    assert found.status == "non-monotone" and mid["p"] is None and "bound_p" not in mid
    assert mid["note"].startswith("the score falls below the midpoint level 0.5 at p = 1e-09 (mean 0.2000) but is "
                                  "above it again at p = 0.01 (mean 0.9000)")

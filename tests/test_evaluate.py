"""Sweeps on a tiny classifier and synthetic data: exactness, reproducibility, statistics, outputs, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import four_logit_model, run_model, template_classifier

from onnxflip import OnnxflipError
from onnxflip.data import load_split
from onnxflip.evaluate import Evaluator, SweepSettings, mix_seed
from onnxflip.stats import accuracy_interval, crossing
from onnxflip.sweep import MidpointSearch, _search, parse_probabilities, prepare_output, run_sweep


@pytest.fixture(scope="module")
def test_split(synthetic_data):
    return load_split(synthetic_data, "test")


def evaluator(split, **settings) -> Evaluator:
    return Evaluator(template_classifier(), split.as_float_nchw(), split.labels, SweepSettings(**settings))


def test_p0_accuracy_is_the_clean_accuracy(test_split):
    images = test_split.as_float_nchw()
    (logits,) = run_model(template_classifier(), {"input": images})
    clean = float((logits.argmax(1) == test_split.labels).mean())
    assert clean > 0.9
    row = evaluator(test_split, trials=2, batch_size=64).evaluate_point(0.0)
    assert row["mean"] == clean and row["min"] == row["max"] == clean


def test_half_of_all_bits_flipped_is_chance(test_split):
    row = evaluator(test_split, trials=2, batch_size=100).evaluate_point(0.5)
    assert abs(row["mean"] - 0.1) < 0.06
    # At p = 0.5 every bit of the 10 stored logits is a fair coin, whatever the layers before did: a logit is
    # NaN or infinite when its 8 exponent bits are all 1 (probability 2^-8), an image when any of its 10 is.
    expected = 1 - (1 - 2.0**-8) ** 10
    draws = 2 * len(test_split.labels)
    assert abs(row["nonfinite"] - expected) < 4 * math.sqrt(expected * (1 - expected) / draws)  # 4 sd


def test_same_seed_reproduces_every_number(test_split, tmp_path):
    def sweep(seed: int, name: str) -> dict:
        out = tmp_path / name
        prepare_output(out, resume=False, overwrite=False)
        return run_sweep(evaluator(test_split, trials=2, batch_size=50, seed=seed), out,
                         probabilities=[1e-4, 1e-3, 1e-2], progress=False)

    first, again, other = sweep(7, "a"), sweep(7, "b"), sweep(8, "c")
    assert first["rows"] == again["rows"]
    assert first["rows"] != other["rows"]
    assert first["trial_seeds"] == [mix_seed(7, 0), mix_seed(7, 1)]


def _curve(p0: float, clean: float = 0.9, chance: float = 0.1):
    return lambda p: chance + (clean - chance) / (1 + (p / p0) ** 1.5) if p > 0 else clean


@pytest.mark.parametrize("p0", [3e-7, 2e-5, 4e-3])
def test_midpoint_search_finds_a_known_midpoint_with_few_evaluations(p0):
    accuracy = _curve(p0)
    rows: dict[float, dict] = {}

    def evaluate(p):
        rows[p] = {"mean": accuracy(p)}
        return rows[p]

    _search(evaluate, rows, clean=0.9, search=MidpointSearch(low=1e-9, high=0.5, tolerance=0.05))
    ps = sorted(rows)
    found = crossing(ps, [rows[p]["mean"] for p in ps], 0.5)
    assert abs(math.log10(found / p0)) < 0.05
    assert len(rows) <= 12


def test_grid_crossing_interpolates_in_log_p():
    assert crossing([1e-6, 1e-5], [0.8, 0.2], 0.5) == pytest.approx(10**-5.5)
    assert crossing([1e-6, 1e-5], [0.8, 0.6], 0.5) is None


@pytest.mark.parametrize(("trial_effect", "trials"), [("none", 3), ("spread", 3), ("ruin", 10), ("none", 1)])
def test_interval_covers_the_true_accuracy_at_its_stated_rate(trial_effect, trials):
    """Simulate test sets drawn from a population, and trials with their own random effect; count coverage.

    Each image is right with its own probability (heterogeneous images).  A
    trial scales those probabilities by a factor: 1 (``none``), uniform in
    [0.4, 1] (``spread``), or 0.1 / 0.9 with probability 0.3 (``ruin``: one
    exponent flip in a weight ruins a whole trial; a few trials cannot show
    such rare events, so that case uses ten).
    """
    rng = np.random.default_rng(0)
    population = rng.beta(2, 1, size=200_000)
    mean_factor = {"none": 1.0, "spread": 0.7, "ruin": 0.3 * 0.1 / 0.9 + 0.7}[trial_effect]
    truth = population.mean() * mean_factor
    n, runs = 500, 1000
    covered = 0
    for _ in range(runs):
        images = rng.choice(population, size=n)
        if trial_effect == "none":
            factor = np.ones(trials)
        elif trial_effect == "spread":
            factor = rng.uniform(0.4, 1.0, trials)
        else:
            factor = np.where(rng.random(trials) < 0.3, 0.1 / 0.9, 1.0)
        interval = accuracy_interval(rng.random((trials, n)) < factor[:, None] * images[None, :])
        covered += interval.low <= truth <= interval.high
    assert 0.92 <= covered / runs <= 0.99, covered / runs


def test_outputs_and_resume(test_split, tmp_path, monkeypatch):
    out = tmp_path / "run"
    prepare_output(out, resume=False, overwrite=False)
    ev = evaluator(test_split, trials=2, batch_size=100)
    calls = {"n": 0}
    original = ev.evaluate_point

    def interrupted(p, on_batch=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(p, on_batch)

    monkeypatch.setattr(ev, "evaluate_point", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(ev, out, probabilities=[1e-4, 1e-3, 1e-2], progress=False)
    kept = json.loads((out / "results.json").read_text())
    assert [r["p"] for r in kept["rows"]] == [0.0, 1e-4]
    with pytest.raises(OnnxflipError, match="exists"):
        prepare_output(out, resume=False, overwrite=False)
    previous = prepare_output(out, resume=True, overwrite=False)
    monkeypatch.setattr(ev, "evaluate_point", original)
    resumed = run_sweep(ev, out, probabilities=[1e-4, 1e-3, 1e-2], previous=previous, progress=False)
    fresh_out = tmp_path / "fresh"
    prepare_output(fresh_out, resume=False, overwrite=False)
    fresh = run_sweep(evaluator(test_split, trials=2, batch_size=100), fresh_out,
                      probabilities=[1e-4, 1e-3, 1e-2], progress=False)
    assert resumed["rows"] == fresh["rows"]
    assert {p.name for p in out.iterdir()} == {"results.json", "results.csv", "accuracy.png"}
    assert (out / "results.csv").read_text().count("\n") == 5


@pytest.mark.parametrize("text", ["", ",", "1e-5:1e-3", "a,b", "0.5,2", "1e-9:-1:3"])
def test_bad_probability_lists(text):
    with pytest.raises(OnnxflipError):
        parse_probabilities(text)


def test_grid_parsing():
    assert parse_probabilities("1e-6:1e-2:5") == pytest.approx([1e-6, 1e-5, 1e-4, 1e-3, 1e-2])
    assert parse_probabilities("1e-3, 1e-5") == [1e-5, 1e-3]


def test_model_that_is_not_a_ten_class_classifier(test_split):
    import onnx_ir as ir

    with pytest.raises(OnnxflipError, match="10 logits"):
        Evaluator(ir.serde.deserialize_model(four_logit_model()), test_split.as_float_nchw(), test_split.labels,
                  SweepSettings())


# --- the command line ------------------------------------------------------------------------------

from onnxflip.cli import main  # noqa: E402 - imported where its tests begin


def test_cli_grid_and_midpoint_write_the_three_files(classifier_path, synthetic_data, tmp_path, capsys):
    grid = tmp_path / "grid"
    code = main(["evaluate", str(classifier_path), "--data", str(synthetic_data), "--p", "1e-6:1e-2:5",
                 "--trials", "2", "--out", str(grid)])
    out = capsys.readouterr().out
    assert code == 0 and "clean accuracy" in out
    assert {p.name for p in grid.iterdir()} == {"results.json", "results.csv", "accuracy.png"}
    search = tmp_path / "search"
    code = main(["evaluate", str(classifier_path), "--data", str(synthetic_data), "--midpoint", "--p-range",
                 "1e-7:1e-1", "--trials", "1", "--out", str(search)])
    assert code == 0
    capsys.readouterr()
    data = json.loads((search / "results.json").read_text())
    assert data["mode"] == "midpoint" and data["midpoint"]["p"] is not None
    plot = tmp_path / "both.png"
    assert main(["compare", str(grid), str(search), "-o", str(plot)]) == 0
    table = capsys.readouterr().out
    assert plot.is_file() and "midpoint" in table and len(table.strip().splitlines()) == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--p", ","], "empty"),
        (["--samples", "100000"], "only 300"),
        (["--p", "3"], "outside [0, 1]"),
        (["--midpoint", "--p-range", "0:1e-2"], "needs 0 < LOW < HIGH <= 1"),
        (["--midpoint", "--p-range", "1e-3"], "use LOW:HIGH"),
        (["--midpoint", "--p-range", "1e-3:1e-3"], "needs 0 < LOW < HIGH <= 1"),
        (["--midpoint", "--p-range", "1e-9:2"], "needs 0 < LOW < HIGH <= 1"),
    ],
)
def test_cli_bad_sweep_input(classifier_path, synthetic_data, tmp_path, capsys, extra, message):
    out = tmp_path / "r"
    code = main(["evaluate", str(classifier_path), "--data", str(synthetic_data), "--out", str(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_cli_refuses_an_existing_results_folder(classifier_path, synthetic_data, tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code = main(["evaluate", str(classifier_path), "--data", str(synthetic_data), "--out", str(out), "--p", "1e-3"])
    err = capsys.readouterr().err
    assert code != 0 and "--resume" in err and (out / "notes.txt").read_text() == "mine"


def test_cli_refuses_a_model_without_ten_logits(synthetic_data, tmp_path, capsys):
    import onnx

    path = tmp_path / "four.onnx"
    onnx.save(four_logit_model(), path)
    code = main(["evaluate", str(path), "--data", str(synthetic_data), "--out", str(tmp_path / "r")])
    assert code != 0 and "10 logits" in capsys.readouterr().err


def test_the_bracket_may_be_given_in_either_order():
    from onnxflip.sweep import MidpointSearch

    assert MidpointSearch.from_range("1e-2:1e-9", tolerance=0.2) == MidpointSearch(low=1e-9, high=1e-2, tolerance=0.2)


@pytest.mark.parametrize("spec", ["0:1e-2:5", "1e-6:0:3", "-1e-3:1e-2:3"])
def test_a_log_spaced_grid_from_zero_says_why(spec):
    with pytest.raises(OnnxflipError, match=r"log-spaced.*above 0.*comma list") as info:
        parse_probabilities(spec)
    assert "\n" not in str(info.value)

"""Metrics: scores against plain references, floors from the output shape, user functions and their errors."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from onnxflip import OnnxflipError
from onnxflip.metrics import (
    Agreement,
    Metric,
    Nonfinite,
    RelError,
    TopK,
    metric_from_spec,
    relative_errors,
)


def logits_with_specials(rows: int, classes: int, seed: int) -> np.ndarray:
    """Random logits with ties, NaNs and infinities sprinkled in."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, size=(rows, classes)).astype(np.float32)  # small integers: many ties
    specials = rng.random((rows, classes))
    x[specials < 0.08] = np.nan
    x[(specials >= 0.08) & (specials < 0.12)] = np.inf
    x[(specials >= 0.12) & (specials < 0.15)] = -np.inf
    return x


def topk_reference(row: np.ndarray, label: int, k: int) -> bool:
    """The K first classes when sorting by (NaN first, larger value first, lower index first)."""
    order = sorted(range(len(row)), key=lambda j: (not math.isnan(row[j]), 0.0 if math.isnan(row[j]) else -row[j], j))
    return label in order[:k]


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("classes", [4, 10, 1000])
def test_topk_with_the_argmax_rule_equals_a_sorting_reference_with_nan_as_largest(k, classes):
    x = logits_with_specials(64, classes, seed=classes + k)
    labels = np.random.default_rng(k).integers(0, classes, size=64)
    expected = np.asarray([topk_reference(row, label, k) for row, label in zip(x, labels)], np.float64)
    np.testing.assert_array_equal(TopK(k, nonfinite_score="argmax").scores(x, None, labels), expected)
    if k == 1:  # NumPy's own argmax gives the same answer: NaN is largest, the first one wins
        np.testing.assert_array_equal(TopK(1, nonfinite_score="argmax").scores(x, None, labels),
                                      np.argmax(x, axis=1) == labels)
    # By default a row holding NaN or inf is wrong, and every finite row is ranked as before.
    finite = np.isfinite(x).all(axis=1)
    assert 0 < finite.sum() < 64 or classes == 1000
    np.testing.assert_array_equal(TopK(k).scores(x, None, labels), expected * finite)


@pytest.mark.parametrize("spec", ["top1", "top5", "agreement"])
def test_outputs_that_hold_nan_or_inf_are_wrong_and_the_argmax_rule_restores_the_old_numbers(spec):
    """Ten classes, the clean model and the labels all saying class 0: a row of NaN (or one NaN, or an inf) is
    scored 0 by default; with the argmax rule NaN is the largest value, so NaN in class 0 (or an all-NaN row,
    whose first NaN is class 0) is right, and a NaN in class 7 predicts class 7."""
    clean = np.tile(np.linspace(1.0, 0.1, 10, dtype=np.float32), (4, 1))  # class 0 first, class 9 last
    faulty = clean.copy()
    faulty[0] = np.nan  # all NaN: argmax says class 0
    faulty[1, 0] = np.nan  # NaN where the label is
    faulty[2, 7] = np.nan  # NaN elsewhere: argmax says class 7 (among the top 5 still: 0, 7, 1, 2, 3)
    faulty[3, 9] = np.inf  # inf elsewhere: argmax says class 9
    labels = np.zeros(4, np.int64)
    wrong, argmax = metric_from_spec(spec), metric_from_spec(spec, nonfinite_score="argmax")
    np.testing.assert_array_equal(wrong.scores(faulty, clean, labels), [0, 0, 0, 0])
    np.testing.assert_array_equal(argmax.scores(faulty, clean, labels), [1, 1, spec == "top5", spec == "top5"])
    np.testing.assert_array_equal(wrong.scores(clean, clean, labels), [1, 1, 1, 1])  # finite rows as before


def test_agreement_over_positions_counts_a_position_that_is_not_finite_as_disagreeing():
    clean = np.random.default_rng(2).normal(size=(3, 4, 5)).astype(np.float32)  # (batch, positions, classes)
    faulty = clean.copy()
    faulty[0, 1, 2] = np.nan
    faulty[1, :, 0] = np.inf
    faulty[2, 3] = np.nan
    np.testing.assert_array_equal(Agreement().scores(faulty, clean, None), [0.75, 0.0, 0.75])
    old = Agreement(nonfinite_score="argmax").scores(faulty, clean, None)
    expected = (np.argmax(faulty, axis=-1) == np.argmax(clean, axis=-1)).mean(axis=1)
    np.testing.assert_array_equal(old, expected)


@pytest.mark.parametrize(("spec", "shape", "floor"), [
    ("top1", ("batch", 1000), 1 / 1000),
    ("top1", (None, 4), 1 / 4),
    ("top5", ("batch", 1000), 5 / 1000),
    ("agreement", ("batch", 4), 1 / 4),
    ("rel-error", ("batch", 7, 9), 0.0),
    ("nonfinite", None, 0.0),
])
def test_floors_come_from_the_output_shape(spec, shape, floor):
    metric = metric_from_spec(spec)
    assert isinstance(metric, Metric)
    assert metric.floor(shape) == pytest.approx(floor)


@pytest.mark.parametrize("shape", [("batch", "classes"), None, ("batch",)])
def test_a_class_count_that_is_not_fixed_asks_for_a_floor(shape):
    with pytest.raises(OnnxflipError, match="--output NAME, give the floor with --floor"):
        TopK(1).floor(shape)


def test_agreement_is_the_rate_of_the_same_top1():
    clean = np.random.default_rng(1).normal(size=(200, 10)).astype(np.float32)
    faulty = clean.copy()
    assert np.all(Agreement().scores(faulty, clean, None) == 1.0)
    faulty[:50, 7] = np.nan  # a ruined output agrees with nothing
    scores = Agreement().scores(faulty, clean, None)
    assert np.all(scores[:50] == 0.0) and np.all(scores[50:] == 1.0)
    # The argmax rule: a NaN predicts its class, so agreement only where the clean model said 7.
    scores = Agreement(nonfinite_score="argmax").scores(faulty, clean, None)
    np.testing.assert_array_equal(scores[:50], np.argmax(clean[:50], axis=1) == 7)
    assert np.all(scores[50:] == 1.0)


def test_relative_error_and_its_threshold():
    rng = np.random.default_rng(0)
    clean = rng.normal(size=(6, 3, 5)).astype(np.float32)
    faulty = clean.copy()
    faulty[1] *= 1.05  # 5% relative error
    faulty[2] *= 1.5
    faulty[3, 0, 0] = np.nan
    faulty[4, 1, 1] = np.inf
    errors = relative_errors(faulty, clean)
    assert errors[0] == 0 and errors[1] == pytest.approx(0.05, rel=1e-5) and errors[2] == pytest.approx(0.5, rel=1e-5)
    assert np.isinf(errors[3]) and np.isinf(errors[4])
    np.testing.assert_array_equal(RelError().scores(faulty, clean, None), [1, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(RelError(threshold=0.01).scores(faulty, clean, None), [1, 0, 0, 0, 0, 1])
    zeros = np.zeros((2, 3))
    np.testing.assert_array_equal(relative_errors(np.array([[0.0, 0, 0], [0, 1, 0]]), zeros), [0, np.inf])


def test_nonfinite_scores_samples_whose_outputs_are_all_finite():
    x = np.zeros((4, 3, 2), np.float32)
    x[1, 2, 1], x[3, 0, 0] = np.nan, -np.inf
    np.testing.assert_array_equal(Nonfinite().scores(x, None, None), [1, 0, 1, 0])


@pytest.mark.parametrize(("call", "expected"), [
    (lambda: TopK(1).scores(np.zeros((3, 4)), None, None), "needs labels, and the data has none"),
    (lambda: TopK(1).scores(np.zeros((3, 4)), None, np.array([0, 1, 4])), r"labels outside 0..3"),
    (lambda: TopK(1).scores(np.zeros((3, 4, 2)), None, np.zeros(3, np.int64)), r"needs \(batch, classes\) outputs"),
    (lambda: TopK(5).floor(("batch", 4)), "more classes than the model's 4"),
    (lambda: Agreement().scores(np.zeros((3, 4)), None, None), "clean model's outputs"),
    (lambda: RelError().scores(np.zeros((3, 4)), np.zeros((2, 4)), None), "differ"),
    (lambda: metric_from_spec("accuracy"), "unknown metric 'accuracy'; choose top1"),
    (lambda: metric_from_spec("top1", threshold=0.1), "threshold applies to rel-error only"),
    (lambda: metric_from_spec("topk"), "topK needs k"),
    (lambda: metric_from_spec("rel-error", threshold=-1), "threshold must be a finite number"),
    (lambda: metric_from_spec("top0"), "K >= 1"),
    (lambda: metric_from_spec("rel-error", nonfinite_score="argmax"),
     "a nonfinite score of argmax applies to top1, topK and agreement only, not to rel-error"),
    (lambda: metric_from_spec("top1", nonfinite_score="largest"), "a nonfinite score is wrong or argmax, not 'largest'"),
    (lambda: Agreement(nonfinite_score="first"), "a nonfinite score is wrong or argmax"),
])
def test_misuse_is_one_line(call, expected):
    with pytest.raises(OnnxflipError, match=expected) as excinfo:
        call()
    assert "\n" not in str(excinfo.value)


def test_specs_name_their_metrics():
    assert metric_from_spec("top1") == TopK(1) and metric_from_spec("Top5") == TopK(5)
    assert metric_from_spec("topk", k=3) == TopK(3)
    assert metric_from_spec("top5", nonfinite_score="argmax") == TopK(5, nonfinite_score="argmax")
    assert metric_from_spec("agreement") == Agreement(nonfinite_score="wrong")
    assert metric_from_spec("rel-error", threshold=0.2) == RelError(threshold=0.2)
    assert (metric_from_spec("agreement").needs_clean, metric_from_spec("top1").needs_labels) == (True, True)


# --- user metrics ---------------------------------------------------------------------------------

USER_MODULE = '''
import numpy as np

def margin(faulty, clean, labels):
    """Share of the clean top-1 logit kept, clipped to [0, 1]."""
    top = np.argmax(clean, axis=1)
    rows = np.arange(len(clean))
    return np.clip(faulty[rows, top] / clean[rows, top], 0.0, 1.0)

margin.floor = 0.25

def right(faulty, clean, labels):
    return np.argmax(faulty, axis=1) == labels

right.needs_labels = True

def flat(faulty, clean, labels):
    return np.ones((len(faulty), 2))

def large(faulty, clean, labels):
    return np.full(len(faulty), 2.0)

def broken(faulty, clean, labels):
    raise KeyError("oops")

not_callable = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_metrics.py").write_text(USER_MODULE)
    (tmp_path / "bad_import.py").write_text("import no_such_package_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("my_metrics", "bad_import"):
        sys.modules.pop(name, None)


def test_a_user_function_is_a_metric(user_module):
    clean = np.array([[1.0, 4.0], [3.0, 1.0]])
    faulty = np.array([[1.0, 2.0], [6.0, 1.0]])
    for spec in ("my_metrics:margin", f"{user_module / 'my_metrics.py'}:margin"):
        metric = metric_from_spec(spec)
        np.testing.assert_allclose(metric.scores(faulty, clean, None), [0.5, 1.0])
        assert metric.floor(("batch", 2)) == 0.25 and not metric.needs_labels and metric.needs_clean
    right = metric_from_spec("my_metrics:right")
    assert right.needs_labels and right.floor(None) == 0.0
    np.testing.assert_array_equal(right.scores(faulty, clean, np.array([1, 1])), [1.0, 0.0])


@pytest.mark.parametrize(("spec", "expected"), [
    ("no_such_module_xyz:f", "cannot import metric no_such_module_xyz:f: ModuleNotFoundError"),
    ("bad_import:f", "cannot import metric bad_import:f: ModuleNotFoundError"),
    ("my_metrics:missing", "has no function 'missing'"),
    ("my_metrics:not_callable", "has no function 'not_callable'"),
    ("nowhere/file.py:f", "does not exist"),
    (":f", "must be package.module:function"),
])
def test_a_user_metric_that_cannot_be_imported(user_module, spec, expected):
    with pytest.raises(OnnxflipError, match=expected) as excinfo:
        metric_from_spec(spec)
    assert "\n" not in str(excinfo.value)


@pytest.mark.parametrize(("name", "expected"), [
    ("flat", r"returned shape \(3, 2\); it must return one score per sample, shape \(3,\)"),
    ("large", r"scores outside \[0, 1\] \(e.g. 2.0\)"),
    ("broken", "metric my_metrics:broken failed: KeyError"),
])
def test_a_user_metric_that_returns_the_wrong_thing(user_module, name, expected):
    metric = metric_from_spec(f"my_metrics:{name}")
    with pytest.raises(OnnxflipError, match=expected) as excinfo:
        metric.scores(np.zeros((3, 4)), np.zeros((3, 4)), None)
    assert "\n" not in str(excinfo.value)

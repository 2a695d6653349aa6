"""What evaluate's summary says about a result: an interval much narrower than asked for says why."""

from __future__ import annotations

import pathlib

import pytest

from onnxflip.report.summary import evaluation_summary


def _result(width: float, targets: list[str]) -> dict:
    return {
        "midpoint": {"status": "estimated", "p": 2.7e-5, "low": 2.6e-5, "high": 2.6e-5 * 10 ** width,
                     "width_decades": width, "level": 0.486},
        "settings": {"format": "float32", "targets": targets, "sweep": "flip"},
        "metric": "top1", "clean_score": 0.872, "design": {"samples_per_trial": 500}, "evaluations": 53,
        "wall_seconds": 45.0, "stop_reason": "the interval reached the precision", "rows": [],
        "experiment": {"mode": "midpoint", "search": {"precision": 0.2}},
        "fit": {"central_trials": 40, "at_bound": []},
    }


@pytest.mark.parametrize(("width", "said"), [(0.04, True), (0.099, True), (0.1, False), (0.19, False)])
def test_an_interval_under_half_the_width_asked_for_says_why(width, said):
    text = evaluation_summary(_result(width, ["activations"]), pathlib.Path("r"))
    assert ("under half the 0.2 asked for (a maximum)" in text) is said
    if said:
        assert "40 trials where the curve falls (40 here)" in text and "activations flip in every sample" in text


def test_the_reason_names_activation_flips_only_where_activations_flip():
    text = evaluation_summary(_result(0.04, ["weights"]), pathlib.Path("r"))
    assert "under half the 0.2 asked for" in text and "activations flip" not in text

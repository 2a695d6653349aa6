"""One experiment: settings in, results out.  ``onnxflip evaluate``, ``reproduce`` and a benchmark call :func:`run`.

The path: load the model -> open the data source and the metric -> a trial
runner (:mod:`~onnxflip.campaign.trials`) -> either a grid of probabilities
with a fixed number of trials each, or the sequential midpoint search
(:mod:`~onnxflip.campaign.design`) -> the fitted curve and the midpoint
(:mod:`~onnxflip.campaign.estimate`) -> results.json / results.csv
(:mod:`~onnxflip.campaign.results`) and accuracy.png (:mod:`onnxflip.report.plots`).

"The midpoint lies beyond the range" is a result (``midpoint.status`` is
``above`` or ``below``, said only where every measured point lies on that
side of the midpoint level), not an error; points that fall below the level
and rise above it again, ending above it or with no fitted curve crossing it
in the range, are ``non-monotone``, and the note names the two points.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import pathlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from onnxflip.campaign.design import SearchSettings, TrialOutcome, TrialRunner, has_fall, search_midpoint
from onnxflip.campaign.estimate import PointData, fit_curve, with_profile
from onnxflip.campaign.executors import Executor, LocalExecutor
from onnxflip.campaign.results import (
    PENDING_MIDPOINT,
    outcomes_from,
    prepare_output,
    removed_if_left_empty,
    rows_of,
    versions,
    write_results,
)
from onnxflip.campaign.trials import LocalRunner, TrialSettings, injected_format, injected_settings, mix_seed
from onnxflip.data.base import DataSource, model_outputs
from onnxflip.data.preprocess import Preprocess
from onnxflip.data.sources import check_labels, match_classes, model_class_names, open_source, resolve_data
from onnxflip.errors import OnnxflipError
from onnxflip.graph.formats import model_format, written_compute
from onnxflip.graph.inputs import batch_dimension
from onnxflip.graph.record import InjectionRecord
from onnxflip.metrics import Metric, metric_from_spec
from onnxflip.modelio import load_model

__all__ = ["Experiment", "parse_probabilities", "resolve_compute", "resolve_format", "run", "settings_for_model"]

logger = logging.getLogger(__name__)

SEED_SCHEME = ("trial t: mix(seed, t) for weights and biases; activations of batch b: mix(mix(seed, t), 1 + b); "
               "stuck cells of trial t: mix(seed, t) for every target")


def parse_probabilities(text: str) -> list[float]:
    """``1e-7:1e-1:25`` (log-spaced, inclusive) or a comma list ``1e-5,1e-4``."""
    text = text.strip()
    try:
        if ":" in text:
            start, stop, count = text.split(":")
            lo, hi, n = float(start), float(stop), int(count)
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise OnnxflipError(f"cannot read probabilities {text!r}; use START:STOP:COUNT or a comma list") from None
    if ":" in text:
        if not (lo > 0 and hi > 0):
            raise OnnxflipError(f"{text!r} is log-spaced, so START and STOP must be above 0; to include p = 0, "
                                f"give a comma list such as 0,1e-6,1e-4")
        if n < 1:
            raise OnnxflipError(f"{text!r}: COUNT must be at least 1")
        values = list(np.logspace(math.log10(lo), math.log10(hi), n))
    if not values:
        raise OnnxflipError("the probability list is empty")
    bad = [v for v in values if not 0.0 <= v <= 1.0]
    if bad:
        raise OnnxflipError(f"probability {bad[0]} is outside [0, 1]")
    return sorted({float(v) for v in values})


@dataclass(frozen=True)
class Experiment:
    """What to measure: the trials' settings and either a midpoint search or a grid of probabilities."""

    trials: TrialSettings = field(default_factory=TrialSettings)
    search: SearchSettings | None = field(default_factory=SearchSettings)
    probabilities: tuple[float, ...] | None = None  # a grid instead of the search
    trials_per_point: int = 3
    samples: int | None = None  # the first N samples (class-balanced) define the estimand; None: all
    metric: str = "top1"
    nonfinite_score: str = "wrong"  # how top1, topK and agreement score outputs that hold NaN or inf
    output: str | None = None
    floor: float | None = None
    preprocess: str | None = None
    classes: tuple[str, ...] | None = None  # the model's class names in output order (else its metadata's)
    cache_bytes: int = 2 << 30

    def __post_init__(self) -> None:
        if (self.search is None) == (self.probabilities is None):
            raise OnnxflipError("an experiment is either a midpoint search or a grid of probabilities")
        if self.trials_per_point < 1:
            raise OnnxflipError("trials per point must be at least 1")

    def to_json(self) -> dict:
        return {
            "mode": "midpoint" if self.search is not None else "grid",
            "search": self.search.to_json() if self.search is not None else None,
            "probabilities": list(self.probabilities) if self.probabilities is not None else None,
            "trials_per_point": self.trials_per_point if self.probabilities is not None else None,
            "samples": self.samples, "metric": self.metric, "nonfinite_score": self.nonfinite_score,
            "output": self.output, "floor": self.floor,
            "preprocess": self.preprocess, "classes": list(self.classes) if self.classes else None,
        }


def resolve_format(model, requested: str | None) -> str:
    """The format to evaluate in: the one asked for, else the one an injected model records, else the model's
    own (int8 for a quantised model, else the float type it computes in).  An injected model refuses another
    (:func:`settings_for_model`)."""
    return requested or injected_format(model) or model_format(model)


def resolve_compute(model, fmt: str, requested: str | None) -> str:
    """How to compute ``fmt``: as asked for, else as an injected model records (another one is refused with the
    other options it fixes, :func:`~onnxflip.campaign.trials.injected_settings`) or as ``convert`` wrote the
    model, else native (:data:`~onnxflip.graph.formats.COMPUTES`)."""
    record = InjectionRecord.read(model)
    if record is not None:
        return requested or record.config.compute or "native"
    written = written_compute(model, fmt)
    if written is not None and requested is not None and requested != written:
        raise OnnxflipError(f"the model is converted to {fmt} with --compute {written}, not {requested}; leave "
                            "--compute out, or give the original model")
    return written or requested or "native"


def settings_for_model(model: ir.Model, settings: TrialSettings, *, fmt: str | None,
                       given: frozenset[str], compute: str | None = None) -> TrialSettings:
    """The trial settings of a campaign on ``model``, in the format :func:`resolve_format` gives, computed as
    :func:`resolve_compute` says: in the batch size its inputs fix (unless ``--batch-size`` is in ``given``, the
    options the user gave, spelled as on the command line), and for an injected model with what it holds (an
    option in ``given`` that it fixes otherwise is refused: :func:`~onnxflip.campaign.trials.injected_settings`)."""
    fixed = batch_dimension(model)
    if fixed is not None and "--batch-size" not in given:
        settings = dataclasses.replace(settings, batch_size=fixed)  # exported with a fixed batch: batches of it
    fmt = resolve_format(model, fmt)
    settings = dataclasses.replace(settings, format=fmt, compute=resolve_compute(model, fmt, compute))
    return injected_settings(model, settings, given=given)


class _Replay:
    """A runner that returns the trials an earlier run recorded and runs only the others."""

    def __init__(self, runner: TrialRunner, recorded: list[TrialOutcome]) -> None:
        self.runner = runner
        self.samples, self.floor = runner.samples, runner.floor
        self.recorded = {(o.p, o.trial, o.samples): o for o in recorded}

    def run(self, p: float, trials, samples: int) -> list[TrialOutcome]:
        missing = [t for t in trials if (p, t, samples) not in self.recorded]
        fresh = {o.trial: o for o in self.runner.run(p, missing, samples)} if missing else {}
        return [self.recorded.get((p, t, samples)) or fresh[t] for t in trials]


def _level(clean: float, floor: float) -> float:
    """The midpoint level: the score halfway from the clean score to the floor."""
    return floor + (clean - floor) / 2


def _point_means(outcomes: list[TrialOutcome]) -> list[tuple[float, float]]:
    """(p, mean score) of each faulty point, in the order of p: what a grid's table shows."""
    scores: dict[float, list[float]] = {}
    for o in outcomes:
        if o.p > 0:
            scores.setdefault(o.p, []).append(o.score)
    return [(p, sum(s) / len(s)) for p, s in sorted(scores.items())]


def _side(means: list[tuple[float, float]], level: float) -> str | None:
    """``above`` where every point's mean score is at or above the level, ``below`` where every one is under it,
    None where they straddle it."""
    below = [mean < level for _, mean in means]
    return "below" if all(below) else None if any(below) else "above"


def _rise(means: list[tuple[float, float]], level: float) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The first point below the level and the first after it at or above the level again: points that are not
    monotone about the level (None where no later point rises above it)."""
    first = next((i for i, (_, mean) in enumerate(means) if mean < level), None)
    if first is None:
        return None
    again = next((point for point in means[first + 1:] if point[1] >= level), None)
    return None if again is None else (means[first], again)


def _rise_note(rise, level: float, swept: str) -> str:
    (low_p, low_mean), (high_p, high_mean) = rise
    return (f"the score falls below the midpoint level {level:.4g} at {swept} = {low_p:.3g} (mean {low_mean:.4f}) "
            f"but is above it again at {swept} = {high_p:.3g} (mean {high_mean:.4f})")


def _midpoint(fit, status: str, clean: float, floor: float, outcomes: list[TrialOutcome], swept: str = "p",
              grid: bool = False) -> dict:
    level = _level(clean, floor)
    result = {"status": status, "level": level, "p": None, "low": None, "high": None, "log10": None}
    if status in ("above", "below"):
        faulty = [o.p for o in outcomes if o.p > 0]
        result["bound_p"] = max(faulty) if status == "above" else min(faulty)
        result["note"] = (f"the score stays above the midpoint level up to {swept} = {result['bound_p']:.3g}"
                          if status == "above" else
                          f"the score is below the midpoint level already at {swept} = {result['bound_p']:.3g}")
        return result
    if status == "no fall":
        result["note"] = f"the clean score {clean:.4g} is not above the floor {floor:.4g}: there is no midpoint"
        return result
    rise = _rise(_point_means(outcomes), level) if grid or status == "non-monotone" else None
    if status == "non-monotone":
        result["note"] = (_rise_note(rise, level, swept) if rise else "the points are not monotone about the "
                          "midpoint level") + ": the measured range holds no midpoint to claim"
        return result
    if rise is not None:
        result["note"] = _rise_note(rise, level, swept)
    if fit is None:
        result["status"] = "not reached"
        return result
    result.update(p=10**fit.m, log10=fit.m)
    interval = fit.interval
    if interval is not None:
        result.update(low=10 ** interval[0], high=10 ** interval[1], width_decades=interval[1] - interval[0])
    return result


def _curve(fit, clean: float, floor: float, outcomes: list[TrialOutcome]) -> dict:
    """The fitted score curve and its pointwise 95% band, for figures."""
    xs = [math.log10(o.p) for o in outcomes if o.p > 0]
    x = np.linspace(min(xs) - 0.25, max(xs) + 0.25, 121)
    s, low, high = fit.band(x)
    scale = clean - floor
    return {"log10_p": x.tolist(), "score": (floor + scale * s).tolist(), "low": (floor + scale * low).tolist(),
            "high": (floor + scale * high).tolist()}


def _grid(runner, experiment: Experiment, on_trials) -> tuple[object, str, dict[int, float]]:
    samples = runner.samples
    (clean,) = runner.run(0.0, [0], samples)
    on_trials([clean])
    no_fall = not has_fall(clean.score, runner.floor)  # the scores are measured, there is no midpoint to fit
    outcomes = []
    for p in sorted(set(experiment.probabilities)):
        if p == 0:
            continue
        batch = runner.run(p, list(range(experiment.trials_per_point)), samples)
        on_trials(batch)
        outcomes += batch
    floor = runner.floor
    if no_fall:
        return None, "no fall", {samples: clean.score}
    means, level = _point_means(outcomes), _level(clean.score, floor)
    if not means:
        return None, "not reached", {samples: clean.score}
    side = _side(means, level)  # beyond the range only where every point says so
    if side is not None:
        return None, side, {samples: clean.score}
    points: dict[float, list[float]] = {}
    for o in outcomes:
        points.setdefault(math.log10(o.p), []).append(min(max((o.score - floor) / (clean.score - floor), 0.0), 1.0))
    data = [PointData.from_scores(x, z) for x, z in sorted(points.items())]
    fit = fit_curve(data)
    fit = with_profile(data, fit) if fit is not None else None
    inside = fit is not None and min(points) <= fit.m <= max(points)
    if _rise(means, level) is not None and (means[-1][1] >= level or not inside):
        # Back above the level at the top of the range, or no curve crossing it inside: no midpoint to claim.
        return fit, "non-monotone", {samples: clean.score}
    return fit, "grid", {samples: clean.score}


def run(experiment: Experiment, *, model_path: str | pathlib.Path, data=None, out: pathlib.Path, resume: bool = False,
        overwrite: bool = False, on_batch: Callable[[], None] | None = None,
        on_step: Callable[[dict], None] | None = None, executor: Executor | None = None,
        model: ir.Model | None = None) -> dict:
    """Run the experiment, writing results as trials finish; returns the final results.

    ``executor`` runs the trials (:mod:`~onnxflip.campaign.executors`; default: in this process); the results
    are the same whichever runs them, so a campaign one executor began another may resume.  ``model``: the
    model at ``model_path`` loaded already (by a caller that read it to choose the settings), else it is loaded
    here.
    """
    model_path = pathlib.Path(model_path)
    local, data_path, metric = _local_runner(experiment, model if model is not None else load_model(model_path),
                                             data, on_batch)
    with removed_if_left_empty(out), (executor or LocalExecutor()).bind(local) as runner:
        return _run(experiment, runner, metric, model_path=model_path, data_path=data_path, out=out, resume=resume,
                    overwrite=overwrite, on_step=on_step, preprocess=local.source.preprocess)


def _local_runner(experiment: Experiment, model: ir.Model, data, on_batch) -> tuple[LocalRunner, object, Metric]:
    """The model injected, the data source opened and checked, the metric: the runner of the experiment's trials."""
    metric = metric_from_spec(experiment.metric, nonfinite_score=experiment.nonfinite_score)
    source, data_path = scored_source(model, data, metric=metric, output=experiment.output,
                                      preprocess=experiment.preprocess, classes=experiment.classes,
                                      samples=experiment.samples, cache_bytes=experiment.cache_bytes)
    runner = LocalRunner(model, source, metric, experiment.trials, output=experiment.output, floor=experiment.floor,
                         on_batch=on_batch)
    return runner, data_path, metric


def scored_source(model: ir.Model, data, *, metric: Metric, output: str | None = None, preprocess: str | None = None,
                  classes: Sequence[str] | None = None, samples: int | None = None,
                  cache_bytes: int = 0) -> tuple[DataSource, pathlib.Path]:
    """The data a metric scores the model on: opened for the model, its class folders matched to the model's
    classes, its labels checked against the scored output, the first ``samples`` samples, cached in memory up
    to ``cache_bytes``; and where it was read from."""
    data_path = resolve_data(data)
    parsed = Preprocess.parse(preprocess) if preprocess else None
    source = open_source(data_path, model=model, preprocess=parsed, split="test")
    outputs = list(model_outputs(model))
    chosen = next((o for o in outputs if o.name == output), outputs[0]) if outputs else None
    names = classes or model_class_names(model)
    if classes and chosen is not None and chosen.shape and isinstance(chosen.shape[-1], int) and (
            chosen.shape[-1] != len(classes)):
        raise OnnxflipError(f"--classes names {len(classes)} classes but the model's output "
                            f"{chosen.name!r} has {chosen.shape[-1]}")
    source = match_classes(source, names, where=str(data_path))
    if metric.needs_labels:
        if not source.has_labels:
            raise OnnxflipError(f"metric {metric.name} needs labels, and {data_path} has none; "
                                "use a label-free metric (agreement, rel-error, nonfinite)")
        if chosen is not None:
            check_labels(source, chosen, where=str(data_path))
    if samples is not None:
        if samples > len(source):
            raise OnnxflipError(f"asked for {samples} samples but {data_path} has only {len(source)}")
        source = source.subset(samples)
    return source.cached(cache_bytes), data_path


# How much a campaign measures: a resumed campaign may ask for more (its recorded trials are kept, each being the
# same whatever else is measured: a trial is fixed by its probability, index, samples and the seed).
_EXTENT = frozenset({"trials_per_point", "probabilities"})
_SEARCH_EXTENT = frozenset({"precision", "budget"})


def _differences(previous: dict, header: dict) -> list[str]:
    """What a recorded campaign and this one set differently, beyond how much they measure: ``the model``, or
    ``key: recorded -> now``."""
    differ = {"model": "the model"} if previous.get("model_sha256") != header["model_sha256"] else {}
    pairs = [(key, previous.get(key), header[key]) for key in ("metric", "samples")]
    for group in ("settings", "experiment"):
        before, now = previous.get(group) or {}, header[group]
        for key in sorted(set(before) | set(now)):
            was, asked = before.get(key), now.get(key)
            if group == "experiment" and key in _EXTENT:
                continue
            if group == "experiment" and key == "search" and was and asked:
                was, asked = ({k: v for k, v in d.items() if k not in _SEARCH_EXTENT} for d in (was, asked))
            pairs.append((key, was, asked))
    for key, was, now in pairs:
        if was != now and key not in differ:  # a key named twice (samples: used, asked for) is shown once
            differ[key] = f"{key}: {was} -> {now}"
    return list(differ.values())


def _check_grid_covers(experiment: Experiment, recorded: list[TrialOutcome]) -> None:
    """A grid resumed with fewer points or trials than it recorded is refused: its results would hold trials its
    settings leave out (resume extends, it never shrinks)."""
    if experiment.probabilities is None:
        return
    points = sorted({o.p for o in recorded if o.p > 0} - set(experiment.probabilities))
    trials = max((o.trial + 1 for o in recorded if o.p > 0), default=0)
    if points or trials > experiment.trials_per_point:
        held = f"points {', '.join(f'{p:g}' for p in points)}" if points else f"{trials} trials per point"
        raise OnnxflipError(f"the results folder holds {held} that these settings leave out: resume with at least "
                            "the recorded points and trials, or use --overwrite to start again")


def _run(experiment: Experiment, runner: TrialRunner, metric: Metric, *, model_path: pathlib.Path, data_path,
         out: pathlib.Path, resume: bool, overwrite: bool, on_step: Callable[[dict], None] | None,
         preprocess: Preprocess | None = None) -> dict:
    search = experiment.search
    if search is not None and search.budget.seconds is not None:
        # Refuse a time budget that cannot pay for the bracket before anything is written.
        (probe,) = runner.run(0.0, [0], min(runner.samples, search.pilot_samples))
        if search.budget.seconds < 5 * probe.seconds:
            raise OnnxflipError(f"a budget of {search.budget.seconds:g} s cannot even bracket the midpoint "
                                f"(about {5 * probe.seconds:.1f} s: five passes over {probe.samples} samples)")
    previous = prepare_output(out, resume=resume, overwrite=overwrite,
                              inputs=[model_path, *([data_path] if data_path is not None else [])])
    header = {
        "model": str(model_path),
        "model_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        "data": str(data_path),
        "preprocess": preprocess.as_dict() if preprocess is not None else None,  # as applied: asked for, or stored
        "settings": experiment.trials.to_json(),
        "experiment": experiment.to_json(),
        "metric": metric.name,
        "nonfinite_score": getattr(metric, "nonfinite_score", None),  # the rule the metric applied (None: it has none)
        "output": runner.output,
        "exposure": runner.exposure,
        "floor": runner.floor,
        "samples": runner.samples,
        "versions": versions(),
        "seed_scheme": SEED_SCHEME,
        "trial_seeds_first": [mix_seed(experiment.trials.seed, t) for t in range(3)],
    }
    recorded: list[TrialOutcome] = []
    spent_before = 0.0
    if previous is not None:
        differ = _differences(previous, header)
        if differ:
            raise OnnxflipError(f"the results folder was made with other settings ({', '.join(differ)}); use "
                                "--overwrite to start again")
        recorded = outcomes_from(previous)
        _check_grid_covers(experiment, recorded)
        spent_before = float(previous.get("wall_seconds", 0.0))
        logger.info("resuming with %d recorded trials", len(recorded))
    began = time.perf_counter()
    trials: list[TrialOutcome] = list(recorded)
    seen = {(o.p, o.trial, o.samples) for o in trials}
    last_write = [0.0]

    def clock() -> float:
        return spent_before + time.perf_counter() - began

    def snapshot(extra: dict | None = None) -> dict:
        ordered = sorted(trials, key=lambda o: (o.p, o.samples, o.trial))
        data = {**header, "providers": list(runner.providers), "wall_seconds": clock(),
                "evaluations": len(trials), "midpoint": PENDING_MIDPOINT, **(extra or {}),
                "rows": rows_of(ordered, experiment.trials.rates),
                "trials": [o.to_json() for o in ordered]}
        write_results(out, data)
        return data

    def on_trials(batch: list[TrialOutcome]) -> None:
        for o in batch:
            if (o.p, o.trial, o.samples) not in seen:
                seen.add((o.p, o.trial, o.samples))
                trials.append(o)
        if time.perf_counter() - last_write[0] > 2.0:
            snapshot()
            last_write[0] = time.perf_counter()

    active = _Replay(runner, recorded) if recorded else runner
    if experiment.search is not None:
        result = search_midpoint(active, experiment.search, clock=clock, on_trials=on_trials, on_step=on_step)
        fit, status, clean_scores, log, design_samples = result.fit, result.status, result.clean, result.log, \
            result.samples
    else:
        fit, status, clean_scores = _grid(active, experiment, on_trials)
        log, design_samples = [], runner.samples
    clean = clean_scores[design_samples]
    swept = "the stuck-at rate" if experiment.trials.sweep == "stuck-at" else "p"
    midpoint = _midpoint(fit, status, clean, runner.floor, trials, swept, grid=experiment.search is None)
    final = snapshot({
        "clean_score": clean, "clean_scores": {str(n): s for n, s in clean_scores.items()},
        "clean_accuracy": clean if metric.name == "top1" else None,
        "midpoint": midpoint,
        "stop_reason": {"precision": "the interval reached the precision", "budget": "the budget was spent",
                        "above": "the midpoint lies above the range", "below": "the midpoint lies below the range",
                        "grid": "the grid was measured", "no fall": "the clean score is not above the floor",
                        "not reached": "no curve could be fitted (fewer than two probabilities above 0)",
                        "non-monotone": "the points fall below the midpoint level and rise above it again"}[status],
        "fit": fit.to_json() if fit is not None else None,
        "curve": _curve(fit, clean, runner.floor, trials) if fit is not None else None,
        "design": {"samples_per_trial": design_samples, "samples": runner.samples,
                   "estimand": f"the midpoint of the mean score over all {runner.samples} samples, over infinitely "
                               "many trials; a trial that scores only the first n of them counts them as a random "
                               "sample of the whole (the interval's image term)",
                   "log": log},
    })
    from onnxflip.report.plots import plot_results

    plot_results([final], out / "accuracy.png")
    return final

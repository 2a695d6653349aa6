"""Vulnerability maps: the expected loss of score one flip of one bit causes, per (site, bit).

**Definition.**  For a site s (a stored tensor, named as ``inspect`` names
it) and a bit position b of its element type (0 = least significant)::

    v(s, b) = E[ score_clean(x) - score_flipped(x) ] / (clean - floor)

the expectation over an element e of the site drawn uniformly at random
and over the samples x of the evaluation set (the first n samples), where
``score_flipped(x)`` is the metric's score of sample x when bit b of e, and
nothing else, is flipped; ``clean`` is the mean clean score of the n samples
and ``floor`` the metric's score at chance.  v = 1: one such flip ruins the
inference it reaches; v = 0: it changes nothing.

**One scale for activations and parameters.**  An activation is stored per
sample: a flip in it reaches one inference, and its loss is that sample's.
A parameter is stored once and read by every inference: its loss is the mean
over the n samples.  Either way v is the expected loss of one inference per
flip in the memory it reads, so at a small flip probability p an inference
loses ``p * sum over (s, b) of elements(s) * v(s, b)`` (as a share of clean
- floor), with ``elements`` per sample for activations: a site's **damage**
is ``elements(s) * sum_b v(s, b)``, the loss per inference per unit of p.

**Estimation.**  A parameter trial draws an element, flips bit b in the
stored tensor, and scores all n samples with it (its own session; the
parameters stay constants).  Activation flips share runs: every sample of a
run gets one flip at its own (site, bit, element) through the probes
(:mod:`onnxflip.graph.probes`), which cannot interact, as each reaches only
its own sample; a clean run of the batch gives the values flipped.  A cell's
loss d lies in [-1, 1]; its 95% interval is Newcombe's hybrid score interval
for the difference of the means of d+ = max(d, 0) and d- = max(-d, 0), each
from Wilson's interval (exact in coverage for 0/1 losses, conservative for
losses between), so a cell whose flips never changed a score has an
interval from 0 up to about 3.8 / (trials + 3.8) that includes its true value.
Trials go where the intervals are widest: every cell starts with a few, and
each round gives more to the cells whose intervals are wider than ``width``,
until all are narrower or the time budget is spent.

The interval covers v of these n samples (the flips are the random part);
the samples are the first n of the data, as in a campaign's trials.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnxruntime as ort

from onnxflip.campaign.trials import mix_seed
from onnxflip.data.base import DataSource
from onnxflip.errors import OnnxflipError
from onnxflip.graph.inputs import batch_dimension
from onnxflip.graph.probes import Probes, ProbeSite, insert_probes
from onnxflip.graph.sites import DEFAULT_TARGETS, PER_SAMPLE_TARGETS, Selection
from onnxflip.metrics import Metric, targets_of
from onnxflip.modelio import write_atomically
from onnxflip.protection import Protection, choose_plan
from onnxflip.runtime.flip import as_ortvalue
from onnxflip.runtime.session import (
    external_data_folder,
    make_session,
    read_external_data_from,
    run_session,
    session_options,
)

__all__ = ["Cell", "SensitivityMap", "SensitivitySettings", "flip_bit", "interval", "measure", "run", "wilson"]

logger = logging.getLogger(__name__)

_Z = 1.959963984540054  # two-sided 95%
_FIRST_PARAMETER_TRIALS = 2
_CACHE_BYTES = 1 << 30  # clean activation values kept between runs up to this size; recomputed beyond


def wilson(mean: float, n: int, z: float = _Z) -> tuple[float, float]:
    """Wilson's score interval for the mean of n values in [0, 1] (for 0/1 values: for a proportion)."""
    if n == 0:
        return 0.0, 1.0
    mean = min(max(mean, 0.0), 1.0)
    denominator = 1 + z * z / n
    centre = (mean + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def interval(positive: float, negative: float, n: int) -> tuple[float, float]:
    """95% interval for E[d] = E[d+] - E[d-], d in [-1, 1], from the sums of d+ and d- over n values:
    Newcombe's hybrid score interval from the two Wilson intervals."""
    if n == 0:
        return -1.0, 1.0
    p, q = positive / n, negative / n
    (pl, pu), (ql, qu) = wilson(p, n), wilson(q, n)
    d = p - q
    return d - math.hypot(p - pl, qu - q), d + math.hypot(pu - p, q - ql)


@dataclass(frozen=True)
class SensitivitySettings:
    """Everything that decides the numbers of a map (recorded with it)."""

    format: str = "float32"
    compute: str = "native"  # how the format computes (onnxflip.graph.formats.COMPUTES)
    targets: tuple[str, ...] = DEFAULT_TARGETS
    bits: str = "all"
    seed: int = 0
    batch_size: int = 500
    width: float = 0.2  # stop giving a cell trials once its interval is this narrow (on the v scale)
    budget: float = 240.0  # seconds of measuring, at most
    selection: Selection = field(default_factory=Selection)
    fold_batchnorm: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.width <= 2:
            raise OnnxflipError(f"width = {self.width} must be in (0, 2]")
        if self.budget <= 0:
            raise OnnxflipError("the budget must be positive")
        if self.batch_size < 1:
            raise OnnxflipError("the batch size must be at least 1")

    def to_json(self) -> dict:
        data = asdict(self)
        data["targets"] = list(self.targets)
        data["selection"]["activation_ops"] = list(self.selection.activation_ops)
        return data


@dataclass
class Cell:
    """One (site, bit): the losses measured so far, as the sums the interval needs."""

    site: ProbeSite
    bit: int
    elements: int  # of the site (per sample for activations and the cache), as the runs hold it
    trials: int = 0
    positive: float = 0.0
    negative: float = 0.0
    scale: float = 1.0  # clean - floor

    def add(self, losses: np.ndarray) -> None:
        losses = np.asarray(losses, dtype=np.float64)
        self.trials += losses.size
        self.positive += float(np.clip(losses, 0, None).sum())
        self.negative += float(np.clip(-losses, 0, None).sum())

    @property
    def vulnerability(self) -> float:
        return (self.positive - self.negative) / self.trials / self.scale if self.trials else math.nan

    @property
    def bounds(self) -> tuple[float, float]:
        low, high = interval(self.positive, self.negative, self.trials)
        return low / self.scale, high / self.scale

    @property
    def width(self) -> float:
        low, high = self.bounds
        return high - low

    def row(self) -> dict:
        """The cell as sensitivity.csv/.json hold it (vulnerability, low and high None without a trial)."""
        low, high = self.bounds if self.trials else (None, None)
        return {"site": self.site.name, "target": self.site.target, "dtype": self.site.etype.name, "bit": self.bit,
                "element_bits": self.site.etype.width, "elements": self.elements, "trials": self.trials,
                "vulnerability": self.vulnerability if self.trials else None, "low": low, "high": high}


@dataclass
class SensitivityMap:
    """The measured map: one row per (site, bit), the sites not measured and why, and what it cost."""

    rows: list[dict]
    unmeasured: list[dict]
    clean: float
    floor: float
    samples: int
    seconds: float
    runs: dict[str, int]
    settings: SensitivitySettings

    def damage(self) -> dict[str, float]:
        """Per site: elements x the sum of its bits' vulnerabilities (the loss per inference per unit of p)."""
        totals: dict[str, float] = {}
        for row in self.rows:
            measured = row["elements"] * max(row["vulnerability"], 0.0) if row["trials"] else 0.0
            totals[row["site"]] = totals.get(row["site"], 0.0) + measured
        return totals

    def to_json(self) -> dict:
        return {"settings": self.settings.to_json(), "samples": self.samples, "clean_score": self.clean,
                "floor": self.floor, "seconds": self.seconds, "runs": self.runs, "rows": self.rows,
                "damage": self.damage(), "not_measured": self.unmeasured}


class _Scorer:
    """The probed model's sessions on the evaluation samples, with each batch's clean outputs and scores."""

    def __init__(self, probes: Probes, source: DataSource, metric: Metric, output: str, batch_size: int,
                 threads: int | None) -> None:
        self.probes = probes
        self.metric = metric
        self.output = output
        self.threads = threads
        self.session = make_session(probes.probed, threads=threads)
        self.batches = list(source.batches(batch_size))
        self.activations = [s for s in probes.sites if s.target in PER_SAMPLE_TARGETS and s.unprobed is None]
        self.parameters = {s.stored_name: s.value for s in probes.sites if s.stored_name is not None}
        self.external_folder = external_data_folder(probes.probed)  # where the template's unbound tensors lie
        self.empty = {}
        for site in self.activations:
            rank = len(self.session.get_outputs()[self._output_index(site.value_output)].shape)
            indices, updates = site.inputs
            self.empty[indices] = np.zeros((0, rank), np.int64)
            self.empty[updates] = np.zeros(0, site.etype.dtype)
        self.shared: set[str] = set()  # activation sites without a batch axis, measured as parameters are
        self.clean_outputs: list[np.ndarray] = []
        self.clean_scores: list[np.ndarray] = []
        self._values: list[dict[str, np.ndarray]] | None = []
        stored = 0
        for batch in self.batches:
            out, values = self._clean_run(batch)
            self.clean_outputs.append(out)
            self.clean_scores.append(np.asarray(metric.scores(out, out, targets_of(metric, batch)), dtype=np.float64))
            stored += sum(v.nbytes for v in values.values())
            if self._values is not None:
                self._values.append(values)
            if stored > _CACHE_BYTES:
                self._values = None

    def _output_index(self, name: str) -> int:
        return [o.name for o in self.session.get_outputs()].index(name)

    def _run(self, session: ort.InferenceSession, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        values = {name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a)) if a.dtype.kind in "biuf"
                  else as_ortvalue(np.ascontiguousarray(a)) for name, a in feeds.items()}  # bfloat16: as raw bits
        return [v.numpy() for v in run_session(session.run_with_ort_values, names, values)]

    def _clean_run(self, batch) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        names = [self.output, *(s.value_output for s in self.activations)]
        out, *values = self._run(self.session, names, {**batch.feeds, **self.empty})
        # a bfloat16 site shows its values as float32 (exact), which NumPy holds; back to the stored type here
        return out, {s.name: v.astype(s.etype.dtype, copy=False) for s, v in zip(self.activations, values)}

    def values(self, b: int) -> dict[str, np.ndarray]:
        """The clean stored values of the activation sites in batch b."""
        if self._values is not None:
            return self._values[b]
        return self._clean_run(self.batches[b])[1]

    @property
    def clean(self) -> float:
        return float(np.concatenate(self.clean_scores).mean())

    def losses(self, b: int, outputs: np.ndarray) -> np.ndarray:
        """Per sample of batch b: clean score - score of these outputs."""
        batch = self.batches[b]
        scores = np.asarray(self.metric.scores(outputs, self.clean_outputs[b], targets_of(self.metric, batch)),
                            dtype=np.float64)
        return self.clean_scores[b] - scores

    def probed_run(self, b: int, writes: dict[ProbeSite, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Batch b's outputs with the given elements written: per site, (indices (m, rank), values (m,))."""
        feeds = {**self.batches[b].feeds, **self.empty}
        for site, (indices, values) in writes.items():
            feeds[site.inputs[0]] = indices
            feeds[site.inputs[1]] = values
        return self._run(self.session, [self.output], feeds)[0]

    def parameter_session(self, site: ProbeSite, flipped: np.ndarray) -> ort.InferenceSession:
        """A session of the template with every parameter bound, ``site``'s as ``flipped``."""
        arrays = {**self.parameters, site.stored_name: flipped}
        options = read_external_data_from(session_options(threads=self.threads), self.external_folder)
        self._bound = [as_ortvalue(np.ascontiguousarray(a)) for a in arrays.values()]  # alive with the session
        options.add_external_initializers(list(arrays), self._bound)
        return make_session(self.probes.template, options=options, threads=self.threads)

    def parameter_loss(self, site: ProbeSite, flipped: np.ndarray) -> float:
        """Mean loss over every sample with ``site`` stored as ``flipped``."""
        session = self.parameter_session(site, flipped)
        losses = [self.losses(b, self._run(session, [self.output], batch.feeds)[0])
                  for b, batch in enumerate(self.batches)]
        return float(np.concatenate(losses).mean())


def flip_bit(values: np.ndarray, bit: int) -> np.ndarray:
    """The values with ``bit`` flipped (any element type FlipBits takes, viewed as its unsigned integers)."""
    raw = np.ascontiguousarray(values).view(np.dtype(f"u{values.dtype.itemsize}"))
    return (raw ^ np.array(1 << bit, dtype=raw.dtype)).view(values.dtype)


def measure(model, source: DataSource, metric: Metric, settings: SensitivitySettings, *, output: str | None = None,
            floor: float | None = None, threads: int | None = None,
            on_round: Callable[[dict], None] | None = None) -> SensitivityMap:
    """The vulnerability map of ``model`` on the samples of ``source`` (see the module docstring)."""
    began = time.perf_counter()
    if hasattr(metric, "generate"):
        raise OnnxflipError(f"a map scores single runs; {metric.name} generates over many: use perplexity or agreement")
    probes = insert_probes(model, format=settings.format, compute=settings.compute, targets=settings.targets,
                           bits=settings.bits,
                           selection=settings.selection, fold_batchnorm=settings.fold_batchnorm)
    fixed = batch_dimension(probes.probed)
    batch_size = settings.batch_size
    if fixed is not None:
        if len(source) % fixed:
            raise OnnxflipError(f"the model takes batches of exactly {fixed}: give --samples a multiple of {fixed}")
        batch_size = fixed
    outputs = [v for v in probes.probed.graph.outputs if not v.name.startswith("onnxflip_")]
    names = [v.name for v in outputs]
    if output is not None and output not in names:
        raise OnnxflipError(f"the model has no output {output!r}; its outputs are {', '.join(names)}")
    chosen = next(v for v in outputs if v.name == (output or names[0]))
    scorer = _Scorer(probes, source, metric, chosen.name, batch_size, threads)
    floor = float(metric.floor(list(chosen.shape) if chosen.shape is not None else None)) if floor is None else floor
    clean = scorer.clean
    if clean - floor <= 0:
        raise OnnxflipError(f"the clean model scores {clean:.4f}, not above the floor {floor:.4f}: there is no loss "
                            "to measure")
    cells, unmeasured = _cells(probes, scorer, clean - floor)
    rng = np.random.default_rng(mix_seed(settings.seed, 0))
    runs = {"activation_runs": 0, "parameter_trials": 0}
    deadline = began + settings.budget
    rounds = 0
    while True:
        wide = [c for c in cells if c.trials == 0 or c.width > settings.width]
        if not wide or time.perf_counter() >= deadline:
            break
        by_run = [c for c in wide if c.site.target in PER_SAMPLE_TARGETS and c.site.name not in scorer.shared]
        by_trial = sorted((c for c in wide if c.site.target not in PER_SAMPLE_TARGETS or c.site.name in scorer.shared),
                          key=lambda c: (c.trials > 0, -c.width))
        started = time.perf_counter()
        if rounds == 0:  # every cell its first trials, in a random order (the budget may end the round)
            chosen = [by_trial[i] for _ in range(_FIRST_PARAMETER_TRIALS) for i in rng.permutation(len(by_trial))]
        else:
            chosen = by_trial[: max(8, len(by_trial) // 4)]
        for cell in chosen:
            cell.add([_parameter_trial(scorer, cell, rng)])
            runs["parameter_trials"] += 1
            if time.perf_counter() >= deadline:
                break
        # Activation runs get the time the parameter trials took, in proportion to the cells each side still
        # measures (at least one run a round): each run measures as many flips as there are samples.
        share = (time.perf_counter() - started) * len(by_run) / max(len(by_trial), 1)
        started = time.perf_counter()
        while by_run and (time.perf_counter() - started < share or not by_trial or runs["activation_runs"] == 0):
            _activation_round(scorer, by_run, rng, first=rounds == 0 and runs["activation_runs"] == 0)
            runs["activation_runs"] += len(scorer.batches)
            by_run = [c for c in by_run if c.width > settings.width]
            if not by_trial or time.perf_counter() >= deadline:
                break
        rounds += 1
        if on_round is not None:
            on_round({"round": rounds, "seconds": time.perf_counter() - began, "wide": len(wide),
                      "cells": len(cells)})
    rows = [c.row() for c in cells]
    return SensitivityMap(rows, unmeasured, clean, floor, sum(len(b) for b in scorer.batches),
                          time.perf_counter() - began, runs, settings)


def _cells(probes: Probes, scorer: _Scorer, scale: float) -> tuple[list[Cell], list[dict]]:
    """The cells to measure; the sites that cannot be, with the reason.  An activation without a batch axis
    (the first axis, as long as the batch) is shared by the batch's samples: measured as parameters are."""
    unmeasured = []
    cells = []
    for site in probes.sites:
        if site.unprobed is not None:
            unmeasured.append({"site": site.name, "target": site.target, "reason": site.unprobed})
            continue
        if site.target in PER_SAMPLE_TARGETS:  # the size a run stores (a symbolic sequence length: this data's)
            values = scorer.values(0)[site.name]
            per_sample = values.ndim > 0 and values.shape[0] == len(scorer.batches[0])
            if not per_sample:
                scorer.shared.add(site.name)
            elements = int(np.prod(values.shape[1:] if per_sample else values.shape))
        else:
            elements = int(site.value.size)
        cells += [Cell(site, bit, elements, scale=scale) for bit in site.bits]
    if not cells:
        raise OnnxflipError("no site can be measured: " + "; ".join(f"{u['site']}: {u['reason']}" for u in unmeasured[:3]))
    for u in unmeasured:
        logger.warning("site %s is not measured: %s", u["site"], u["reason"])
    return cells, unmeasured


def _activation_round(scorer: _Scorer, cells: list[Cell], rng: np.random.Generator, *, first: bool) -> None:
    """One run of every batch, each sample flipped once at a cell drawn with weight its interval's width (the
    first round: evenly, so that each cell gets a few flips)."""
    weights = np.array([1.0 if first or c.trials == 0 else c.width for c in cells])
    for b, batch in enumerate(scorer.batches):
        count = len(batch)
        values = scorer.values(b)
        if first:
            chosen = np.resize(rng.permutation(len(cells)), count)
        else:
            chosen = rng.choice(len(cells), size=count, p=weights / weights.sum())
        writes: dict[ProbeSite, tuple[list, list]] = {}
        for sample, c in enumerate(chosen):
            cell = cells[c]
            clean = values[cell.site.name][sample]
            element = int(rng.integers(clean.size))
            index = (sample, *np.unravel_index(element, clean.shape))
            indices, updates = writes.setdefault(cell.site, ([], []))
            indices.append(index)
            updates.append(flip_bit(clean.reshape(-1)[element : element + 1], cell.bit)[0])
        fed = {site: (np.array(i, dtype=np.int64), np.array(u, dtype=site.etype.dtype)) for site, (i, u) in writes.items()}
        losses = scorer.losses(b, scorer.probed_run(b, fed))
        for c in np.unique(chosen):
            cells[c].add(losses[chosen == c])


def _parameter_trial(scorer: _Scorer, cell: Cell, rng: np.random.Generator) -> float:
    """One flip of the cell's bit in one element of its site, scored over every sample."""
    site = cell.site
    if site.target in PER_SAMPLE_TARGETS:  # shared by the batch: the same element of every batch
        shape = scorer.values(0)[site.name].shape
        element = np.unravel_index(int(rng.integers(math.prod(shape))), shape)
        losses = []
        for b in range(len(scorer.batches)):
            clean = scorer.values(b)[site.name]
            fed = {site: (np.array([element], np.int64), flip_bit(clean[element].reshape(1), cell.bit))}
            losses.append(scorer.losses(b, scorer.probed_run(b, fed)))
        return float(np.concatenate(losses).mean())
    flipped = np.array(site.value, copy=True)
    element = int(rng.integers(flipped.size))
    flipped.reshape(-1)[element] = flip_bit(flipped.reshape(-1)[element : element + 1], cell.bit)[0]
    return scorer.parameter_loss(site, flipped)


def run(model_path: pathlib.Path, *, data, out: pathlib.Path, settings: SensitivitySettings, metric: str = "top1",
        nonfinite_score: str = "wrong", samples: int = 100, output: str | None = None, floor: float | None = None, preprocess: str | None = None,
        classes: Sequence[str] | None = None, overwrite: bool = False, plan_budgets: Sequence[float] = (),
        measure_plans: bool = False, on_round: Callable[[dict], None] | None = None,
        on_plan: Callable[[dict], None] | None = None) -> dict:
    """Measure the map of a model file and write it to ``out`` (:mod:`onnxflip.report.sensitivity`); with plan
    budgets, write a plan per budget (``plan.json``, or ``plan-<budget>.json`` for several); with
    ``measure_plans``, find the midpoint of the unprotected model and of each plan (``evaluate --protect``,
    same format, targets, bits, metric and samples) and write ``plans.json`` and ``plans.png``.  ``nonfinite_score``:
    how top1, topK and agreement score outputs that hold NaN or inf (:func:`~onnxflip.metrics.metric_from_spec`)."""
    from onnxflip.campaign.experiment import scored_source
    from onnxflip.campaign.results import prepare_output, removed_if_left_empty
    from onnxflip.metrics import metric_from_spec
    from onnxflip.modelio import load_model
    from onnxflip.report.sensitivity import plot_plans, write_map

    model = load_model(model_path)
    scorer = metric_from_spec(metric, nonfinite_score=nonfinite_score)
    source, data_path = scored_source(model, data, metric=scorer, output=output, preprocess=preprocess,
                                      classes=classes, samples=samples, cache_bytes=2 << 30)
    prepare_output(out, resume=False, overwrite=overwrite, inputs=(model_path, data_path),
                   markers=("sensitivity.json",), resumable=False)
    with removed_if_left_empty(out):
        found = measure(model, source, scorer, settings, output=output, floor=floor, on_round=on_round)
        result = {"model": str(model_path), "data": str(data_path), "metric": scorer.name,
                  "nonfinite_score": nonfinite_score, **found.to_json()}
        write_map(result, out)
        plans = []
        for budget in plan_budgets:
            plan = {"model": str(model_path), "format": settings.format, **choose_plan(found.rows, budget)}
            name = "plan.json" if len(plan_budgets) == 1 else f"plan-{budget:g}.json"
            write_atomically(out / name, (json.dumps(plan, indent=1) + "\n").encode())
            plans.append((name, plan))
        result["plans"] = [name for name, _ in plans]
        if measure_plans and plans:
            measured = _measure_plans(model_path, data, out, settings, plans, metric=metric,
                                      nonfinite_score=nonfinite_score, samples=samples,
                                      output=output, floor=floor, preprocess=preprocess, classes=classes,
                                      on_plan=on_plan)
            write_atomically(out / "plans.json", (json.dumps(measured, indent=1) + "\n").encode())
            plot_plans(measured, out / "plans.png")
            result["measured_plans"] = measured
    return result


def _measure_plans(model_path, data, out, settings, plans, *, metric, nonfinite_score, samples, output, floor,
                   preprocess, classes, on_plan) -> list[dict]:
    """The midpoint of the unprotected model and of each plan, each an ``evaluate --midpoint`` campaign in
    ``out/plans/<name>``."""
    from onnxflip.campaign.design import Budget, SearchSettings
    from onnxflip.campaign.experiment import Experiment
    from onnxflip.campaign.experiment import run as run_experiment
    from onnxflip.campaign.trials import TrialSettings
    from onnxflip.faults import FaultModel

    measured = []
    plan_search_budget = Budget(seconds=30 * 60)  # evaluate's default: a search stops at 0.2 decades or after 30 min
    for name, plan in [("unprotected", None), *plans]:
        protection = Protection() if plan is None else Protection.of_pairs(
            [(p["site"], p["bit"]) for p in plan["protect"]], format=plan["format"])
        trials = TrialSettings(format=settings.format, compute=settings.compute, targets=settings.targets, fault=FaultModel(bits=settings.bits),
                               seed=settings.seed,
                               batch_size=settings.batch_size, selection=settings.selection,
                               fold_batchnorm=settings.fold_batchnorm, protection=protection)
        experiment = Experiment(trials=trials, search=SearchSettings(budget=plan_search_budget), probabilities=None,
                                samples=None,
                                metric=metric, nonfinite_score=nonfinite_score, output=output, floor=floor,
                                preprocess=preprocess, classes=classes)
        folder = out / "plans" / pathlib.Path(name).stem
        result = run_experiment(experiment, model_path=model_path, data=data, out=folder, overwrite=True)
        mid = result.get("midpoint") or {}
        row = {"plan": name, "budget": 0.0 if plan is None else plan["budget"],
               "protected_bits": 0 if plan is None else plan["protected_bits"],
               "midpoint": mid.get("p"), "low": mid.get("low"), "high": mid.get("high"), "results": str(folder)}
        measured.append(row)
        if on_plan is not None:
            on_plan(row)
    return measured

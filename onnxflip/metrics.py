"""Metrics: (faulty outputs, clean outputs, labels) of a batch -> one score per sample in [0, 1].

A metric's mean over the samples is the number a campaign tracks; its
``floor`` is the score of a ruined model, so the midpoint (halfway between
the clean score and the floor) means the same on every metric.

| spec | score of a sample | needs | floor |
| --- | --- | --- | --- |
| ``top1``, ``topK`` (``top5``) | 1 if the label is among the K largest outputs and every output is finite | labels | K / classes |
| ``agreement`` | 1 if every output is finite and the top-1 class equals the clean model's (for (batch, ..., classes) outputs, such as a language model's (batch, positions, vocabulary) logits: the share of positions that agree, a position whose logits hold NaN or inf agreeing with nothing) | clean | 1 / classes |
| ``rel-error`` | 1 if ``||faulty - clean|| / ||clean|| <= threshold`` (L2 over the sample, default 0.1) | clean | 0 |
| ``nonfinite`` | 1 if every output value is finite (the mean is 1 - the NaN/inf rate) | - | 0 |
| ``perplexity`` | ``(log V - nll) / (log V - nll_clean)`` in [0, 1] of a decoder's next-token likelihood (:mod:`onnxflip.language`) | clean, input_ids | 0 |
| ``greedy:N`` | the share of N greedily generated tokens equal to the clean model's (a decode loop over the cache) | clean, a cache | 1 / V |
| ``package.module:function`` or ``file.py:function`` | what the function returns | - | 0 |

Classification metrics read (batch, classes) outputs; ``classes`` is the
output's last axis, never assumed.  Ties go to the first index, as in
NumPy's and PyTorch's argmax.  A ruined output is right about nothing: with
``nonfinite_score="wrong"`` (the default) top1, topK and agreement score 0
for a sample whose logits hold NaN or inf (for agreement on (batch, ...,
classes) outputs: for each such position), so that outputs all NaN never
"agree" with a clean model that favours one class.  ``nonfinite_score=
"argmax"`` (``--nonfinite-score argmax``) keeps NumPy's argmax rule instead:
NaN counts as the largest value, so a logit vector holding NaN predicts the
class of its first NaN, and outputs all NaN agree wherever the clean model
predicts class 0.

The floor of ``agreement`` is chance: a model whose outputs no longer depend
on the input (constant or random) agrees with the clean model on about
1 / classes of the samples; outputs all NaN or inf score 0, below it.

A user metric is a callable ``function(faulty, clean, labels) -> scores``:
``faulty`` and ``clean`` are the batch's output arrays (batch, ...),
``labels`` the int64 labels (batch,) or None when the data has none; it
returns one score in [0, 1] per sample (shape (batch,)).  Optional
attributes on the function: ``needs_labels = True`` (refuse label-free
data), ``floor = 0.1`` (the score of a ruined model; default 0).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import pathlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from onnxflip.errors import OnnxflipError

__all__ = [
    "DEFAULT_REL_ERROR_THRESHOLD",
    "METRIC_NAMES",
    "NONFINITE_SCORES",
    "Agreement",
    "Metric",
    "Nonfinite",
    "RelError",
    "TopK",
    "UserMetric",
    "classes_of",
    "metric_from_spec",
    "nan_argmax",
    "relative_errors",
    "targets_of",
]

logger = logging.getLogger(__name__)

DEFAULT_REL_ERROR_THRESHOLD = 0.1
METRIC_NAMES = ("top1", "topK (top5, ...)", "agreement", "rel-error", "nonfinite", "perplexity", "greedy:N",
                "package.module:function")
# How top1, topK and agreement score a sample whose logits hold NaN or inf: as wrong, or by NumPy's argmax
# (NaN the largest value).
NONFINITE_SCORES = ("wrong", "argmax")
NONFINITE_METRICS = "top1, topK and agreement"  # the metrics a nonfinite score applies to


@runtime_checkable
class Metric(Protocol):
    """Scores a batch's outputs.  Optional attributes: ``reads_input`` (the name of a model input the metric
    scores against instead of the labels, see :func:`targets_of`) and ``generate`` (a method that drives the
    model through a decode loop and returns what ``scores`` reads, see :class:`onnxflip.language.Greedy`)."""

    name: str
    needs_labels: bool
    needs_clean: bool

    def scores(self, outputs: np.ndarray, clean: np.ndarray | None, labels: np.ndarray | None) -> np.ndarray:
        """One score per sample in [0, 1]."""
        ...

    def floor(self, output_shape: Sequence[int | str | None] | None) -> float:
        """The score of a ruined model, for an output of this shape."""
        ...


def classes_of(output_shape: Sequence[int | str | None] | None, *, metric: str) -> int:
    """The number of classes: the last axis of a (batch, ..., classes) output, which must be fixed."""
    if output_shape is None or len(output_shape) < 2 or not isinstance(output_shape[-1], int):
        shown = "unknown" if output_shape is None else "[" + ", ".join(str(d) for d in output_shape) + "]"
        raise OnnxflipError(
            f"{metric} needs a (batch, classes) output with a fixed number of classes, not shape {shown}: choose "
            "the output to score with --output NAME, give the floor with --floor (for a (batch, classes) output "
            "whose class count is not declared), or use a metric that needs no classes (rel-error, nonfinite)"
        )
    return int(output_shape[-1])


def _logits(outputs: np.ndarray, *, metric: str) -> np.ndarray:
    if outputs.ndim != 2:
        raise OnnxflipError(f"{metric} needs (batch, classes) outputs, not shape {outputs.shape}")
    return outputs


def nan_argmax(outputs: np.ndarray) -> np.ndarray:
    """Top-1 class per row; NaN counts as the largest value (the first NaN wins), as NumPy's argmax does."""
    return np.argmax(outputs, axis=-1)


def _check_nonfinite_score(rule: str) -> None:
    if rule not in NONFINITE_SCORES:
        raise OnnxflipError(f"a nonfinite score is {' or '.join(NONFINITE_SCORES)}, not {rule!r}")


def _finite(outputs: np.ndarray) -> np.ndarray:
    """Per row of the last axis (a sample's or a position's logits): whether every value is finite."""
    return np.isfinite(outputs).all(axis=-1)


def _check_labels(labels: np.ndarray | None, count: int, classes: int, *, metric: str) -> np.ndarray:
    if labels is None:
        raise OnnxflipError(f"{metric} needs labels, and the data has none; use agreement, rel-error or nonfinite")
    if labels.shape != (count,):
        raise OnnxflipError(f"{metric}: {labels.shape} labels for {count} samples")
    if count and (labels.min() < 0 or labels.max() >= classes):
        raise OnnxflipError(f"{metric}: labels outside 0..{classes - 1}, the model's classes")
    return labels


@dataclass(frozen=True)
class TopK:
    """Top-K accuracy: the label is among the K largest outputs (ties to the lower index); a sample whose outputs
    hold NaN or inf is wrong, or with ``nonfinite_score="argmax"`` ranked with NaN as the largest value."""

    k: int = 1
    nonfinite_score: str = "wrong"
    needs_labels: bool = True
    needs_clean: bool = False

    def __post_init__(self) -> None:
        if self.k < 1:
            raise OnnxflipError(f"top-K needs K >= 1, not {self.k}")
        _check_nonfinite_score(self.nonfinite_score)

    @property
    def name(self) -> str:
        return f"top{self.k}"

    def scores(self, outputs: np.ndarray, clean: np.ndarray | None, labels: np.ndarray | None) -> np.ndarray:
        logits = _logits(outputs, metric=self.name)
        count, classes = logits.shape
        labels = _check_labels(labels, count, classes, metric=self.name)
        right = self._ranked(logits, labels)
        if self.nonfinite_score == "wrong":
            right &= _finite(logits)
        return right.astype(np.float64)

    def _ranked(self, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Whether each label is among the K largest, NaN ranked largest (argmax's order)."""
        count, classes = logits.shape
        if self.k == 1:
            return nan_argmax(logits) == labels
        rows = np.arange(count)
        nan = np.isnan(logits)
        mine, mine_nan = logits[rows, labels][:, None], nan[rows, labels][:, None]
        with np.errstate(invalid="ignore"):
            above = (nan & ~mine_nan) | (~nan & ~mine_nan & (logits > mine))
            tied = (nan & mine_nan) | (~nan & ~mine_nan & (logits == mine))
        before = np.arange(classes)[None, :] < labels[:, None]
        rank = above.sum(axis=1) + (tied & before).sum(axis=1)
        return rank < self.k

    def floor(self, output_shape) -> float:
        classes = classes_of(output_shape, metric=self.name)
        if self.k > classes:
            raise OnnxflipError(f"{self.name} asks for more classes than the model's {classes}")
        return self.k / classes


@dataclass(frozen=True)
class Agreement:
    """Same top-1 class as the fault-free model on the same input: 1 - the silent-data-corruption rate.  Logits
    that hold NaN or inf agree with nothing, or with ``nonfinite_score="argmax"`` predict their first NaN."""

    nonfinite_score: str = "wrong"
    name: str = "agreement"
    needs_labels: bool = False
    needs_clean: bool = True

    def __post_init__(self) -> None:
        _check_nonfinite_score(self.nonfinite_score)

    def scores(self, outputs: np.ndarray, clean: np.ndarray | None, labels: np.ndarray | None) -> np.ndarray:
        if outputs.ndim < 2:
            raise OnnxflipError(f"{self.name} needs (batch, ..., classes) outputs, not shape {outputs.shape}; choose "
                                "the output to score with --output NAME")
        reference = _clean(clean, outputs, metric=self.name)
        same = nan_argmax(outputs) == nan_argmax(reference)  # (batch, ...): one class per position
        if self.nonfinite_score == "wrong":
            same &= _finite(outputs)
        return same.reshape(len(same), -1).mean(axis=1, dtype=np.float64)

    def floor(self, output_shape) -> float:
        return 1.0 / classes_of(output_shape, metric=self.name)


def _clean(clean: np.ndarray | None, outputs: np.ndarray, *, metric: str) -> np.ndarray:
    if clean is None:
        raise OnnxflipError(f"{metric} compares against the clean model's outputs, and none were given")
    if clean.shape != outputs.shape:
        raise OnnxflipError(f"{metric}: clean outputs {clean.shape} and faulty outputs {outputs.shape} differ")
    return clean


def relative_errors(outputs: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Per sample ``||outputs - clean||_2 / ||clean||_2`` over all its values (float64); inf where the
    outputs are not finite, and where the clean outputs are all zero but the faulty ones are not."""
    with np.errstate(invalid="ignore", over="ignore"):
        faulty = outputs.reshape(len(outputs), -1).astype(np.float64)
        reference = clean.reshape(len(clean), -1).astype(np.float64)
        diff = np.linalg.norm(faulty - reference, axis=1)
        norm = np.linalg.norm(reference, axis=1)
        error = np.where(norm > 0, diff / np.where(norm > 0, norm, 1.0), np.where(diff == 0, 0.0, np.inf))
    return np.where(np.isfinite(faulty).all(axis=1), error, np.inf)


@dataclass(frozen=True)
class RelError:
    """Pass when the relative L2 error against the clean outputs is at most ``threshold``."""

    threshold: float = DEFAULT_REL_ERROR_THRESHOLD
    name: str = "rel-error"
    needs_labels: bool = False
    needs_clean: bool = True

    def __post_init__(self) -> None:
        if not np.isfinite(self.threshold) or self.threshold < 0:
            raise OnnxflipError(f"rel-error threshold must be a finite number >= 0, not {self.threshold}")

    def scores(self, outputs: np.ndarray, clean: np.ndarray | None, labels: np.ndarray | None) -> np.ndarray:
        reference = _clean(clean, outputs, metric=self.name)
        return (relative_errors(outputs, reference) <= self.threshold).astype(np.float64)

    def floor(self, output_shape) -> float:
        return 0.0


@dataclass(frozen=True)
class Nonfinite:
    """1 for a sample whose outputs are all finite, 0 if any is NaN or infinite."""

    name: str = "nonfinite"
    needs_labels: bool = False
    needs_clean: bool = False

    def scores(self, outputs: np.ndarray, clean: np.ndarray | None, labels: np.ndarray | None) -> np.ndarray:
        return np.isfinite(outputs.reshape(len(outputs), -1)).all(axis=1).astype(np.float64)

    def floor(self, output_shape) -> float:
        return 0.0


@dataclass(frozen=True)
class UserMetric:
    """A callable ``function(faulty, clean, labels) -> scores``, its result checked batch by batch."""

    name: str
    function: Callable
    needs_labels: bool = False
    needs_clean: bool = True
    floor_value: float = 0.0

    def __reduce__(self):
        """Pickled as its spec and imported again where it is unpickled (an executor's worker), since a function
        loaded from a file belongs to a module that only the importing process has."""
        return (_user_metric, (self.name,))

    def scores(self, outputs: np.ndarray, clean: np.ndarray | None, labels: np.ndarray | None) -> np.ndarray:
        try:
            result = self.function(outputs, clean, labels)
        except OnnxflipError:
            raise
        except Exception as exc:  # noqa: BLE001 - a user function may fail any way; say which and how
            raise OnnxflipError(f"metric {self.name} failed: {type(exc).__name__}: {exc}") from None
        try:
            scores = np.asarray(result, dtype=np.float64)
        except (TypeError, ValueError):
            raise OnnxflipError(f"metric {self.name} returned {type(result).__name__}, not an array of scores") from None
        if scores.shape != (len(outputs),):
            raise OnnxflipError(
                f"metric {self.name} returned shape {scores.shape}; it must return one score per sample, "
                f"shape ({len(outputs)},)"
            )
        outside = scores[~((scores >= 0) & (scores <= 1))]
        if len(outside):
            raise OnnxflipError(f"metric {self.name} returned scores outside [0, 1] (e.g. {outside[0]})")
        return scores

    def floor(self, output_shape) -> float:
        return self.floor_value


def _import_function(spec: str) -> Callable:
    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute:
        raise OnnxflipError(f"metric {spec!r} must be package.module:function or path/to/file.py:function")
    try:
        if module_name.endswith(".py"):
            path = pathlib.Path(module_name).expanduser()
            if not path.is_file():
                raise OnnxflipError(f"cannot import metric {spec}: {path} does not exist")
            module_spec = importlib.util.spec_from_file_location(f"onnxflip_user_metric_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_spec.name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except OnnxflipError:
        raise
    except Exception as exc:  # noqa: BLE001 - importing user code may raise anything
        raise OnnxflipError(f"cannot import metric {spec}: {type(exc).__name__}: {exc}") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise OnnxflipError(f"cannot import metric {spec}: {module_name} has no function {attribute!r}")
    return function


def _user_metric(spec: str) -> UserMetric:
    function = _import_function(spec)
    floor = getattr(function, "floor", 0.0)
    if not isinstance(floor, (int, float)) or not 0 <= floor <= 1:
        raise OnnxflipError(f"metric {spec}: its floor attribute must be a number in [0, 1], not {floor!r}")
    return UserMetric(name=spec, function=function, needs_labels=bool(getattr(function, "needs_labels", False)),
                      floor_value=float(floor))


def targets_of(metric: Metric, batch) -> np.ndarray | None:
    """What a metric scores a batch against: its labels, or for a metric that reads a model input (perplexity:
    the token ids, whose next tokens it predicts) that input."""
    name = getattr(metric, "reads_input", None)  # an optional attribute of the protocol
    if name is None:
        return batch.labels
    if name not in batch.feeds:
        raise OnnxflipError(f"{metric.name} reads the model input {name!r}, which the model does not take")
    return batch.feeds[name]


def metric_from_spec(spec: str, *, threshold: float | None = None, k: int | None = None,
                     nonfinite_score: str = "wrong") -> Metric:
    """The metric a spec names: top1, top5 / topK (with ``k``), agreement, rel-error, nonfinite, or a
    user function ``package.module:function``; ``threshold`` is rel-error's (default 0.1); ``nonfinite_score``
    how top1, topK and agreement score outputs that hold NaN or inf (``wrong``, or ``argmax``: NaN largest)."""
    text = spec.strip()
    lower = text.lower()
    _check_nonfinite_score(nonfinite_score)
    if threshold is not None and lower != "rel-error":
        raise OnnxflipError(f"a threshold applies to rel-error only, not to {text}")
    if k is not None and lower not in ("topk", f"top{k}"):
        raise OnnxflipError(f"k applies to topK only, not to {text}")
    classifies = lower == "agreement" or lower == "topk" or (lower.startswith("top") and lower[3:].isdigit())
    if nonfinite_score != "wrong" and not classifies:
        raise OnnxflipError(f"a nonfinite score of {nonfinite_score} applies to {NONFINITE_METRICS} only, not to "
                            f"{text}")
    if lower == "topk":
        if k is None:
            raise OnnxflipError("topK needs k (or write top5, top3, ...)")
        return TopK(k=k, nonfinite_score=nonfinite_score)
    if lower.startswith("top") and lower[3:].isdigit():
        return TopK(k=int(lower[3:]), nonfinite_score=nonfinite_score)
    if lower == "agreement":
        return Agreement(nonfinite_score=nonfinite_score)
    if lower == "rel-error":
        return RelError() if threshold is None else RelError(threshold=threshold)
    if lower == "nonfinite":
        return Nonfinite()
    if lower == "perplexity":
        from onnxflip.language import Perplexity

        return Perplexity()
    if lower.startswith("greedy:"):
        from onnxflip.language import Greedy

        count = lower.partition(":")[2]
        if not count.isdigit() or int(count) < 1:
            raise OnnxflipError(f"greedy:N needs a whole number of tokens N >= 1, not {text!r}")
        return Greedy(tokens=int(count))
    if ":" in text:
        return _user_metric(text)
    raise OnnxflipError(f"unknown metric {spec!r}; choose {', '.join(METRIC_NAMES)}")

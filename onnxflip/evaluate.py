"""Accuracy under bit flips: one evaluation per (probability, trial), swept or searched.

For each trial the fixed parameter flips (weights, biases) are drawn once
and made constants (:mod:`onnxflip.graph.passes.materialize`), so ONNX Runtime keeps its
constant-weight optimisations; a session costs milliseconds to create.
Activations are flipped in the graph with a new seed for every batch: new
flips at every write, and every number reproducible from the run seed.

Seeds: trial t of a run with seed S uses ``mix(S, t)`` for its parameters
and ``mix(mix(S, t), 1 + b)`` for the activations of batch b.  The same
trial seeds serve every probability (common random numbers), which makes
the curve smoother than independent draws would.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxflip.errors import OnnxflipError
from onnxflip.graph.config import METADATA_KEY, FaultModel, InjectionConfig, control_input_name
from onnxflip.graph.inject import insert_flipbits
from onnxflip.graph.passes.materialize import materialize_parameters
from onnxflip.graph.sites import TARGETS, Selection
from onnxflip.runtime.session import PROVIDERS, make_session
from onnxflip.stats import accuracy_interval

__all__ = ["DIRECTIONS", "Evaluator", "SweepSettings", "mix_seed", "probabilities_for"]

logger = logging.getLogger(__name__)

DIRECTIONS = ("both", "01", "10")
_MASK64 = (1 << 64) - 1


def mix_seed(seed: int, index: int) -> int:
    """A 63-bit seed derived from (seed, index) by SplitMix64 finalisation."""
    z = (seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


def probabilities_for(p: float, direction: str) -> tuple[float, float]:
    """(p01, p10) for a sweep value: both directions, only 0->1, or only 1->0."""
    return {"both": (p, p), "01": (p, 0.0), "10": (0.0, p)}[direction]


@dataclass(frozen=True)
class SweepSettings:
    """Everything that decides the numbers of a sweep (recorded with the results)."""

    format: str = "float32"
    targets: tuple[str, ...] = TARGETS
    bits: str = "all"
    direction: str = "both"
    nonfinite: str = "keep"
    trials: int = 3
    batch_size: int = 500
    seed: int = 0
    samples: int | None = None
    provider: str = "cpu"
    selection: Selection = field(default_factory=Selection)

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise OnnxflipError(f"direction must be one of {', '.join(DIRECTIONS)}")
        if self.trials < 1 or self.batch_size < 1:
            raise OnnxflipError("trials and batch size must be at least 1")
        if self.provider not in PROVIDERS:
            raise OnnxflipError(f"provider must be one of {', '.join(PROVIDERS)}")

    def to_json(self) -> dict:
        data = asdict(self)
        data["targets"] = list(self.targets)
        data["selection"]["activation_ops"] = list(self.selection.activation_ops)
        return data

    def injection(self) -> InjectionConfig:
        def fault(target: str) -> FaultModel | None:
            return FaultModel(bits=self.bits, nonfinite=self.nonfinite) if target in self.targets else None

        return InjectionConfig(format=self.format, activations=fault("activations"), weights=fault("weights"),
                               biases=fault("biases"), selection=self.selection)


class Evaluator:
    """Runs an injected model over a labelled image set at given flip probabilities."""

    def __init__(self, model: ir.Model, images: np.ndarray, labels: np.ndarray, settings: SweepSettings) -> None:
        self.settings = settings
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.labels = np.asarray(labels)
        if METADATA_KEY in model.metadata_props:
            self.injected = model
            recorded = json.loads(model.metadata_props[METADATA_KEY])["config"]
            if recorded["format"] != settings.format:
                raise OnnxflipError(f"the model is injected in format {recorded['format']}, not {settings.format}")
            if recorded.get("activations") and recorded["activations"]["randomness"] == "per_run":
                logger.warning("activations use per_run randomness: runs are not reproducible from the seed")
        else:
            self.injected = insert_flipbits(model, config=settings.injection())
        self.input_name = self._image_input()
        self.targets = [t for t in TARGETS if any(v.name == control_input_name(t, "p01") for v in self.injected.graph.inputs)]
        self.evaluations = 0

    def _image_input(self) -> str:
        inputs = [v for v in self.injected.graph.inputs if not v.is_initializer()]
        if len(inputs) != 1:
            raise OnnxflipError(f"the model has {len(inputs)} non-constant inputs; evaluate needs one image input")
        outputs = self.injected.graph.outputs
        shape = outputs[0].shape if outputs else None
        if len(outputs) != 1 or (shape is not None and len(shape) > 0 and isinstance(shape[-1], int) and shape[-1] != 10):
            raise OnnxflipError("the model's output is not 10 logits (a CIFAR-10 classifier)")
        return inputs[0].name

    def _session(self, p01: float, p10: float, trial_seed: int) -> ort.InferenceSession:
        controls = {}
        for target in ("weights", "biases"):
            if target in self.targets:
                controls[control_input_name(target, "p01")] = np.array(p01, np.float32)
                controls[control_input_name(target, "p10")] = np.array(p10, np.float32)
                controls[control_input_name(target, "seed")] = np.array(trial_seed, np.int64)
        return make_session(materialize_parameters(self.injected, controls), provider=self.settings.provider)

    def run_trial(self, p: float, trial: int, on_batch: Callable[[], None] | None = None) -> dict:
        """Accuracy and non-finite fraction of one trial at probability p (and which images were right)."""
        p01, p10 = probabilities_for(p, self.settings.direction)
        trial_seed = mix_seed(self.settings.seed, trial)
        session = self._session(p01, p10, trial_seed)
        feeds_base = {}
        if "activations" in self.targets:
            feeds_base = {control_input_name("activations", "p01"): np.array(p01, np.float32),
                          control_input_name("activations", "p10"): np.array(p10, np.float32)}
        right = np.zeros(len(self.labels), dtype=bool)
        nonfinite = 0
        bs = self.settings.batch_size
        for b, start in enumerate(range(0, len(self.labels), bs)):
            feeds = {self.input_name: self.images[start : start + bs], **feeds_base}
            if "activations" in self.targets:
                feeds[control_input_name("activations", "seed")] = np.array(mix_seed(trial_seed, 1 + b), np.int64)
            (logits,) = session.run(None, feeds)
            if logits.ndim != 2 or logits.shape[1] != 10:
                raise OnnxflipError(f"the model's output has shape {logits.shape}, not (batch, 10) logits")
            bad = ~np.isfinite(logits).all(axis=1)
            nonfinite += int(bad.sum())
            # NaN counts as the largest value, as in NumPy's and PyTorch's argmax.
            right[start : start + bs] = np.argmax(logits, axis=1) == self.labels[start : start + bs]
            if on_batch is not None:
                on_batch()
        self.evaluations += 1
        n = len(self.labels)
        return {"trial": trial, "seed": trial_seed, "accuracy": float(right.mean()), "nonfinite": nonfinite / n,
                "right": right}

    def batches_per_trial(self) -> int:
        return math.ceil(len(self.labels) / self.settings.batch_size)

    def evaluate_point(self, p: float, on_batch: Callable[[], None] | None = None) -> dict:
        """Mean accuracy, its interval, extremes and non-finite fraction at p over all trials."""
        trials = [self.run_trial(p, t, on_batch) for t in range(self.settings.trials)]
        return summarise(p, self.settings.direction, trials)


def summarise(p: float, direction: str, trials: Sequence[dict]) -> dict:
    """One row of results: the trials' accuracies, their mean and its interval (per-image counts)."""
    accuracies = [t["accuracy"] for t in trials]
    interval = accuracy_interval(np.stack([t["right"] for t in trials]))
    p01, p10 = probabilities_for(p, direction)
    return {
        "p": p,
        "p01": p01,
        "p10": p10,
        "mean": float(np.mean(accuracies)),
        "ci_low": interval.low,
        "ci_high": interval.high,
        "min": min(accuracies),
        "max": max(accuracies),
        "nonfinite": float(np.mean([t["nonfinite"] for t in trials])),
        "trials": [{k: v for k, v in t.items() if k != "right"} for t in trials],
    }

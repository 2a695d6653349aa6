"""Trials on this machine: the injected model scored on the first n samples of a data source.

A trial at probability p flips the fixed parameters (weights, biases) once,
as constants of the trial's own session (:mod:`onnxflip.graph.passes.materialize`,
so ONNX Runtime keeps its constant-weight optimisations), and flips the
activations anew in every batch.  Seeds: trial t of a run with seed S uses
``mix(S, t)`` for its parameters and ``mix(mix(S, t), 1 + b)`` for the
activations of batch b, whatever the probability or the number of samples:
the numbers of a trial depend only on (model, settings, S, t, p, samples).

Cost: a session per trial (milliseconds: the parameters are flipped in NumPy
and bound as the trial's constants) and one pass over the samples, which are
decoded once and held in memory when they fit (``--cache``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx_ir as ir

from onnxflip.campaign.design import TrialOutcome
from onnxflip.data.sources import DataSource
from onnxflip.errors import OnnxflipError
from onnxflip.graph.config import METADATA_KEY, InjectionConfig, control_input_name
from onnxflip.graph.inject import insert_flipbits
from onnxflip.graph.passes.materialize import materialize_parameters, parameter_flips
from onnxflip.graph.sites import TARGETS, Selection
from onnxflip.metrics import Metric
from onnxflip.runtime.session import PROVIDERS, make_session, runtime_bytes, runtime_proto, session_providers

__all__ = ["DIRECTIONS", "LocalRunner", "TrialSettings", "mix_seed", "probabilities_for"]

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
class TrialSettings:
    """Everything that decides the numbers of a trial (recorded with the results)."""

    format: str = "float32"
    targets: tuple[str, ...] = TARGETS
    bits: str = "all"
    direction: str = "both"
    nonfinite: str = "keep"
    batch_size: int = 500
    seed: int = 0
    provider: str = "cpu"
    selection: Selection = field(default_factory=Selection)
    fold_batchnorm: bool = True

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise OnnxflipError(f"direction must be one of {', '.join(DIRECTIONS)}")
        if self.batch_size < 1:
            raise OnnxflipError("the batch size must be at least 1")
        if self.provider not in PROVIDERS:
            raise OnnxflipError(f"provider must be one of {', '.join(PROVIDERS)}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise OnnxflipError(f"targets must be some of {', '.join(TARGETS)}")

    def to_json(self) -> dict:
        data = asdict(self)
        data["targets"] = list(self.targets)
        data["selection"]["activation_ops"] = list(self.selection.activation_ops)
        return data

    def injection(self) -> InjectionConfig:
        """Activations flip with fixed randomness too: each batch is fed its own seed, so every number is
        reproducible from the run seed."""
        return InjectionConfig.build(format=self.format, targets=self.targets, bits=self.bits,
                                     nonfinite=self.nonfinite, activation_randomness="fixed",
                                     selection=self.selection, fold_batchnorm=self.fold_batchnorm)


def injected_format(model: ir.Model) -> str | None:
    """The format an injected model was injected in (None for a clean model)."""
    if METADATA_KEY not in model.metadata_props:
        return None
    return json.loads(model.metadata_props[METADATA_KEY])["config"]["format"]


class LocalRunner:
    """Runs trials in this process (the ``local`` executor): a :class:`~onnxflip.campaign.design.TrialRunner`."""

    def __init__(self, model: ir.Model, source: DataSource, metric: Metric, settings: TrialSettings, *,
                 output: str | None = None, floor: float | None = None,
                 on_batch: Callable[[], None] | None = None, threads: int | None = None) -> None:
        self.settings = settings
        self.threads = threads  # ONNX Runtime's intra-op threads per session (None: its default, every core)
        self.metric = metric
        self.source = source
        self.samples = len(source)
        self.on_batch = on_batch
        if METADATA_KEY in model.metadata_props:
            self.injected = model
            recorded = injected_format(model)
            if recorded != settings.format:
                raise OnnxflipError(f"the model is injected in format {recorded}, not {settings.format}")
        else:
            self.injected = insert_flipbits(model, config=settings.injection())
        self.targets = [t for t in TARGETS
                        if any(v.name == control_input_name(t, "p01") for v in self.injected.graph.inputs)]
        outputs = [v for v in self.injected.graph.outputs if not v.name.startswith("onnxflip_")]
        names = [v.name for v in outputs]
        if output is not None and output not in names:
            raise OnnxflipError(f"the model has no output {output!r}; its outputs are {', '.join(names)}")
        self.output = output or names[0]
        shape = next(v.shape for v in outputs if v.name == self.output)
        self.output_shape = list(shape) if shape is not None else None
        self.floor = float(metric.floor(self.output_shape)) if floor is None else float(floor)
        self._clean: dict[int, np.ndarray] = {}  # outputs of the fault-free model per sample count
        # The materialised model of a trial at p > 0 whose flipped constants each trial swaps (False: not possible).
        self._template = None
        self.providers: tuple[str, ...] = ()

    def __reduce__(self):
        """Pickled as what rebuilds it (for an executor's workers): the injected model, the data, the metric, the
        settings, the output and the floor; not the clean outputs or sessions it has cached, nor its callback."""
        return (_rebuild_runner, (self.injected, self.source, self.metric, self.settings, self.output, self.floor,
                                  self.threads))

    # --- sessions
    def _controls(self, p01: float, p10: float, trial_seed: int) -> dict[str, np.ndarray]:
        """The values a trial fixes: parameter flips with the trial's seed, the probabilities of all targets."""
        values = {}
        for target in self.targets:
            values[control_input_name(target, "p01")] = np.array(p01, np.float32)
            values[control_input_name(target, "p10")] = np.array(p10, np.float32)
            values[control_input_name(target, "s0")] = np.array(0.0, np.float32)
            values[control_input_name(target, "s1")] = np.array(0.0, np.float32)
            if target != "activations":
                values[control_input_name(target, "seed")] = np.array(trial_seed, np.int64)
        return values

    def _session(self, p01: float, p10: float, trial_seed: int):
        """The trial's session: its parameter flips are constants, so ONNX Runtime keeps its weight optimisations."""
        controls = self._controls(p01, p10, trial_seed)
        model = self._swap_flips(controls) if p01 > 0 or p10 > 0 else None
        if model is None:
            model = runtime_bytes(materialize_parameters(self.injected, controls))
        session = make_session(model, provider=self.settings.provider, threads=self.threads)
        self.providers = session_providers(session)
        names = {i.name for i in session.get_inputs()} | {i.name for i in session.get_overridable_initializers()}
        return session, names

    def _swap_flips(self, controls: dict[str, np.ndarray]) -> bytes | None:
        """The materialised model's bytes with this trial's flipped parameters swapped in.

        Materialising once (at p > 0, so every flip site is a constant) and
        then replacing only those constants' bytes gives the same model as
        :func:`materialize_parameters` for the trial, at a fraction of the
        cost (no graph copy, no pass).  None where that does not apply (ECC
        counts of parameters): the caller materialises in full.
        """
        if self._template is False:
            return None
        flips = parameter_flips(self.injected, controls)
        if flips is None:
            self._template = False
            return None
        if self._template is None:
            tiny = {k: (np.array(1e-30, np.float32) if k.endswith(("_p01", "_p10")) else v) for k, v in controls.items()}
            proto = runtime_proto(materialize_parameters(self.injected, tiny))
            initializers = {init.name: init for init in proto.graph.initializer}
            if set(flips) != {name for name in initializers if name.endswith("_trial")}:
                # Flips that feed flips (the sign bit of int8 weights stored as uint8): materialise in full.
                self._template = False
                return None
            self._template = (proto, initializers)
        proto, initializers = self._template
        for name, array in flips.items():
            initializers[name].raw_data = np.ascontiguousarray(array).tobytes()
        return proto.SerializeToString()

    # --- trials
    def _clean_outputs(self, samples: int) -> np.ndarray | None:
        if not self.metric.needs_clean:
            return None
        if samples not in self._clean:
            session, names = self._session(0.0, 0.0, 0)
            parts = [self._outputs(session, names, batch.feeds, None) for batch in self._batches(samples)]
            self._clean[samples] = np.concatenate(parts)
        return self._clean[samples]

    def _batches(self, samples: int):
        source = self.source if samples >= len(self.source) else self.source.subset(samples)
        return source.batches(self.settings.batch_size)

    def _outputs(self, session, names: set[str], feeds: dict[str, np.ndarray], activation_seed: int | None,
                 p01: float = 0.0, p10: float = 0.0) -> np.ndarray:
        feeds = dict(feeds)
        if activation_seed is not None and "activations" in self.targets:
            for what, value in (("p01", np.array(p01, np.float32)), ("p10", np.array(p10, np.float32)),
                                ("seed", np.array(activation_seed, np.int64))):
                name = control_input_name("activations", what)
                if name in names:
                    feeds[name] = value
        (out,) = session.run([self.output], feeds)
        return out

    def trial(self, p: float, trial: int, samples: int) -> TrialOutcome:
        """Score one trial on the first ``samples`` samples (p = 0: the clean model)."""
        began = time.perf_counter()
        p01, p10 = probabilities_for(p, self.settings.direction)
        trial_seed = mix_seed(self.settings.seed, trial)
        clean = self._clean_outputs(samples)
        session, names = self._session(p01, p10, trial_seed)
        scores, nonfinite, start = [], 0, 0
        for b, batch in enumerate(self._batches(samples)):
            out = self._outputs(session, names, batch.feeds, mix_seed(trial_seed, 1 + b), p01, p10)
            reference = clean[start : start + len(batch)] if clean is not None else None
            batch_scores = np.asarray(self.metric.scores(out, reference, batch.labels), dtype=np.float64)
            scores.append(batch_scores)
            nonfinite += int((~np.isfinite(out.reshape(len(out), -1))).any(axis=1).sum())
            start += len(batch)
            if self.on_batch is not None:
                self.on_batch()
        values = np.concatenate(scores)
        return TrialOutcome(p=p, trial=trial, samples=samples, score=float(values.mean()),
                            sample_variance=float(values.var(ddof=1)) if len(values) > 1 else 0.0,
                            nonfinite=nonfinite / max(start, 1), seconds=time.perf_counter() - began, seed=trial_seed)

    def run(self, p: float, trials: Sequence[int], samples: int) -> list[TrialOutcome]:
        return [self.trial(p, t, samples) for t in trials]


def _rebuild_runner(model, source, metric, settings, output, floor, threads) -> LocalRunner:
    return LocalRunner(model, source, metric, settings, output=output, floor=floor, threads=threads)

"""Trials on this machine: the injected model scored on the first n samples of a data source.

A trial at probability p flips the fixed parameters (weights, biases) once,
as constants of the trial's own session (:mod:`onnxflip.graph.passes.materialize`,
so ONNX Runtime keeps its constant-weight optimisations), and flips the
activations anew in every batch.  Seeds: trial t of a run with seed S uses
``mix(S, t)`` for its parameters and ``mix(mix(S, t), 1 + b)`` for the
activations of batch b, whatever the probability or the number of samples:
the numbers of a trial depend only on (model, settings, S, t, p, samples).

Memory faults (:mod:`onnxflip.faults`): the swept value x is the flip
probability (``sweep="flip"``; stuck-at rates ``s0``/``s1`` fixed) or the
share of stuck cells (``sweep="stuck-at"``: s0 = s1 = x / 2; a fixed flip
probability ``flip_p``), see :meth:`TrialSettings.rates`.  x = 0 is the
fault-free model, the reference of the curve.  Trial t's stuck cells follow
``mix(S, t)`` for every target (activations are fed it as their stuck seed,
so every batch of a trial reads the same memory and each trial is a new
one).  With ECC (an attribute of the injection), a trial records the words
read corrected, detected and silently wrong per target: parameters once (one
memory), activations summed over the batches.

Cost: a session per trial (milliseconds: the parameters are flipped with the
kernel and bound as the trial's constants into a model materialised once) and
one pass over the samples, which are decoded once and held in memory when
they fit (``Experiment.cache_bytes``, 2 GiB).  The trial's session runs in the process's shared
arena (:func:`~onnxflip.runtime.session.session_options`), so its first pass
costs what a warm session's does.  On the CPU, a float model's trials run
the graph ONNX Runtime optimised once, with FlipBits on its NCHWc tensors
(:mod:`onnxflip.runtime.nchwc`): the same flips, without a layout reorder
on each side of every activation site.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import NamedTuple

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxflip.campaign.design import TrialOutcome, block_means
from onnxflip.data.base import DataSource
from onnxflip.errors import OnnxflipError
from onnxflip.faults import RANDOMNESS, FaultModel, WordCounts, words_per_run
from onnxflip.graph.cache import cache_pairs
from onnxflip.graph.config import InjectionConfig, control_input_name, counts_output_name
from onnxflip.graph.formats import COMPUTES
from onnxflip.graph.inject import insert_flipbits
from onnxflip.graph.inputs import batch_dimension
from onnxflip.graph.passes.materialize import materialize_parameters, parameter_flips
from onnxflip.graph.passes.qlinear import StoreInt8AsUint8Pass
from onnxflip.graph.record import InjectionRecord
from onnxflip.graph.sites import DEFAULT_ACTIVATION_OPS, DEFAULT_TARGETS, PER_SAMPLE_TARGETS, TARGETS, Selection
from onnxflip.metrics import Metric, targets_of
from onnxflip.protection import Protection
from onnxflip.runtime.flip import as_ortvalue
from onnxflip.runtime.nchwc import BlockedTemplate, blocked_options, blocked_template
from onnxflip.runtime.session import (
    PROVIDERS,
    bound_per_session,
    external_data_folder,
    make_session,
    read_external_data_from,
    run_session,
    runtime_bytes,
    runtime_proto,
    session_options,
    session_providers,
)

__all__ = ["DIRECTIONS", "SWEEPS", "LocalRunner", "TrialSettings", "mix_seed", "probabilities_for"]

logger = logging.getLogger(__name__)

DIRECTIONS = ("both", "01", "10")
SWEEPS = ("flip", "stuck-at")  # the swept value: the flip probability, or the share of stuck cells (s0 = s1 = x / 2)
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
    """Everything that decides the numbers of a trial (recorded with the results).

    ``fault``: the fault model of every target class (its bits, nonfinite
    policy, stuck-at rates of a flip sweep, ECC); its flip probabilities and
    seed are the trial's (:meth:`rates`, :func:`mix_seed`), so they stay 0
    there.  ``direction``, ``sweep`` and ``flip_p`` say what the swept value
    sets.
    """

    format: str = "float32"
    compute: str = "native"  # how the format computes (onnxflip.graph.formats.COMPUTES)
    targets: tuple[str, ...] = DEFAULT_TARGETS
    fault: FaultModel = field(default_factory=FaultModel)
    direction: str = "both"
    batch_size: int = 500
    seed: int = 0
    provider: str = "cpu"
    selection: Selection = field(default_factory=Selection)
    fold_batchnorm: bool = True
    sweep: str = "flip"
    flip_p: float = 0.0  # flip probability (in ``direction``) of every trial of a stuck-at sweep
    protection: Protection = field(default_factory=Protection)  # bits that never flip, per site
    # fixed: a trial's weights and biases are written once, with their flips, and every batch reads them (write
    # noise, the paper's model); per_run: every batch reads them with flips of its own (read noise)
    parameter_randomness: str = "fixed"

    def __post_init__(self) -> None:
        if self.compute not in COMPUTES:
            raise OnnxflipError(f"compute must be one of {', '.join(COMPUTES)}, not {self.compute!r}")
        if self.sweep not in SWEEPS:
            raise OnnxflipError(f"sweep must be one of {', '.join(SWEEPS)}, not {self.sweep!r}")
        if self.fault.p01 or self.fault.p10 or self.fault.seed or self.fault.randomness != "fixed":
            raise OnnxflipError("a trial sets the flip probabilities and seeds itself: the settings' fault model "
                                "gives none")
        if self.sweep == "stuck-at" and self.fault.stuck:
            raise OnnxflipError("a stuck-at sweep sets s0 = s1 = rate / 2 itself; give no fixed stuck-at rates")
        if self.sweep == "flip" and self.flip_p:
            raise OnnxflipError("a flip sweep sets the flip probability itself; a fixed one is for a stuck-at sweep")
        if not 0.0 <= self.flip_p <= 1.0:
            raise OnnxflipError(f"flip_p = {self.flip_p} is not a probability in [0, 1]")
        if self.parameter_randomness not in RANDOMNESS:
            raise OnnxflipError(f"parameter randomness must be one of {', '.join(RANDOMNESS)}")
        if self.parameter_randomness == "per_run" and (self.fault.stuck or self.fault.ecc != "none"
                                                       or self.sweep == "stuck-at"):
            raise OnnxflipError("read noise on the parameters (per_run) is measured without stuck-at cells and "
                                "ECC: a trial's memory would change with every batch")
        if self.parameter_randomness == "per_run" and all(t in PER_SAMPLE_TARGETS for t in self.targets):
            raise OnnxflipError(f"parameter randomness per_run: the targets ({', '.join(self.targets)}) hold no "
                                "stored parameters; activations are written anew by every batch already")
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
        """The settings as results.json records them: the fault model's fields among the others, in the order
        that files written before the settings held a fault model have; the protection where one is given
        (results without it stay comparable)."""
        fault = self.fault
        data = {"format": self.format, "targets": list(self.targets), "bits": fault.bits,
                "direction": self.direction, "nonfinite": fault.nonfinite, "batch_size": self.batch_size,
                "seed": self.seed, "provider": self.provider,
                "selection": {**asdict(self.selection), "activation_ops": list(self.selection.activation_ops)},
                "fold_batchnorm": self.fold_batchnorm, "sweep": self.sweep, "s0": fault.s0, "s1": fault.s1,
                "flip_p": self.flip_p, "ecc": fault.ecc, "on_detected": fault.on_detected}
        if self.protection.masks:
            data["protection"] = self.protection.to_json()
        if self.format not in ("float32", "int8"):  # how the format computed (float32 and int8 compute as stored)
            data["compute"] = self.compute
        if self.parameter_randomness != "fixed":  # write noise: results without the field stay comparable
            data["parameter_randomness"] = self.parameter_randomness
        return data

    def rates(self, x: float) -> tuple[float, float, float, float]:
        """(p01, p10, s0, s1) of a trial at swept value x; x = 0 is the fault-free model."""
        if x == 0:
            return 0.0, 0.0, 0.0, 0.0
        if self.sweep == "stuck-at":
            return (*probabilities_for(self.flip_p, self.direction), x / 2, x / 2)
        return (*probabilities_for(x, self.direction), self.fault.s0, self.fault.s1)

    def injection(self) -> InjectionConfig:
        """Activations flip with fixed randomness too: each batch is fed its own seed, so every number is
        reproducible from the run seed.  The rates are the trials' control inputs; ECC is the nodes'."""
        return InjectionConfig.build(format=self.format, compute=self.compute, targets=self.targets,
                                     fault=replace(self.fault, s0=0.0, s1=0.0) if self.fault.stuck else self.fault,
                                     activation_randomness="fixed", selection=self.selection,
                                     fold_batchnorm=self.fold_batchnorm, protection=self.protection)


class _TrialSession(NamedTuple):
    """A trial's session, the names it may be fed, and the flipped parameters bound into it (kept with it:
    ONNX Runtime may read them in place for the session's life)."""

    session: ort.InferenceSession
    inputs: frozenset[str]
    parameters: dict[str, np.ndarray]


def injected_format(model: ir.Model) -> str | None:
    """The format an injected model was injected in (None for a clean model)."""
    record = InjectionRecord.read(model)
    return None if record is None else record.config.format


def _sorted_targets(targets: Sequence[str]) -> str:
    return ",".join(t for t in TARGETS if t in targets)


def _op_order(op: str) -> tuple[int, str]:
    """Activation op types in the default list's order, others after it by name."""
    return (DEFAULT_ACTIVATION_OPS.index(op) if op in DEFAULT_ACTIVATION_OPS else len(DEFAULT_ACTIVATION_OPS), op)


# What an injected model fixes, by the option that sets it: how a campaign's settings hold it.  An injected model
# flips what it holds, so its settings are the model's (:func:`injected_settings`).
FIXED_BY_INJECTION: dict[str, Callable[[TrialSettings], object]] = {
    "--format": lambda s: s.format,
    "--compute": lambda s: s.compute,
    "--targets": lambda s: _sorted_targets(s.targets),
    "--bits": lambda s: s.fault.bits,
    "--nonfinite": lambda s: s.fault.nonfinite,
    "--ecc": lambda s: s.fault.ecc,
    "--on-detected": lambda s: s.fault.on_detected,
    "--ops": lambda s: ",".join(sorted(s.selection.activation_ops, key=_op_order)),
    "--every-intermediate": lambda s: s.selection.every_intermediate,
    "--include": lambda s: s.selection.include,
    "--exclude": lambda s: s.selection.exclude,
    "--no-fold-batchnorm": lambda s: not s.fold_batchnorm,
    "--protect": lambda s: s.protection.masks,
}


def _as_injected(record: InjectionRecord, settings: TrialSettings) -> TrialSettings:
    """``settings`` with what the record fixes (:data:`FIXED_BY_INJECTION`) taken from it; the fault model of
    its first target class stands for all (inject gives every class the same)."""
    config = record.config
    held = next((config.fault_model(t) for t in config.targets), settings.fault)
    fault = replace(settings.fault, bits=held.bits, nonfinite=held.nonfinite, ecc=held.ecc,
                    on_detected=held.on_detected)
    return replace(settings, format=config.format, compute=config.compute or "native", targets=config.targets,
                   fault=fault, selection=config.selection, fold_batchnorm=config.fold_batchnorm,
                   protection=config.protection)


def _shown(option: str, value: object) -> str:
    """A fixed value as the option gives it: ``--bits mantissa``, ``no --include``, ``--every-intermediate``,
    ``a --protect plan of 3 sites``."""
    if option == "--protect" and value:
        return f"a --protect plan of {len(value)} sites"
    if option == "--no-fold-batchnorm" and not value:
        return "BatchNorm folded into Conv"
    if value is None or value is False or option == "--protect":
        return f"no {option}"
    return option if value is True else f"{option} {value}"


def injected_settings(model: ir.Model, settings: TrialSettings, *, given: frozenset[str]) -> TrialSettings:
    """The settings of a campaign on ``model``: a clean model's as they are; an injected model's as it holds
    them, so that the results record what was measured.  An option in ``given`` (those the user gave, spelled
    as on the command line) that the model fixes (:data:`FIXED_BY_INJECTION`) must be the model's value, else
    it is refused: the model would flip what it holds whatever the option said."""
    record = InjectionRecord.read(model)
    if record is None:
        return settings
    held = _as_injected(record, settings)
    for option, value_of in FIXED_BY_INJECTION.items():
        if option in given and value_of(settings) != value_of(held):
            raise OnnxflipError(f"the model is injected with {_shown(option, value_of(held))}, not "
                                f"{_shown(option, value_of(settings))}; leave {option} out, or give the clean model")
    return held


def _describe_outputs(outputs: list[ir.Value]) -> str:
    def shape(v: ir.Value) -> str:
        return "?" if v.shape is None else "[" + ", ".join(str(d) for d in v.shape) + "]"

    return ", ".join(f"{v.name} {v.dtype.name.lower()} {shape(v)}" if isinstance(v.type, ir.TensorType)
                     else f"{v.name} (not a tensor)" for v in outputs)


def _scored_tensor(model: ir.Model, output: ir.Value) -> ir.Value:
    """The tensor a metric scores for a graph output: the output itself, or for a ZipMap's sequence of maps
    (scikit-learn classifiers' probabilities) the probability tensor it reads, made a graph output of the
    working model; any other output that is not a tensor is refused."""
    if isinstance(output.type, ir.TensorType):
        return output
    producer = output.producer()
    if producer is None or producer.op_type != "ZipMap":
        raise OnnxflipError(f"output {output.name!r} is not a tensor (a sequence or map), which no metric scores; "
                            "choose a tensor output with --output NAME")
    tensor = producer.inputs[0]
    if not tensor.is_graph_output():
        model.graph.outputs.append(tensor)
    logger.info("output %s is ZipMap's map of %s: scoring that tensor", output.name, tensor.name)
    return tensor


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
        record = InjectionRecord.read(model)
        if record is not None:
            self.injected = model
            injected_settings(model, settings, given=frozenset(FIXED_BY_INJECTION))  # refuses what it does not hold
        else:
            self.injected = insert_flipbits(model, config=settings.injection())
            record = InjectionRecord.read(self.injected)
        self.fixed_batch = batch_dimension(self.injected)  # the batch size the model's inputs fix (None: any)
        if self.fixed_batch is not None and settings.batch_size != self.fixed_batch:
            raise OnnxflipError(f"the model takes batches of exactly {self.fixed_batch} (its inputs fix the batch "
                                f"dimension), not {settings.batch_size}: use a batch size of {self.fixed_batch}")
        self.targets = [t for t in TARGETS
                        if any(v.name == control_input_name(t, "p01") for v in self.injected.graph.inputs)]
        output_names = {v.name for v in self.injected.graph.outputs}
        self.counted = [t for t in self.targets if counts_output_name(t) in output_names]  # targets with ECC words
        self._sites = record.sites
        # What the injection exposes: sites per target, and the coverage of the stored parameters (where recorded).
        self.exposure = {"sites": {t: sum(1 for s in self._sites if s["target"] == t) for t in self.targets},
                         "coverage": record.coverage.totals() if record.coverage is not None else None}
        self._uncounted: set[str] = set()  # ECC targets whose words cannot be counted (warned once)
        outputs = [v for v in self.injected.graph.outputs if not v.name.startswith("onnxflip_")]
        names = [v.name for v in outputs]
        if output is not None and output not in names:
            raise OnnxflipError(f"the model has no output {output!r}; its outputs are {', '.join(names)}")
        scored = _scored_tensor(self.injected, next(v for v in outputs if v.name == (output or names[0])))
        self.output = scored.name
        self.output_shape = list(scored.shape) if scored.shape is not None else None
        try:
            self.floor = float(metric.floor(self.output_shape)) if floor is None else float(floor)
        except OnnxflipError as exc:
            raise OnnxflipError(f"{exc} (the model's outputs: {_describe_outputs(outputs)})") from None
        self._clean: dict[int, np.ndarray] = {}  # outputs of the fault-free model per sample count
        # The serialised model of a trial at p > 0 whose flipped constants each trial binds (False: not possible).
        self._template = None
        self._external_folder = external_data_folder(self.injected)  # where its external tensors are read from
        self.providers: tuple[str, ...] = ()

    def __reduce__(self):
        """Pickled as what rebuilds it (for an executor's workers): the injected model, the data, the metric, the
        settings, the output and the floor; not the clean outputs or sessions it has cached, nor its callback."""
        return (_rebuild_runner, (self.injected, self.source, self.metric, self.settings, self.output, self.floor,
                                  self.threads))

    # --- sessions
    def _controls(self, p01: float, p10: float, trial_seed: int, s0: float = 0.0,
                  s1: float = 0.0) -> dict[str, np.ndarray]:
        """The values a trial fixes: parameter flips and stuck cells with the trial's seed, the rates of all
        targets."""
        values = {}
        for target in self.targets:
            for what, rate in zip(("p01", "p10", "s0", "s1"), (p01, p10, s0, s1)):
                values[control_input_name(target, what)] = np.array(rate, np.float32)
            if target not in PER_SAMPLE_TARGETS:
                values[control_input_name(target, "seed")] = np.array(trial_seed, np.int64)
        return values

    def _session(self, p01: float, p10: float, trial_seed: int, s0: float = 0.0, s1: float = 0.0) -> _TrialSession:
        """The trial's session: its parameter flips are constants, so ONNX Runtime keeps its weight optimisations."""
        controls = self._controls(p01, p10, trial_seed, s0, s1)
        bound = self._bind_flips(controls) if p01 > 0 or p10 > 0 or s0 > 0 or s1 > 0 else None
        options = read_external_data_from(session_options(threads=self.threads), self._external_folder)
        if bound is None:
            model, flips = runtime_bytes(self._materialize(controls)), {}
        else:
            model, flips, optimised = bound
            if optimised:
                blocked_options(options)
            if flips:
                options.add_external_initializers(list(flips), [as_ortvalue(a) for a in flips.values()])
        session = make_session(model, provider=self.settings.provider, options=options, threads=self.threads)
        self.providers = session_providers(session)
        names = {i.name for i in session.get_inputs()} | {i.name for i in session.get_overridable_initializers()}
        return _TrialSession(session, frozenset(names), flips)

    def _materialize(self, controls: dict[str, np.ndarray]) -> ir.Model:
        """The trial's model in full.  int8 weights whose FlipBits kept them int8 (ECC words are computed from
        the int8 bits) are constants once flipped: stored as uint8 then, like the others, so that ONNX Runtime
        runs its exact integer kernels (see :mod:`onnxflip.graph.passes.qlinear`)."""
        model = materialize_parameters(self.injected, controls)
        if self.settings.format == "int8" and self.settings.fault.ecc != "none":
            StoreInt8AsUint8Pass()(model)
        return model

    def _bind_flips(self, controls: dict[str, np.ndarray]) -> tuple[bytes, dict[str, np.ndarray], bool] | None:
        """The model materialised once for all trials, this trial's flipped parameters to bind into it, and
        whether that model is ONNX Runtime's optimised graph already (:mod:`onnxflip.runtime.nchwc`).

        In the materialised model (at p > 0, so every flip site is a
        constant) the flipped constants hold no data; the trial's session
        takes theirs from the trial's arrays
        (``SessionOptions.add_external_initializers``), before ONNX Runtime
        optimises the graph.  That is the model :func:`materialize_parameters`
        makes for the trial, without a graph copy, a pass or a serialisation
        per trial.  None where that does not apply (ECC counts of parameters,
        flips that feed flips): the caller materialises in full.  On the CPU,
        a float model's template is the graph ONNX Runtime optimised from it
        with FlipBits on its NCHWc tensors (no layout reorders around them),
        where that applies: the flipped parameters are then bound as the
        reordered filters that graph holds.
        """
        if self._template is False:
            return None
        flips = parameter_flips(self.injected, controls)
        if flips is None:
            self._template = False
            return None
        if self._template is None:
            template = self._materialize_template(controls, flips)
            self._template = False if template is None else template
            if template is None:
                return None
        flips = {name: np.ascontiguousarray(array) for name, array in flips.items()}
        if isinstance(self._template, BlockedTemplate):
            return self._template.model, self._template.arrays(flips), True
        return self._template, flips, False

    def _materialize_template(self, controls: dict[str, np.ndarray],
                              flips: dict[str, np.ndarray]) -> bytes | BlockedTemplate | None:
        """The serialised model with every fixed parameter flip a constant whose data each trial binds; None
        when the flips are not exactly its constants (flips that feed flips: the sign bit of int8 weights
        stored as uint8)."""
        tiny = {k: (np.array(1e-30, np.float32) if k.endswith(("_p01", "_p10")) else v) for k, v in controls.items()}
        proto = runtime_proto(materialize_parameters(self.injected, tiny))
        constants = [init for init in proto.graph.initializer if init.name.endswith("_trial")]
        if set(flips) != {init.name for init in constants}:
            return None
        template = bound_per_session(proto, set(flips))
        if self.settings.provider != "cpu" or self.settings.format == "int8":
            return template
        blocked = blocked_template(template, {name: np.ascontiguousarray(a) for name, a in flips.items()},
                                   threads=self.threads, external_folder=self._external_folder)
        if blocked is None:
            return template
        logger.info("%d FlipBits run on ONNX Runtime's NCHWc tensors (blocks of %d channels)", blocked.moved,
                    blocked.block)
        return blocked

    # --- trials
    def _clean_outputs(self, samples: int) -> np.ndarray | None:
        if not self.metric.needs_clean:
            return None
        if samples not in self._clean:
            clean = self._session(0.0, 0.0, 0)
            # Activation sites whose FlipBits stay (a graph output's) are fed zero rates, not the model's defaults.
            parts = [self._outputs(clean.session, clean.inputs, batch.feeds, 0)[0] for batch in self._batches(samples)]
            self._clean[samples] = np.concatenate(parts)
        return self._clean[samples]

    def _batches(self, samples: int):
        source = self.source if samples >= len(self.source) else self.source.subset(samples)
        return source.batches(self.settings.batch_size)

    def _outputs(self, session: ort.InferenceSession, names: frozenset[str], feeds: dict[str, np.ndarray], activation_seed: int | None,
                 rates: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
                 trial_seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The metric's output and the word counts of each target with ECC (that the session still computes).

        A model with a fixed batch size gets a last, shorter batch filled up
        with copies of its last sample, whose outputs are dropped; their
        stored values are words read like any other (ECC counts cover them).
        """
        feeds, short = self._filled(feeds)
        written = [t for t in PER_SAMPLE_TARGETS if t in self.targets]  # flipped anew by every run
        if activation_seed is not None and written:
            controls = [(w, np.array(r, np.float32)) for w, r in zip(("p01", "p10", "s0", "s1"), rates)]
            controls.append(("seed", np.array(activation_seed, np.int64)))
            if rates[2] or rates[3]:  # one memory per trial: every batch reads the trial's stuck cells
                controls.append(("stuck_seed", np.array([trial_seed], np.int64)))
            for target in written:
                for what, value in controls:
                    name = control_input_name(target, what)
                    if name in names:
                        feeds[name] = value
                    elif any(rates):  # the target's FlipBits would run on their defaults: nothing would flip
                        raise OnnxflipError(f"ONNX Runtime does not let the trial feed the model's control input "
                                            f"{name}, so its {target} would not flip; inject the original model again")
        available = {o.name for o in session.get_outputs()}
        counted = [t for t in self.counted if counts_output_name(t) in available]
        if hasattr(self.metric, "generate"):  # a decode loop: one run per token, each step its own activation seeds
            out = self._generate(session, feeds, activation_seed, written)
            return (out if short is None else out[:short]), {}
        out, *counts = run_session(session.run, [self.output, *(counts_output_name(t) for t in counted)], feeds)
        return (out if short is None else out[:short]), dict(zip(counted, counts))

    def _generate(self, session: ort.InferenceSession, feeds: dict[str, np.ndarray], activation_seed: int | None,
                  written: list[str]) -> np.ndarray:
        """What a generating metric reads: its decode loop, where step s > 0 feeds the targets written per run
        the seed mix(batch seed, s) (step 0 the batch seed), so that each step's flips are its own."""
        pairs = cache_pairs([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        names = [self.output, *(present for _, present in pairs)]

        def run(step_feeds: dict[str, np.ndarray], step: int) -> dict[str, np.ndarray]:
            step_feeds = dict(step_feeds)
            for target in written if activation_seed is not None and step else ():
                name = control_input_name(target, "seed")
                if name in step_feeds:
                    step_feeds[name] = np.array(mix_seed(activation_seed, step), np.int64)
            return dict(zip(names, run_session(session.run, names, step_feeds)))

        return self.metric.generate(run, feeds, output=self.output, pairs=pairs)

    def _filled(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int | None]:
        """The feeds of a batch filled up to the model's fixed batch size, and the true length where it was
        shorter (None otherwise)."""
        size = len(next(a for a in feeds.values() if a.ndim))
        if self.fixed_batch is None or size >= self.fixed_batch:
            return dict(feeds), None
        extra = self.fixed_batch - size
        return {name: np.concatenate([a, np.repeat(a[-1:], extra, axis=0)]) if a.ndim else a
                for name, a in feeds.items()}, size

    def _words(self, counts: list[dict[str, np.ndarray]], batch_sizes: list[int]) -> dict[str, dict] | None:
        """Per target with ECC: the words read corrected, detected and silently wrong, and the words read.

        Parameters are one memory read once per trial (their counts are the
        same at every batch); activations are written and read anew by every
        batch, so their counts and words add up over the batches.
        """
        words = {}
        for target in self.counted:
            try:
                if target in PER_SAMPLE_TARGETS:
                    # a fixed batch is in the sites' static shapes already: each run stores one whole batch
                    read = [words_per_run(self._sites, target, batch=1 if self.fixed_batch else n) for n in batch_sizes]
                else:
                    read = [words_per_run(self._sites, target)]
            except OnnxflipError as exc:  # a site without a static size: its words cannot be counted
                if target not in self._uncounted:
                    self._uncounted.add(target)
                    logger.warning("no word fractions for %s: %s", target, exc)
                continue
            total = WordCounts(words=sum(read))
            for c in counts if target in PER_SAMPLE_TARGETS else counts[:1]:
                if target in c:  # absent where the target's FlipBits were dropped (all rates 0): nothing read wrong
                    total += WordCounts.from_output(c[target], words=0)
            words[target] = asdict(total)
        return words or None

    def trial(self, p: float, trial: int, samples: int) -> TrialOutcome:
        """Score one trial on the first ``samples`` samples (p = 0: the clean model)."""
        began = time.perf_counter()
        rates = self.settings.rates(p)
        trial_seed = mix_seed(self.settings.seed, trial)
        clean = self._clean_outputs(samples)
        p01, p10, s0, s1 = rates
        trial_session = self._session(p01, p10, trial_seed, s0, s1)
        reads = self.settings.parameter_randomness == "per_run" and p > 0 and self._parameter_targets()
        scores, nonfinite, start, counts, sizes = [], 0, 0, [], []
        for b, batch in enumerate(self._batches(samples)):
            if reads and b:  # read noise: the batch reads the parameters with flips of its own
                trial_session = self._session(p01, p10, mix_seed(mix_seed(trial_seed, 0), b), s0, s1)
            out, batch_counts = self._outputs(trial_session.session, trial_session.inputs, batch.feeds,
                                              mix_seed(trial_seed, 1 + b), rates, trial_seed)
            counts.append(batch_counts)
            sizes.append(len(batch))
            reference = clean[start : start + len(batch)] if clean is not None else None
            batch_scores = np.asarray(self.metric.scores(out, reference, targets_of(self.metric, batch)),
                                      dtype=np.float64)
            scores.append(batch_scores)
            nonfinite += int((~np.isfinite(out.reshape(len(out), -1))).any(axis=1).sum())
            start += len(batch)
            if self.on_batch is not None:
                self.on_batch()
        values = np.concatenate(scores)
        return TrialOutcome(p=p, trial=trial, samples=samples, score=float(values.mean()),
                            sample_variance=float(values.var(ddof=1)) if len(values) > 1 else 0.0,
                            nonfinite=nonfinite / max(start, 1), seconds=time.perf_counter() - began, seed=trial_seed,
                            words=self._words(counts, sizes), block_scores=block_means(values, self.samples))

    def run(self, p: float, trials: Sequence[int], samples: int) -> list[TrialOutcome]:
        return [self.trial(p, t, samples) for t in trials]

    def _parameter_targets(self) -> list[str]:
        """The targets flipped once per session (weights and biases), not anew by every run."""
        return [t for t in self.targets if t not in PER_SAMPLE_TARGETS]


def _rebuild_runner(model, source, metric, settings, output, floor, threads) -> LocalRunner:
    return LocalRunner(model, source, metric, settings, output=output, floor=floor, threads=threads)

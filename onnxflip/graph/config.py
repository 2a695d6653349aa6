"""What an injection is: the storage format, a fault model per target class, the site selection.

``InjectionConfig.build`` is the one place a configuration is assembled from
flat settings (command-line options, sweep settings); every caller uses it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from onnxflip.errors import OnnxflipError
from onnxflip.faults import check_ecc, check_stuck
from onnxflip.graph.sites import DEFAULT_TARGETS, PER_SAMPLE_TARGETS, TARGETS, Selection
from onnxflip.protection import Protection
from onnxflip.runtime.contract import NONFINITE_POLICIES, RANDOMNESS
from onnxflip.runtime.flip import resolve_probabilities

__all__ = ["METADATA_KEY", "FaultModel", "InjectionConfig", "control_input_name", "counts_output_name"]

METADATA_KEY = "onnxflip.injection"


def control_input_name(target: str, what: str) -> str:
    """Graph input that sets ``what`` (p01, p10, seed, s0, s1 or stuck_seed) for a target class."""
    return f"onnxflip_{target}_{what}"


def counts_output_name(target: str) -> str:
    """Graph output with the word counts (corrected, detected, silent) of a target class protected by ECC."""
    return f"onnxflip_{target}_counts"


@dataclass(frozen=True)
class FaultModel:
    """How the bits of one target class flip, stick and are protected (see :mod:`onnxflip.faults`).

    ``s0``/``s1``: probability that a cell is stuck at 0/1; ``ecc``: ``none``,
    ``secded`` or ``secded64``; ``on_detected``: ``keep`` or ``zero`` for a
    word with a detected, uncorrectable error.
    """

    p01: float = 0.0
    p10: float = 0.0
    bits: str | int = "all"
    seed: int = 0
    randomness: str = "fixed"
    nonfinite: str = "keep"
    s0: float = 0.0
    s1: float = 0.0
    ecc: str = "none"
    on_detected: str = "keep"

    @classmethod
    def symmetric(cls, p: float, **kwargs) -> FaultModel:
        return cls(p01=p, p10=p, **kwargs)

    def __post_init__(self) -> None:
        resolve_probabilities(None, self.p01, self.p10)
        if self.randomness not in RANDOMNESS:
            raise OnnxflipError(f"randomness must be one of {', '.join(RANDOMNESS)}, not {self.randomness!r}")
        if self.nonfinite not in NONFINITE_POLICIES:
            raise OnnxflipError(f"nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, not {self.nonfinite!r}")
        check_stuck(self.s0, self.s1)
        check_ecc(self.ecc, self.on_detected)


@dataclass(frozen=True)
class InjectionConfig:
    """What to inject: the storage format, the fault model per target class, the site selection."""

    format: str = "float32"
    activations: FaultModel | None = field(default_factory=lambda: FaultModel(randomness="per_run"))
    weights: FaultModel | None = field(default_factory=FaultModel)
    biases: FaultModel | None = field(default_factory=FaultModel)
    qparams: FaultModel | None = None  # quantisation scales and zero points: only when asked for
    kv_cache: FaultModel | None = None  # the entries a decoder writes into its key-value cache: only when asked for
    selection: Selection = field(default_factory=Selection)
    fold_batchnorm: bool = True
    protection: Protection = field(default_factory=Protection)  # bits that never flip, per site

    @classmethod
    def build(
        cls,
        *,
        format: str = "float32",
        targets: Iterable[str] = DEFAULT_TARGETS,
        p01: float = 0.0,
        p10: float = 0.0,
        bits: str | int = "all",
        seed: int = 0,
        nonfinite: str = "keep",
        activation_randomness: str = "per_run",
        parameter_randomness: str = "fixed",
        s0: float = 0.0,
        s1: float = 0.0,
        ecc: str = "none",
        on_detected: str = "keep",
        selection: Selection | None = None,
        fold_batchnorm: bool = True,
        protection: Protection | None = None,
    ) -> InjectionConfig:
        """One fault model shared by the chosen target classes (activations with their own randomness)."""
        targets = tuple(targets)
        unknown = set(targets) - set(TARGETS)
        if unknown:
            raise OnnxflipError(f"unknown target(s) {', '.join(sorted(unknown))}; choose from {', '.join(TARGETS)}")

        def fault(target: str) -> FaultModel | None:
            if target not in targets:
                return None
            randomness = activation_randomness if target in PER_SAMPLE_TARGETS else parameter_randomness
            return FaultModel(p01=p01, p10=p10, bits=bits, seed=seed, nonfinite=nonfinite, randomness=randomness,
                              s0=s0, s1=s1, ecc=ecc, on_detected=on_detected)

        return cls(format=format, activations=fault("activations"), weights=fault("weights"),
                   biases=fault("biases"), qparams=fault("qparams"), kv_cache=fault("kv-cache"),
                   selection=selection or Selection(), fold_batchnorm=fold_batchnorm,
                   protection=protection or Protection())

    def fault_model(self, target: str) -> FaultModel | None:
        return getattr(self, target.replace("-", "_"))

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(t for t in TARGETS if self.fault_model(t) is not None)

    def to_json(self) -> dict:
        data = asdict(self)
        data["selection"]["activation_ops"] = list(self.selection.activation_ops)
        data.pop("protection")
        kv_cache = data.pop("kv_cache")
        if kv_cache is not None:  # recorded under the target's name, where targeted
            data["kv-cache"] = kv_cache
        if self.protection.masks:  # recorded where given (results without it stay comparable)
            data["protection"] = self.protection.to_json()
        return data

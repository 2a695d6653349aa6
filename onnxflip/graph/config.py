"""What an injection is: the storage format, a fault model per target class, the site selection.

The fault model is :class:`onnxflip.faults.FaultModel`; ``InjectionConfig.build``
gives one fault model to the chosen target classes (activations and
parameters each with their randomness), for the command line and a trial's
settings alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace

from onnxflip.errors import OnnxflipError
from onnxflip.faults import FaultModel
from onnxflip.graph.formats import COMPUTES
from onnxflip.graph.sites import DEFAULT_TARGETS, PER_SAMPLE_TARGETS, TARGETS, Selection
from onnxflip.protection import Protection

__all__ = ["InjectionConfig", "control_input_name", "counts_output_name"]


def control_input_name(target: str, what: str) -> str:
    """Graph input that sets ``what`` (p01, p10, seed, s0, s1 or stuck_seed) for a target class."""
    return f"onnxflip_{target}_{what}"


def counts_output_name(target: str) -> str:
    """Graph output with the word counts (corrected, detected, silent) of a target class protected by ECC."""
    return f"onnxflip_{target}_counts"


@dataclass(frozen=True)
class InjectionConfig:
    """What to inject: the storage format, the fault model per target class, the site selection."""

    format: str = "float32"
    compute: str | None = "native"  # how the format computes (formats.COMPUTES); None: the model's own
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
        compute: str | None = "native",
        targets: Iterable[str] = DEFAULT_TARGETS,
        fault: FaultModel | None = None,
        activation_randomness: str = "per_run",
        parameter_randomness: str = "fixed",
        selection: Selection | None = None,
        fold_batchnorm: bool = True,
        protection: Protection | None = None,
    ) -> InjectionConfig:
        """``fault`` (default: no faults) for each chosen target class, with the activations' or the parameters'
        randomness."""
        targets = tuple(targets)
        fault = fault or FaultModel()
        unknown = set(targets) - set(TARGETS)
        if unknown:
            raise OnnxflipError(f"unknown target(s) {', '.join(sorted(unknown))}; choose from {', '.join(TARGETS)}")

        def for_target(target: str) -> FaultModel | None:
            if target not in targets:
                return None
            randomness = activation_randomness if target in PER_SAMPLE_TARGETS else parameter_randomness
            return fault if fault.randomness == randomness else replace(fault, randomness=randomness)

        return cls(format=format, compute=compute, activations=for_target("activations"), weights=for_target("weights"),
                   biases=for_target("biases"), qparams=for_target("qparams"), kv_cache=for_target("kv-cache"),
                   selection=selection or Selection(), fold_batchnorm=fold_batchnorm,
                   protection=protection or Protection())

    def __post_init__(self) -> None:
        if self.compute is not None and self.compute not in COMPUTES:
            raise OnnxflipError(f"compute must be one of {', '.join(COMPUTES)}, not {self.compute!r}")

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

    @classmethod
    def from_json(cls, data: dict) -> InjectionConfig:
        """The configuration ``to_json`` wrote (fields a record written before them lacks take their defaults)."""
        known = {f.name for f in fields(FaultModel)}

        def fault(target: str) -> FaultModel | None:
            values = data.get(target)
            return None if values is None else FaultModel(**{k: v for k, v in values.items() if k in known})

        selection = dict(data.get("selection") or {})
        if "activation_ops" in selection:
            selection["activation_ops"] = tuple(selection["activation_ops"])
        protection = Protection.of_masks([(site, int(mask, 16)) for site, mask in (data.get("protection") or {}).items()])
        # A record written before the compute was recorded: its float16, bfloat16 and float64 were emulated.
        compute = data.get("compute", "native" if data["format"] in ("float32", "int8") else "float32")
        return cls(format=data["format"], compute=compute, activations=fault("activations"), weights=fault("weights"),
                   biases=fault("biases"), qparams=fault("qparams"), kv_cache=fault("kv-cache"),
                   selection=Selection(**selection), fold_batchnorm=data.get("fold_batchnorm", True),
                   protection=protection)

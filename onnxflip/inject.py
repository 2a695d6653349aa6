"""Insert FlipBits where a model stores values, in the chosen storage format.

The rewrite, for each site (see :mod:`onnxflip.sites`)::

    Relu(x)                -> FlipBits(Relu(x), p01, p10, seed)            (float32)
    Relu(x)                -> Cast<f32>(FlipBits(Cast<fmt>(Relu(x)), ...))  (float16, bfloat16, float64)
    Conv(x, W, B)          -> Conv(x, FlipBits(W, ...), FlipBits(B, ...))
    Conv(x, DQ(Wq), DQ(Bq)) -> Conv(x, DQ(FlipBits(Wq, ...)), DQ(FlipBits(Bq, ...)))   (int8)
    DQ(Q(y))               -> DQ(FlipBits(Q(y), ...))                        (int8)

int8 graphs are then written in the form ONNX Runtime runs them in, with the
same flips (uint8 activations, channels-last integer ops: :mod:`onnxflip.qlinear`).

The probabilities and seed of each target class are graph inputs with
default values (initializers that are also inputs), named
``onnxflip_<target>_p01``, ``onnxflip_<target>_p10`` and
``onnxflip_<target>_seed``, so one ONNX Runtime session serves any sweep;
they are the only place the nodes take them from (no p01/p10/seed attribute).
The settings are recorded as JSON under the ``onnxflip.injection`` metadata
key; a model that carries it is refused (inject the original model again).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from onnxflip.bits import field_mask, mask_to_attribute
from onnxflip.errors import OnnxflipError
from onnxflip.fold import fold_batchnorm
from onnxflip.formats import StorageFormat, is_qdq, require_format_fits, storage_format
from onnxflip.qlinear import keep_integer_kernels
from onnxflip.runtime.contract import DOMAIN, NONFINITE_POLICIES, RANDOMNESS, element_type
from onnxflip.runtime.flip import resolve_probabilities
from onnxflip.sites import TARGETS, Selection, Site, find_sites

__all__ = [
    "METADATA_KEY",
    "FaultModel",
    "InjectionConfig",
    "InsertFlipBitsPass",
    "control_input_name",
    "convert_format",
    "insert_flipbits",
    "plan_sites",
]

logger = logging.getLogger(__name__)

METADATA_KEY = "onnxflip.injection"


def control_input_name(target: str, what: str) -> str:
    """Graph input that sets ``what`` (p01, p10 or seed) for a target class."""
    return f"onnxflip_{target}_{what}"


@dataclass(frozen=True)
class FaultModel:
    """How the bits of one target class flip."""

    p01: float = 0.0
    p10: float = 0.0
    bits: str | int = "all"
    seed: int = 0
    randomness: str = "fixed"
    nonfinite: str = "keep"

    @classmethod
    def symmetric(cls, p: float, **kwargs) -> FaultModel:
        return cls(p01=p, p10=p, **kwargs)

    def __post_init__(self) -> None:
        resolve_probabilities(None, self.p01, self.p10)
        if self.randomness not in RANDOMNESS:
            raise OnnxflipError(f"randomness must be one of {', '.join(RANDOMNESS)}, not {self.randomness!r}")
        if self.nonfinite not in NONFINITE_POLICIES:
            raise OnnxflipError(f"nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, not {self.nonfinite!r}")


@dataclass(frozen=True)
class InjectionConfig:
    """What to inject: the storage format, the fault model per target class, the site selection."""

    format: str = "float32"
    activations: FaultModel | None = field(default_factory=lambda: FaultModel(randomness="per_run"))
    weights: FaultModel | None = field(default_factory=FaultModel)
    biases: FaultModel | None = field(default_factory=FaultModel)
    selection: Selection = field(default_factory=Selection)
    fold_batchnorm: bool = True

    def fault_model(self, target: str) -> FaultModel | None:
        return getattr(self, target)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(t for t in TARGETS if self.fault_model(t) is not None)

    def to_json(self) -> dict:
        data = asdict(self)
        data["selection"]["activation_ops"] = list(self.selection.activation_ops)
        return data


def _stored_dtype(site: Site, fmt: StorageFormat) -> ir.DataType:
    if fmt.emulated:
        return fmt.dtype
    return site.value.dtype


def plan_sites(model: ir.Model, config: InjectionConfig) -> tuple[ir.Model, list[Site]]:
    """A prepared copy of the model (BN folded, format applied, shapes inferred) and its sites."""
    if METADATA_KEY in model.metadata_props or any(n.domain == DOMAIN for n in model.graph):
        raise OnnxflipError("the model is already injected; inject the original model instead")
    fmt = storage_format(config.format)
    require_format_fits(model, fmt)
    prepared = model.clone()
    if config.fold_batchnorm:
        fold_batchnorm(prepared)
    prepared = ShapeInferencePass()(prepared).model
    sites = find_sites(prepared, targets=config.targets, selection=config.selection, qdq=is_qdq(prepared))
    for site in sites:
        site.stored_dtype = _stored_dtype(site, fmt)
        try:
            element_type(int(site.stored_dtype))
        except OnnxflipError:
            raise OnnxflipError(f"site {site.name} holds {site.stored_dtype.name}, which FlipBits does not flip") from None
    return prepared, sites


class InsertFlipBitsPass(ir.passes.InPlacePass):
    """Insert FlipBits at the given sites of a prepared model (see :func:`plan_sites`)."""

    def __init__(self, config: InjectionConfig, sites: list[Site], *, with_flips: bool = True) -> None:
        super().__init__()
        self.config = config
        self.sites = sites
        self.fmt = storage_format(config.format)
        self.with_flips = with_flips

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        controls = {t: self._add_controls(graph, t) for t in self.config.targets} if self.with_flips else {}
        for stream, site in enumerate(self.sites):
            self._insert(graph, site, controls.get(site.target), stream)
        graph.sort()
        if self.with_flips:
            model.opset_imports[DOMAIN] = 1
            model.metadata_props[METADATA_KEY] = json.dumps(
                {"config": self.config.to_json(), "sites": [self.describe(s) for s in self.sites]}
            )
        return ir.passes.PassResult(model, modified=bool(self.sites))

    def _add_controls(self, graph: ir.Graph, target: str) -> tuple[ir.Value, ir.Value, ir.Value]:
        fault = self.config.fault_model(target)
        values = []
        for what, array in (
            ("p01", np.array(fault.p01, dtype=np.float32)),
            ("p10", np.array(fault.p10, dtype=np.float32)),
            ("seed", np.array(fault.seed, dtype=np.int64)),
        ):
            name = control_input_name(target, what)
            value = ir.Value(name=name, shape=ir.Shape([]), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                             const_value=ir.tensor(array, name=name))
            graph.inputs.append(value)
            graph.register_initializer(value)
            values.append(value)
        return tuple(values)

    def _mask(self, site: Site) -> int:
        etype = element_type(int(site.stored_dtype))
        return field_mask(etype, self.config.fault_model(site.target).bits)

    def describe(self, site: Site) -> dict:
        etype = element_type(int(site.stored_dtype))
        return {
            "tensor": site.name,
            "target": site.target,
            "dtype": etype.name,
            "elements": site.elements(),
            "bits": etype.width,
            "mask": hex(self._mask(site)),
        }

    def _flipbits_node(self, site: Site, source: ir.Value, controls, stream: int) -> ir.Node:
        fault = self.config.fault_model(site.target)
        node = ir.node(
            "FlipBits",
            [source, *controls],
            {  # p01, p10 and seed are the control inputs only: an input takes precedence over an attribute
                "stream": stream,
                "bitmask": mask_to_attribute(self._mask(site)),
                "randomness": fault.randomness,
                "nonfinite": fault.nonfinite,
            },
            domain=DOMAIN,
            name=f"onnxflip/{site.target}/{site.name}",
        )
        out = node.outputs[0]
        out.name = f"{site.name}_flipped"
        out.dtype = source.dtype
        out.shape = source.shape
        return node

    def _insert(self, graph: ir.Graph, site: Site, controls, stream: int) -> None:
        value = site.value
        uses = list(value.uses())
        nodes: list[ir.Node] = []
        source = value
        if site.stored_dtype != value.dtype:
            source = self._stored_copy(graph, site, nodes)
        result = source
        if self.with_flips:
            flip = self._flipbits_node(site, source, controls, stream)
            nodes.append(flip)
            result = flip.outputs[0]
        if result.dtype != value.dtype:
            back = ir.node("Cast", [result], {"to": int(value.dtype)}, name=f"onnxflip/cast_back/{site.name}")
            back.outputs[0].name = f"{site.name}_stored_{value.dtype.name.lower()}"
            back.outputs[0].dtype = value.dtype
            back.outputs[0].shape = value.shape
            nodes.append(back)
            result = back.outputs[0]
        if not nodes:
            return
        graph.extend(nodes)
        for user, index in uses:
            user.replace_input_with(index, result)
        if value.is_graph_output():
            self._take_over_output(graph, value, result)
        if value.is_initializer() and not value.uses() and site.stored_dtype != value.dtype:
            graph.initializers.pop(value.name)

    def _stored_copy(self, graph: ir.Graph, site: Site, nodes: list[ir.Node]) -> ir.Value:
        """The value in the storage format: a converted initializer, or a Cast of an activation."""
        value = site.value
        if value.is_initializer():
            array = value.const_value.numpy().astype(self.fmt.numpy_dtype)
            name = f"{value.name}_{self.fmt.name}"
            stored = ir.Value(name=name, shape=value.shape, type=ir.TensorType(self.fmt.dtype),
                              const_value=ir.tensor(array, dtype=self.fmt.dtype, name=name))
            graph.register_initializer(stored)
            return stored
        cast = ir.node("Cast", [value], {"to": int(self.fmt.dtype)}, name=f"onnxflip/store/{site.name}")
        cast.outputs[0].name = f"{site.name}_{self.fmt.name}"
        cast.outputs[0].dtype = self.fmt.dtype
        cast.outputs[0].shape = value.shape
        nodes.append(cast)
        return cast.outputs[0]

    @staticmethod
    def _take_over_output(graph: ir.Graph, value: ir.Value, result: ir.Value) -> None:
        """Keep the graph output's name: the flipped value takes it, the clean one is renamed."""
        name = value.name
        value.name = f"{name}_clean"
        result.name = name
        for i, out in enumerate(graph.outputs):
            if out is value:
                graph.outputs[i] = result


def insert_flipbits(model: ir.Model, *, config: InjectionConfig = InjectionConfig()) -> ir.Model:
    """A copy of ``model`` with FlipBits at every selected site; ``model`` is not changed.

    Raises OnnxflipError when no site matches the selection.
    """
    prepared, sites = plan_sites(model, config)
    if not sites:
        raise OnnxflipError(
            f"no site matches the selection (targets {', '.join(config.targets) or 'none'}, format {config.format})"
        )
    result = InsertFlipBitsPass(config, sites)(prepared).model
    logger.info("inserted FlipBits at %d sites", len(sites))
    if config.format == "int8":  # the same flips, on the tensors ONNX Runtime's integer kernels read
        result = keep_integer_kernels(result)
    return result


def convert_format(model: ir.Model, *, format: str, selection: Selection | None = None) -> ir.Model:
    """The clean model in a storage format: what an injected model computes at p = 0.

    float16, bfloat16 and float64 round every stored value (the sites of all
    three target classes) through the format; float32 only folds BatchNorm.
    The same site logic as :func:`insert_flipbits`.
    """
    if format == "int8":
        raise OnnxflipError("int8 models come from `onnxflip quantize`, not from convert")
    config = InjectionConfig(format=format, selection=selection or Selection())
    prepared, sites = plan_sites(model, config)
    result = InsertFlipBitsPass(config, sites, with_flips=False)(prepared).model
    result.metadata_props["onnxflip.format"] = format
    return result

"""Turn FlipBits on fixed parameters into constants, and drop FlipBits that cannot flip, for one trial.

    FlipBits(W, p01, p10, seed)   (W an initializer, randomness "fixed")
        -> W'   where W' = flip_bits(W, p01, p10, seed, stream, mask)
        (and its word counts, with ECC: a constant too)
    FlipBits(x, 0, 0, seed, 0, 0) (any x, its p01, p10, s0 and s1 given for the trial, no counts read)
        -> x

p01, p10, seed, s0, s1 and stuck_seed come from the node's inputs (fed
values, else their defaults), as the operator reads them; the rewriter
writes no such attribute.  A FlipBits whose control input has no default
and is not given stays.

The flipped constants are bit for bit what the FlipBits node would produce,
but ONNX Runtime then sees constant weights again and keeps the optimisations
that need them (prepacked GEMM, NCHWc convolutions, QDQ fusion into
QLinearConv).  Costs one flip of every parameter per trial instead of per run.

A FlipBits whose flip and stuck-at probabilities are all 0 is the identity
and is removed when they are fixed for the trial (given in ``values``, or constants; a
default that a run may still override by feeding the input is not fixed):
a trial at p = 0 then runs the graph without FlipBits.  In an int8 QDQ
graph this matters where a tensor stayed int8
(:mod:`~onnxflip.graph.passes.qlinear` leaves ECC words and ops it does
not know so): a FlipBits between QuantizeLinear and DequantizeLinear keeps
ONNX Runtime from fusing them into QLinearConv, so the graph would compute
in float (dequantise, float Conv, requantise), which rounds differently from
the integer kernel.  A node whose word counts (ECC) are
read is not the identity even then: a fixed parameter's is materialised (its
counts a constant), any other stays.  A parameter that is a graph input
(overridable) is never frozen.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from onnxflip.errors import OnnxflipError
from onnxflip.faults import WordCounts
from onnxflip.graph.sites import all_nodes
from onnxflip.runtime.contract import ATTRIBUTE_DEFAULTS, INPUT_NAMES, element_type, is_flipbits
from onnxflip.runtime.flip import flip_bits

__all__ = ["MaterializeParametersPass", "materialize_parameters", "parameter_flips"]


_INPUT_INDEX = {name: index for index, name in enumerate(INPUT_NAMES)}  # the operator's inputs, by name
_RATE_INPUTS = ("p01", "p10", "s0", "s1")
_STUCK_INPUTS = ("s0", "s1")  # optional: a node without them has no stuck cells
_SOURCE = INPUT_NAMES[0]  # the values that flip


def _input(node: ir.Node, name: str) -> ir.Value | None:
    """The node's input that the operator's contract names ``name``; None where the node lacks it."""
    index = _INPUT_INDEX[name]
    return node.inputs[index] if index < len(node.inputs) else None


def _control(node: ir.Node, name: str, values: Mapping[str, np.ndarray]) -> float | int | None:
    """A control input's value: fed in ``values``, else its default; None when a run must feed it (no default)."""
    value = _input(node, name)
    if value is None:
        raise OnnxflipError(f"FlipBits node {node.name!r} has no {name} input; inject the model with onnxflip")
    if value.name in values:
        return np.asarray(values[value.name]).item()
    return value.const_value.numpy().item() if value.const_value is not None else None


def _optional_control(node: ir.Node, name: str, values: Mapping[str, np.ndarray]) -> int | None:
    """An optional scalar control (stuck_seed): its value, or None where it is absent or empty."""
    value = _input(node, name)
    if value is None:
        return None
    array = np.asarray(values[value.name]) if value.name in values else (
        value.const_value.numpy() if value.const_value is not None else np.zeros(0))
    return int(array.reshape(-1)[0]) if array.size else None


def _attribute(node: ir.Node, name: str):
    """An attribute of the node, or the operator's default for it."""
    attr = node.attributes.get(name)
    return attr.value if attr is not None else ATTRIBUTE_DEFAULTS[name]


def _rate(node: ir.Node, name: str, values: Mapping[str, np.ndarray]) -> float | None:
    """A probability control as the kernel reads it (float32); 0 for a stuck-at input the node lacks."""
    if name in _STUCK_INPUTS and _input(node, name) is None:
        return 0.0
    value = _control(node, name, values)
    return None if value is None else float(np.float32(value))


def _rates(node: ir.Node, values: Mapping[str, np.ndarray]) -> tuple[float, float, float, float] | None:
    """(p01, p10, s0, s1) as the node would read them, or None when one comes from a graph input without a default."""
    rates = tuple(_rate(node, name, values) for name in _RATE_INPUTS)
    return None if None in rates else rates


def _flipped(node: ir.Node, rates: tuple[float, float, float, float], seed: int,
             values: Mapping[str, np.ndarray]) -> tuple[np.ndarray, WordCounts]:
    p01, p10, s0, s1 = rates
    source = _input(node, _SOURCE).const_value.numpy()
    width = element_type(source.dtype).width
    mask = _attribute(node, "bitmask")
    return flip_bits(
        source,
        p01=p01,
        p10=p10,
        seed=seed,
        stream=int(_attribute(node, "stream")),
        bits="all" if mask is None else mask & ((1 << width) - 1),
        nonfinite=_attribute(node, "nonfinite"),
        s0=s0,
        s1=s1,
        stuck_seed=_optional_control(node, "stuck_seed", values),
        ecc=_attribute(node, "ecc"),
        on_detected=_attribute(node, "on_detected"),
        return_counts=True,
    )


def _replace_with_constant(graph: ir.Graph, value: ir.Value, array: np.ndarray) -> None:
    """Replace every use of ``value`` (and its place among the graph outputs) by a constant of ``array``."""
    name = value.name
    value.name = f"{name}_computed"
    constant = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                        const_value=ir.tensor(array, name=name))
    graph.register_initializer(constant)
    value.replace_all_uses_with(constant, replace_graph_outputs=True)


def _counts_read(node: ir.Node) -> bool:
    """Whether the node's word counts output (ECC) exists and something reads it."""
    if len(node.outputs) < 2:
        return False
    counts = node.outputs[1]
    return bool(counts.uses()) or counts.is_graph_output()


def _is_fixed_parameter(node: ir.Node) -> bool:
    source = _input(node, _SOURCE)
    return (
        _attribute(node, "randomness") == "fixed"
        and source.is_initializer()
        and not source.is_graph_input()
        and source.const_value is not None
    )


class MaterializeParametersPass(ir.passes.InPlacePass):
    """Replace fixed parameter flips by constants and remove FlipBits that cannot change a bit (see the module docstring).

    ``values`` gives control inputs (``onnxflip_weights_seed`` ...) as they
    would be fed to a session; for fixed parameters, missing ones take the
    model's defaults.  Give the activations' p01, p10, s0 and s1 too when the
    trial runs at fixed probabilities, so that FlipBits at p = 0 are removed.
    """

    def __init__(self, values: Mapping[str, np.ndarray] | None = None) -> None:
        super().__init__()
        self.values = dict(values or {})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in list(all_nodes(model.graph)):
            if is_flipbits(node):
                modified |= self._try_replace(node)
        if modified:
            for name, value in list(model.graph.initializers.items()):
                if not value.uses() and not value.is_graph_input() and not value.is_graph_output():
                    model.graph.initializers.pop(name)
        return ir.passes.PassResult(model, modified=modified)

    def _try_replace(self, node: ir.Node) -> bool:
        rates = _rates(node, self.values)
        out = node.outputs[0]
        if rates is None or out.is_graph_output():
            return False
        source = _input(node, _SOURCE)
        identity = not any(rates) and not _counts_read(node)
        if _is_fixed_parameter(node) and not identity:
            seed = _control(node, "seed", self.values)
            if seed is None:
                return False
            name = f"{out.name}_trial"
            flipped, counts = _flipped(node, rates, int(seed), self.values)
            replacement = ir.Value(name=name, shape=out.shape, type=out.type,
                                   const_value=ir.tensor(flipped, dtype=out.dtype, name=name))
            source.graph.register_initializer(replacement)
            if len(node.outputs) > 1:  # the word counts, constant too
                _replace_with_constant(node.graph, node.outputs[1], counts.as_array())
        elif identity and (_is_fixed_parameter(node) or self._given(node)):
            replacement = source
        else:
            return False
        out.replace_all_uses_with(replacement)
        node.graph.remove(node, safe=True)
        return True

    def _given(self, node: ir.Node) -> bool:
        """Whether p01, p10, s0 and s1 are fixed for this trial: given in ``values``, or not inputs a run could feed."""
        controls = [v for v in (_input(node, name) for name in _RATE_INPUTS) if v is not None]
        return all(v.name in self.values or not v.is_graph_input() for v in controls)


def materialize_parameters(model: ir.Model, values: Mapping[str, np.ndarray] | None = None) -> ir.Model:
    """A copy of an injected model whose fixed parameter flips are constants; ``model`` is not changed."""
    return MaterializeParametersPass(values)(model.clone()).model


def parameter_flips(model: ir.Model, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """The constants :func:`materialize_parameters` binds for the fixed parameter flips, by name.

    For a caller that materialises once and then only binds these arrays
    (the trials of a campaign).  None when some fixed parameter's word
    counts are read (ECC), whose constants this does not compute.
    """
    flips = {}
    for node in all_nodes(model.graph):
        if not is_flipbits(node) or not _is_fixed_parameter(node):
            continue
        rates = _rates(node, values)
        seed = _control(node, "seed", values)
        if rates is None or seed is None or _counts_read(node):
            return None
        if any(rates):
            flips[f"{node.outputs[0].name}_trial"] = _flipped(node, rates, int(seed), values)[0]
    return flips

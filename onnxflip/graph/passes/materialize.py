"""Turn FlipBits on fixed parameters into constants, and drop FlipBits that cannot flip, for one trial.

    FlipBits(W, p01, p10, seed)   (W an initializer, randomness "fixed")
        -> W'   where W' = flip_bits(W, p01, p10, seed, stream, mask)
    FlipBits(x, 0, 0, seed)       (any x, its p01 and p10 given for the trial)
        -> x

p01, p10 and seed come from the node's inputs (fed values, else their
defaults), as the operator reads them; the rewriter writes no such attribute.
A FlipBits whose control input has no default and is not given stays.

The flipped constants are bit for bit what the FlipBits node would produce,
but ONNX Runtime then sees constant weights again and keeps the optimisations
that need them (prepacked GEMM, NCHWc convolutions, QDQ fusion into
QLinearConv).  Costs one flip of every parameter per trial instead of per run.

A FlipBits whose probabilities are both 0 is the identity and is removed
when they are fixed for the trial (given in ``values``, or constants; a
default that a run may still override by feeding the input is not fixed):
in an int8 QDQ graph, a FlipBits between QuantizeLinear and
DequantizeLinear keeps ONNX Runtime from converting the pair to uint8 and
fusing it into QLinearConv, so the graph would compute in float (dequantise,
float Conv, requantise), which rounds differently from the integer kernel
the clean model runs.  Removing the identity flips makes p = 0 compute
exactly what the clean model computes.  A parameter that is a graph input
(overridable) is never frozen.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from onnxflip.errors import OnnxflipError
from onnxflip.graph.sites import all_nodes
from onnxflip.runtime.contract import ATTRIBUTE_DEFAULTS, DOMAIN, INPUT_NAMES, element_type
from onnxflip.runtime.flip import flip_bits

__all__ = ["MaterializeParametersPass", "materialize_parameters"]


def _control(node: ir.Node, index: int, values: Mapping[str, np.ndarray]) -> float | int | None:
    """A control input's value: fed in ``values``, else its default; None when a run must feed it (no default)."""
    value = node.inputs[index] if index < len(node.inputs) else None
    if value is None:
        raise OnnxflipError(f"FlipBits node {node.name!r} has no {INPUT_NAMES[index]} input; "
                            "inject the model with onnxflip")
    if value.name in values:
        return np.asarray(values[value.name]).item()
    return value.const_value.numpy().item() if value.const_value is not None else None


def _attribute(node: ir.Node, name: str):
    """An attribute of the node, or the operator's default for it."""
    attr = node.attributes.get(name)
    return attr.value if attr is not None else ATTRIBUTE_DEFAULTS[name]


def _probabilities(node: ir.Node, values: Mapping[str, np.ndarray]) -> tuple[float, float] | None:
    """(p01, p10) as the node would read them, or None when one comes from a graph input without a default."""
    p01, p10 = _control(node, 1, values), _control(node, 2, values)
    if p01 is None or p10 is None:
        return None
    return float(np.float32(p01)), float(np.float32(p10))


def _flipped(node: ir.Node, p01: float, p10: float, seed: int) -> np.ndarray:
    source = node.inputs[0].const_value.numpy()
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
    )


def _is_fixed_parameter(node: ir.Node) -> bool:
    source = node.inputs[0]
    return (
        _attribute(node, "randomness") == "fixed"
        and source.is_initializer()
        and not source.is_graph_input()
        and source.const_value is not None
    )


class MaterializeParametersPass(ir.passes.InPlacePass):
    """Replace fixed parameter flips by constants and remove FlipBits with p01 = p10 = 0 (see the module docstring).

    ``values`` gives control inputs (``onnxflip_weights_seed`` ...) as they
    would be fed to a session; for fixed parameters, missing ones take the
    model's defaults.  Give the activations' p01 and p10 too when the trial
    runs at fixed probabilities, so that FlipBits at p = 0 are removed.
    """

    def __init__(self, values: Mapping[str, np.ndarray] | None = None) -> None:
        super().__init__()
        self.values = dict(values or {})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in list(all_nodes(model.graph)):
            if node.domain == DOMAIN and node.op_type == "FlipBits":
                modified |= self._try_replace(node)
        if modified:
            for name, value in list(model.graph.initializers.items()):
                if not value.uses() and not value.is_graph_input() and not value.is_graph_output():
                    model.graph.initializers.pop(name)
        return ir.passes.PassResult(model, modified=modified)

    def _try_replace(self, node: ir.Node) -> bool:
        probabilities = _probabilities(node, self.values)
        out = node.outputs[0]
        if probabilities is None or out.is_graph_output():
            return False
        source = node.inputs[0]
        if _is_fixed_parameter(node) and probabilities != (0.0, 0.0):
            seed = _control(node, 3, self.values)
            if seed is None:
                return False
            name = f"{out.name}_trial"
            flipped = _flipped(node, *probabilities, int(seed))
            replacement = ir.Value(name=name, shape=out.shape, type=out.type,
                                   const_value=ir.tensor(flipped, dtype=out.dtype, name=name))
            source.graph.register_initializer(replacement)
        elif probabilities == (0.0, 0.0) and (_is_fixed_parameter(node) or self._given(node)):
            replacement = source
        else:
            return False
        out.replace_all_uses_with(replacement)
        node.graph.remove(node, safe=True)
        return True

    def _given(self, node: ir.Node) -> bool:
        """Whether p01 and p10 are fixed for this trial: given in ``values``, or not inputs a run could feed."""
        controls = [v for v in node.inputs[1:3] if v is not None]
        return all(v.name in self.values or not v.is_graph_input() for v in controls)


def materialize_parameters(model: ir.Model, values: Mapping[str, np.ndarray] | None = None) -> ir.Model:
    """A copy of an injected model whose fixed parameter flips are constants; ``model`` is not changed."""
    return MaterializeParametersPass(values)(model.clone()).model

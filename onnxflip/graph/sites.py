"""Where a model writes values to memory: the sites FlipBits is inserted at.

Three target classes:

* ``activations``: tensors a layer writes.  In a float graph, by default the
  outputs of activation functions (Softmax too), LayerNormalization and
  pooling layers, plus the graph outputs
  (the logits), so ``Conv -> Relu`` is one write, not two; or the outputs of
  chosen op types; or every intermediate float tensor.  In a QDQ graph, the
  outputs of QuantizeLinear.  Only values computed from some Conv, Gemm or
  MatMul count, so input preprocessing is never a target.
* ``weights``: weight initializers of Conv, ConvTranspose, Gemm and MatMul (in
  a QDQ graph, the int8 initializers their DequantizeLinear reads).
* ``biases``: bias initializers of Conv, ConvTranspose and Gemm, and of an
  Add that follows a MatMul (in a QDQ graph, the int32 quantised biases, or
  the float32 ones a model quantised with float biases keeps).

Sites are found in the main graph and in the bodies of ``If``, ``Loop`` and
``Scan`` nodes alike (onnx_ir walks subgraphs); an ``If`` or ``Loop`` whose
body computes a Conv, Gemm or MatMul counts as one for what lies downstream.
Their outputs pass on what a body stored: where a body output is a site, the
node's output is not one again (one write, one exposure).

``include``/``exclude`` regular expressions match a site's tensor name or the
name of the node that writes (or first reads) it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import onnx
import onnx_ir as ir

from onnxflip.errors import OnnxflipError

__all__ = [
    "COMPUTE_OPS",
    "DEFAULT_ACTIVATION_OPS",
    "TARGETS",
    "Selection",
    "Site",
    "all_nodes",
    "find_sites",
]

TARGETS = ("activations", "weights", "biases")
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
DEFAULT_ACTIVATION_OPS = (
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Gelu", "Softplus", "Mish", "Clip", "Softmax", "LayerNormalization", "MaxPool", "AveragePool",
    "GlobalAveragePool", "GlobalMaxPool",
)  # fmt: skip
_BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}


@dataclass(frozen=True)
class Selection:
    """Which tensors are sites, beyond the target classes."""

    activation_ops: tuple[str, ...] = DEFAULT_ACTIVATION_OPS
    every_intermediate: bool = False
    include: str | None = None
    exclude: str | None = None

    def __post_init__(self) -> None:
        unknown = [op for op in self.activation_ops if not onnx.defs.has(op)]
        if unknown:
            raise OnnxflipError(f"unknown ONNX op type(s) in the selection: {', '.join(unknown)}")
        for pattern in (self.include, self.exclude):
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise OnnxflipError(f"bad regular expression {pattern!r}: {exc}") from None


@dataclass
class Site:
    """One tensor FlipBits will act on.

    ``name`` is the tensor's name when the site was found (later passes may
    rename the value, e.g. when a graph output is taken over); ``stored`` is
    the value that holds it in the storage format, set by the pass that
    stores it (``value`` itself when stored as computed).
    """

    value: ir.Value
    target: str
    node_name: str
    stored_dtype: ir.DataType = field(default=ir.DataType.UNDEFINED)
    name: str = ""
    stored: ir.Value | None = None

    def __post_init__(self) -> None:
        self.name = self.name or self.value.name or ""

    def elements(self) -> int | None:
        """Elements in the tensor (per sample for activations with a symbolic batch)."""
        shape = self.value.shape
        if shape is None:
            return None
        dims = list(shape)
        if self.target == "activations" and dims and not isinstance(dims[0], int):
            dims = dims[1:]
        if not all(isinstance(d, int) for d in dims):
            return None
        return math.prod(dims)


def _matches(site: Site, selection: Selection) -> bool:
    names = (site.name, site.node_name)
    if selection.include and not any(re.search(selection.include, n or "") for n in names):
        return False
    return not (selection.exclude and any(re.search(selection.exclude, n or "") for n in names))


def all_nodes(graph: ir.Graph) -> Iterator[ir.Node]:
    """The nodes of a graph and of every subgraph (If, Loop, Scan bodies), a node before its bodies."""
    return iter(ir.traversal.RecursiveGraphIterator(graph))


def _subgraph_nodes(node: ir.Node) -> list[ir.Node]:
    nodes: list[ir.Node] = []
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            nodes += all_nodes(attr.value)
        elif attr.type == ir.AttributeType.GRAPHS:
            for body in attr.value:
                nodes += all_nodes(body)
    return nodes


def _downstream_of_compute(graph: ir.Graph) -> set[ir.Value]:
    """Values computed, directly or not, from a Conv, Gemm or MatMul (a body that computes one counts)."""
    reached: set[ir.Value] = set()
    for node in all_nodes(graph):
        body = _subgraph_nodes(node)
        if (
            node.op_type in COMPUTE_OPS
            or any(v in reached for v in node.inputs if v is not None)
            or any(n.op_type in COMPUTE_OPS or any(v in reached for v in n.inputs if v is not None) for n in body)
        ):
            reached.update(node.outputs)
    return reached


def _is_initializer(value: ir.Value | None) -> bool:
    return value is not None and value.is_initializer() and value.const_value is not None


def _parameter_sites(graph: ir.Graph, qdq: bool) -> Iterable[Site]:
    seen: set[ir.Value] = set()
    for node in all_nodes(graph):
        if node.op_type not in COMPUTE_OPS:
            continue
        roles = {1: "weights"}
        if node.op_type == "MatMul":
            roles = {0: "weights", 1: "weights"}
        if node.op_type in _BIAS_INPUT:
            roles[_BIAS_INPUT[node.op_type]] = "biases"
        if node.op_type == "MatMul" and len(node.outputs[0].uses()) == 1:
            add, _ = next(iter(node.outputs[0].uses()))
            if add.op_type == "Add":
                for inp in add.inputs:
                    stored = _stored_parameter(inp, qdq)
                    if stored is not None and stored not in seen:
                        seen.add(stored)
                        yield Site(stored, "biases", add.name or "")
        for index, target in roles.items():
            if index >= len(node.inputs):
                continue
            stored = _stored_parameter(node.inputs[index], qdq)
            if stored is not None and stored not in seen:
                seen.add(stored)
                yield Site(stored, target, node.name or "")


def _stored_parameter(value: ir.Value | None, qdq: bool) -> ir.Value | None:
    """The initializer that holds a compute op's parameter, looking through DequantizeLinear in QDQ graphs
    (a QDQ graph may also keep a parameter float, such as a float32 bias: then that initializer is stored)."""
    if value is None:
        return None
    if qdq:
        producer = value.producer()
        if producer is not None and producer.op_type != "DequantizeLinear":
            return None
        if producer is not None:
            value = producer.inputs[0]
    return value if _is_initializer(value) else None


_VIEW_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})


_CONTROL_FLOW = ("If", "Loop", "Scan")


def _requantises_a_view(quantize: ir.Node) -> bool:
    """A QuantizeLinear of a reshaped tensor re-stores data already stored: not a new write."""
    producer = quantize.inputs[0].producer() if quantize.inputs[0] is not None else None
    return producer is not None and producer.op_type in _VIEW_OPS


def _body_outputs(node: ir.Node, index: int) -> list[ir.Value]:
    """The body outputs that output ``index`` of an If, Loop or Scan node passes on (its value is one of them)."""
    if node.op_type == "If":
        return [node.attributes[name].value.outputs[index] for name in ("then_branch", "else_branch")
                if name in node.attributes]
    body = node.attributes["body"].value
    position = index + (1 if node.op_type == "Loop" else 0)  # a Loop body's first output is its condition
    return [body.outputs[position]] if position < len(body.outputs) else []


def _passed_on_by_control_flow(chosen: dict[ir.Value, None], downstream: set[ir.Value]) -> list[ir.Value]:
    """The chosen values, where an If, Loop or Scan output that only passes on what a chosen body output
    stored is replaced by its body outputs (one write, one exposure): the branch or body outputs that are
    not chosen yet become sites in its place, so that every path through it is exposed once."""
    sites = dict(chosen)
    changed = True
    while changed:
        changed = False
        for value in list(sites):
            producer = value.producer()
            if producer is None or producer.op_type not in _CONTROL_FLOW:
                continue
            inner = _body_outputs(producer, value.index())
            if not any(v in sites for v in inner):
                continue
            del sites[value]
            sites.update(dict.fromkeys(v for v in inner if v in downstream and v.dtype == value.dtype))
            changed = True
    return list(sites)


def _activation_sites(graph: ir.Graph, selection: Selection, qdq: bool, compute_dtype: ir.DataType) -> Iterable[Site]:
    downstream = _downstream_of_compute(graph)
    chosen: list[ir.Value] = []
    for node in all_nodes(graph):
        if qdq:
            wanted = node.op_type == "QuantizeLinear" and not _requantises_a_view(node)
        elif selection.every_intermediate:
            wanted = node.op_type not in ("Constant", "Cast")
        else:
            wanted = node.op_type in selection.activation_ops
        if not wanted:
            continue
        for out in node.outputs:
            if out in downstream and (qdq or out.dtype == compute_dtype):
                chosen.append(out)
    if not qdq:
        chosen += [out for out in graph.outputs if out in downstream and out.dtype == compute_dtype]
    for value in _passed_on_by_control_flow(dict.fromkeys(chosen), downstream):
        producer = value.producer()
        yield Site(value, "activations", producer.name if producer is not None else "")


def find_sites(
    model: ir.Model,
    *,
    targets: Iterable[str] = TARGETS,
    selection: Selection = Selection(),
    qdq: bool = False,
    compute_dtype: ir.DataType = ir.DataType.FLOAT,
) -> list[Site]:
    """The sites of the requested target classes, in graph order (activations last)."""
    wanted = set(targets)
    unknown = wanted - set(TARGETS)
    if unknown:
        raise OnnxflipError(f"unknown target(s) {', '.join(sorted(unknown))}; choose from {', '.join(TARGETS)}")
    graph = model.graph
    sites = [s for s in _parameter_sites(graph, qdq) if s.target in wanted]
    if "activations" in wanted:
        sites += list(_activation_sites(graph, selection, qdq, compute_dtype))
    sites = [s for s in sites if _matches(s, selection)]
    for site in sites:
        site.stored_dtype = site.value.dtype or ir.DataType.UNDEFINED
    return sites

"""Where a model writes values to memory: the sites FlipBits is inserted at.

Five target classes (the first three by default):

* ``activations``: tensors a layer writes.  In a float graph, by default the
  outputs of activation functions (Softmax too), LayerNormalization, pooling
  and recurrent layers, plus the graph outputs
  (the logits), so ``Conv -> Relu`` is one write, not two; or the outputs of
  chosen op types; or every intermediate float tensor.  In a QDQ graph, the
  outputs of QuantizeLinear; in a graph of integer operators (QOperator,
  dynamic quantisation), their int8/uint8 outputs besides the float ones.
  Only values computed from some Conv, Gemm, MatMul (in any quantised form)
  or embedding lookup count, so input preprocessing is never a target.
* ``kv-cache``: in a decoder export with past key values, the keys and
  values a run writes into its cache: the entries ``present.*`` appends to
  ``past_key_values.*`` (see :mod:`onnxflip.graph.cache`), one key and one
  value site per layer.  The ``present.*`` outputs themselves are never
  activation sites: their old entries a run only reads.
* ``weights``, ``biases`` and ``qparams``: the stored tensors of those roles
  (see :mod:`onnxflip.graph.stored`): every numeric parameter a node
  computes with, embedding tables and normalisation parameters included,
  found behind views, casts and DequantizeLinear; quantisation scales and
  zero points only when ``qparams`` is asked for.

Sites are found in the main graph and in the bodies of ``If``, ``Loop`` and
``Scan`` nodes alike (onnx_ir walks subgraphs); an ``If`` or ``Loop`` whose
body computes a Conv, Gemm or MatMul counts as one for what lies downstream.
Their outputs pass on what a body stored: where a body output is a site, the
node's output is not one again (one write, one exposure).

``include``/``exclude`` regular expressions match a site's tensor name or the
name of the node that writes (or first reads) it.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import onnx
import onnx_ir as ir

from onnxflip.errors import OnnxflipError
from onnxflip.graph.cache import cache_outputs, new_entries
from onnxflip.graph.stored import all_nodes, downstream_of_compute, quantised_form, stored_behind, stored_tensors

__all__ = [
    "DEFAULT_ACTIVATION_OPS",
    "DEFAULT_TARGETS",
    "PER_SAMPLE_TARGETS",
    "TARGETS",
    "Selection",
    "Site",
    "all_nodes",
    "find_sites",
]

logger = logging.getLogger(__name__)

TARGETS = ("activations", "weights", "biases", "qparams", "kv-cache")
DEFAULT_TARGETS = ("activations", "weights", "biases")  # quantisation parameters and the cache only when asked for
PER_SAMPLE_TARGETS = ("activations", "kv-cache")  # written by every run, per sample (the others: stored once)
_QUANTISED = frozenset({ir.DataType.INT8, ir.DataType.UINT8})
DEFAULT_ACTIVATION_OPS = (
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Gelu", "Softplus", "Mish", "Clip", "Softmax", "LayerNormalization", "MaxPool", "AveragePool",
    "GlobalAveragePool", "GlobalMaxPool", "LSTM", "GRU", "RNN",
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
        if self.target in PER_SAMPLE_TARGETS and dims and not isinstance(dims[0], int):
            dims = dims[1:]
        if not all(isinstance(d, int) for d in dims):
            return None
        return math.prod(dims)


def _matches(site: Site, selection: Selection) -> bool:
    names = (site.name, site.node_name)
    if selection.include and not any(re.search(selection.include, n or "") for n in names):
        return False
    return not (selection.exclude and any(re.search(selection.exclude, n or "") for n in names))


def _parameter_sites(graph: ir.Graph, wanted: set[str]) -> Iterable[Site]:
    """The stored tensors whose role is a wanted target, in the order the graph first reads them."""
    for stored in stored_tensors(graph):
        if stored.role in wanted and stored.value is not None:
            yield Site(stored.value, stored.role, stored.reader)


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


STORE_PREFIX = "onnxflip/store/"  # the name of the Cast that stores a value in an emulated format


def _wanted_outputs(node: ir.Node, selection: Selection, form: str | None,
                    compute_dtype: ir.DataType) -> list[ir.Value]:
    """The outputs of a node that are activation sites, if computed downstream of a compute op."""
    if form == "converted":  # the values are stored where convert cast them to the format
        return list(node.outputs) if node.op_type == "Cast" and (node.name or "").startswith(STORE_PREFIX) else []
    if form == "qdq":
        wanted = node.op_type == "QuantizeLinear" and not _requantises_a_view(node)
        return list(node.outputs) if wanted else []
    if form == "integer" and node.op_type not in _VIEW_OPS and node.outputs and node.outputs[0].dtype in _QUANTISED:
        return [node.outputs[0]]  # an integer operator's quantised output (not DynamicQuantizeLinear's zero point)
    if selection.every_intermediate:
        wanted = node.op_type not in ("Constant", "Cast")
    else:
        wanted = node.op_type in selection.activation_ops or _decomposed_as(node) in selection.activation_ops
    return [out for out in node.outputs if out.dtype == compute_dtype] if wanted else []


# --- activation functions and normalisations that an exporter wrote out in elementary ops ---------------


def _producer(value: ir.Value | None, *skip: str) -> ir.Node | None:
    """The node that computes a value, looking through the op types in ``skip`` (Cast, say)."""
    node = value.producer() if value is not None else None
    while node is not None and node.op_type in skip and node.inputs:
        node = node.inputs[0].producer() if node.inputs[0] is not None else None
    return node


def _reaches(node: ir.Node, op_type: str, depth: int) -> bool:
    """Whether ``op_type`` computes one of the node's inputs within ``depth`` steps of Mul, Add and Div."""
    for value in node.inputs:
        producer = _producer(value)
        if producer is None:
            continue
        if producer.op_type == op_type:
            return True
        if depth > 1 and producer.op_type in ("Mul", "Add", "Div") and _reaches(producer, op_type, depth - 1):
            return True
    return False


def _is_gelu_end(node: ir.Node) -> bool:
    """The last Mul of GELU written out (``x * 0.5 * (1 + Erf(x / sqrt 2))``, TorchScript before opset 20)."""
    if node.op_type != "Mul" or not _reaches(node, "Erf", 3):
        return False
    return not any(user.op_type == "Mul" and _reaches(user, "Erf", 3) for user, _ in node.outputs[0].uses())


def _is_normalised(value: ir.Value | None) -> bool:
    """Whether a value is divided by a square root (LayerNorm's (x - mean) / sqrt(var + eps)) or multiplied by
    its reciprocal (RMSNorm's x * 1 / sqrt(mean(x^2) + eps)), as exporters write them out before opset 17."""
    producer = _producer(value, "Cast")
    if producer is None:
        return False
    if producer.op_type == "Div":
        return (divisor := _producer(producer.inputs[1], "Cast")) is not None and divisor.op_type == "Sqrt"
    if producer.op_type == "Mul":
        return any((p := _producer(v, "Cast")) is not None and p.op_type == "Reciprocal" for v in producer.inputs)
    return False


def _scales_a_normalised_value(node: ir.Node) -> bool:
    if node.op_type != "Mul":
        return False
    stored = [stored_behind(v) is not None for v in node.inputs]
    return any(stored) and any(_is_normalised(v) for v, s in zip(node.inputs, stored) if not s)


def _is_norm_end(node: ir.Node) -> bool:
    """The last op of a normalisation written out: the shift's Add after the scale's Mul, or that Mul when no
    Add of a stored tensor follows."""
    if node.op_type == "Add":
        return any(_scales_a_normalised_value(p) for p in map(_producer, node.inputs) if p is not None) and any(
            stored_behind(v) is not None for v in node.inputs)
    if not _scales_a_normalised_value(node):
        return False
    return not any(user.op_type == "Add" and _is_norm_end(user) for user, _ in node.outputs[0].uses())


def _decomposed_as(node: ir.Node) -> str | None:
    """The op type a node ends when an exporter wrote that op out in elementary ops (Gelu, LayerNormalization)."""
    if _is_gelu_end(node):
        return "Gelu"
    return "LayerNormalization" if _is_norm_end(node) else None


def _view_source(value: ir.Value) -> ir.Value:
    """The value a view (Identity, Reshape, ...) passes on, through any chain of views: the same memory."""
    producer = value.producer()
    while producer is not None and producer.op_type in _VIEW_OPS and producer.inputs and producer.inputs[0] is not None:
        value = producer.inputs[0]
        producer = value.producer()
    return value


def _stored_output(value: ir.Value) -> ir.Value:
    """The value a graph output stores: the output itself, or what a Cast to the output's type read (a float16
    model whose outputs are cast to float32 stores its logits in float16)."""
    producer = value.producer()
    if producer is not None and producer.op_type == "Cast" and producer.inputs and producer.inputs[0] is not None:
        return producer.inputs[0]
    return value


def _activation_sites(graph: ir.Graph, selection: Selection, form: str | None,
                      compute_dtype: ir.DataType) -> Iterable[Site]:
    downstream = downstream_of_compute(graph)
    chosen = [out for node in all_nodes(graph) for out in _wanted_outputs(node, selection, form, compute_dtype)
              if out in downstream and (out.uses() or out.is_graph_output())]  # a value nothing reads is no site
    if form != "qdq":
        cache = cache_outputs(graph)  # the cache a run returns is read, not written, by the next: no activation
        chosen += [out for out in map(_stored_output, graph.outputs) if out in downstream and out.dtype == compute_dtype
                   and _view_source(out) not in chosen and out not in cache]
    for value in _passed_on_by_control_flow(dict.fromkeys(chosen), downstream):
        producer = value.producer()
        yield Site(value, "activations", producer.name if producer is not None else "")


def find_sites(
    model: ir.Model,
    *,
    targets: Iterable[str] = DEFAULT_TARGETS,
    selection: Selection = Selection(),
    compute_dtype: ir.DataType = ir.DataType.FLOAT,
    stored_casts: bool = False,
) -> list[Site]:
    """The sites of the requested target classes, in graph order (activations last); ``stored_casts``: the model
    stores its activations where its casts to an emulated format write them (a model ``convert`` wrote)."""
    wanted = set(targets)
    unknown = wanted - set(TARGETS)
    if unknown:
        raise OnnxflipError(f"unknown target(s) {', '.join(sorted(unknown))}; choose from {', '.join(TARGETS)}")
    graph = model.graph
    sites = list(_parameter_sites(graph, wanted))
    kv = [Site(value, "kv-cache", present) for value, _, present in new_entries(graph)] \
        if "kv-cache" in wanted else []
    if "kv-cache" in wanted and not kv:
        message = ("the model has no key-value cache for --targets kv-cache (past_key_values.* inputs and present.* "
                   "outputs, as optimum lays out decoders with past)")
        if wanted == {"kv-cache"}:
            raise OnnxflipError(message)
        logger.warning("%s: only the other targets are exposed", message)
    if "activations" in wanted:
        form = "converted" if stored_casts else quantised_form(graph)
        written = {site.value for site in kv}  # a cache entry is one write: its site is kv-cache's
        sites += [s for s in _activation_sites(graph, selection, form, compute_dtype) if s.value not in written]
    sites += kv
    sites = [s for s in sites if _matches(s, selection)]
    for site in sites:
        site.stored_dtype = site.value.dtype or ir.DataType.UNDEFINED
    return sites

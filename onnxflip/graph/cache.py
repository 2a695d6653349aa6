"""A decoder's key-value cache: which inputs and outputs hold it, and where a run writes its new entries.

A decoder export with past key values (as Hugging Face optimum lays them
out) takes ``past_key_values.<i>.key`` / ``.value`` and returns
``present.<i>.key`` / ``.value``: the past with the entries of the tokens
of this run appended, usually ``present = Concat(past, new, axis=-2)``.
Each entry is written once, by the run whose token it belongs to, and read
by every later run, so the memory a run writes is ``new``, not ``present``
(whose old entries a later run only reads)::

    present.0.key = Concat(past_key_values.0.key, K_new)   ->   K_new is the kv-cache site of layer 0's keys
"""

from __future__ import annotations

import re

import onnx_ir as ir

from onnxflip.errors import OnnxflipError

__all__ = ["cache_outputs", "cache_pairs", "is_past_input", "new_entries"]

_PAST = re.compile(r"^past_key_values[._](\d+)[._](key|value)$")
_PRESENT = re.compile(r"^present[._](\d+)[._](key|value)$")
_SEARCH_LIMIT = 200  # nodes looked at when asking whether a value is computed from the past


def is_past_input(name: str) -> bool:
    """Whether an input name is one of a decoder's past key values."""
    return _PAST.match(name) is not None


def cache_pairs(inputs: list[str], outputs: list[str]) -> list[tuple[str, str]]:
    """(past input, present output) per layer and kind, in layer order; empty for a model without a cache."""
    past = {m.groups(): name for name in inputs if (m := _PAST.match(name))}
    present = {m.groups(): name for name in outputs if (m := _PRESENT.match(name))}
    if not past or set(past) != set(present):
        return []
    return [(past[k], present[k]) for k in sorted(past, key=lambda k: (int(k[0]), k[1]))]


def cache_outputs(graph: ir.Graph) -> set[ir.Value]:
    """The graph outputs that return the cache (present.*)."""
    pairs = cache_pairs([v.name for v in graph.inputs], [v.name for v in graph.outputs])
    names = {present for _, present in pairs}
    return {v for v in graph.outputs if v.name in names}


_SHAPE_OPS = frozenset({"Shape", "Size"})  # their outputs depend on a tensor's shape, never on its values


def _reads(value: ir.Value, source: ir.Value) -> bool:
    """Whether ``value`` is computed from the values of ``source`` (not only from its shape, as positions after
    a past of some length are), looking at most _SEARCH_LIMIT nodes up."""
    seen: set[int] = set()
    stack = [value]
    while stack and len(seen) < _SEARCH_LIMIT:
        current = stack.pop()
        if current is source:
            return True
        producer = current.producer()
        if producer is None or id(producer) in seen or producer.op_type in _SHAPE_OPS:
            continue
        seen.add(id(producer))
        stack.extend(v for v in producer.inputs if v is not None)
    return False


def new_entries(graph: ir.Graph) -> list[tuple[ir.Value, ir.Node, str]]:
    """Per present output, in layer order: the value holding the entries this run writes, the Concat that
    appends them, and the present output's name.  Raises OnnxflipError where a present output is not such a
    Concat (the cache cannot be told apart from what a run writes)."""
    inputs = {v.name: v for v in graph.inputs}
    outputs = {v.name: v for v in graph.outputs}
    found = []
    for past_name, present_name in cache_pairs(list(inputs), list(outputs)):
        present, past = outputs[present_name], inputs[past_name]
        concat = present.producer()
        fresh = [] if concat is None or concat.op_type != "Concat" else [
            v for v in concat.inputs if v is not None and not _reads(v, past)]
        if len(fresh) != 1:
            raise OnnxflipError(f"cannot tell the entries a run writes into {present_name} from the past it reads "
                                f"({past_name}): it is not Concat(past, new); leave kv-cache out of --targets")
        found.append((fresh[0], concat, present_name))
    return found

"""ONNX Runtime's blocked NCHWc layout on this CPU, and trial models whose FlipBits run on its tensors.

ONNX Runtime runs float convolutions and pools on the CPU in its NCHWc
layout (domain ``com.microsoft.nchwc``): channels in blocks of
:func:`nchwc_block_size` (MLAS's block: 8 with AVX2, 16 with AVX512),
padded.  In the graph it optimises from an injected model, every FlipBits
between two such ops costs a ReorderOutput and a ReorderInput (a fifth of
the kernel time of the injected VGG-11, FlipBits itself 3%).

:func:`blocked_template` has ONNX Runtime optimise a trial template once
(the model whose flipped parameters each trial binds, see
:mod:`onnxflip.campaign.trials`), moves its FlipBits onto the blocked
tensors (:class:`~onnxflip.graph.passes.blocked_flipbits.BlockedFlipBitsPass`:
the same faults, drawn by logical index), and learns where each element of a
flipped parameter lies in the initializers ONNX Runtime derived from it
(its reordered convolution filters): the parameters are bound to codes, one
per element, and the derived initializers read back.  A trial's session
then loads that graph without optimising it again (:func:`blocked_options`)
and binds its flipped parameters gathered into those initializers
(:meth:`BlockedTemplate.arrays`).
"""

from __future__ import annotations

import functools
import logging
import pathlib
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnxflip.graph.passes.blocked_flipbits import NCHWC_DOMAIN, BlockedFlipBitsPass
from onnxflip.runtime.flip import as_ortvalue
from onnxflip.runtime.session import IR_VERSION, bound_per_session, read_external_data_from, session_options

__all__ = ["BlockedTemplate", "blocked_options", "blocked_template", "nchwc_block_size"]

logger = logging.getLogger(__name__)

_CODE_BASE = 0x00800000  # codes are the bits of positive normal float32 values, never 0 (ONNX Runtime's padding)
_CODE_LIMIT = 0x7F000000 - _CODE_BASE  # below infinity and NaN


def _optimised(model: bytes, options: ort.SessionOptions) -> onnx.ModelProto:
    """The graph ONNX Runtime runs for ``model`` on the CPU (all optimisations), as it saves it."""
    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / "optimised.onnx"
        options.optimized_model_filepath = str(path)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        return onnx.load(str(path))


@functools.cache
def nchwc_block_size() -> int | None:
    """The channels per NCHWc block ONNX Runtime uses on this CPU; None where it does not use NCHWc.

    Read from a probe: a convolution with 4 output channels, whose filter
    ONNX Runtime pads to one block when it reorders it.
    """
    weight = numpy_helper.from_array(np.ones((4, 8, 1, 1), np.float32), "W")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 2, 2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    optimised = _optimised(model.SerializeToString(), options)
    convs = [n for n in optimised.graph.node if n.domain == NCHWC_DOMAIN and n.op_type == "Conv"]
    if not convs:
        return None
    filters = {init.name: init for init in optimised.graph.initializer}
    block = int(filters[convs[0].input[1]].dims[0])
    logger.info("ONNX Runtime's NCHWc block on this CPU: %d channels", block)
    return block


def blocked_options(options: ort.SessionOptions) -> ort.SessionOptions:
    """Options for a session of a blocked template: its graph is optimised already (optimising it again would
    cost session time and could undo nothing but the layout)."""
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


@dataclass(frozen=True)
class BlockedTemplate:
    """A trial template as ONNX Runtime optimised it, FlipBits on the blocked tensors.

    ``model``: the serialised graph, the initializers a trial binds without
    data.  ``kept``: flipped parameters bound under their own names.
    ``gathers``: initializer -> (parameter, indices): element i of the
    initializer is element indices[i] of the flattened parameter, or 0 where
    indices[i] is the parameter's size (padding).  ``block``: the NCHWc
    block size.  ``moved``: the FlipBits on blocked tensors.
    """

    model: bytes
    kept: tuple[str, ...]
    gathers: Mapping[str, tuple[str, np.ndarray]]
    block: int
    moved: int

    def arrays(self, flips: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The arrays a trial binds, from its flipped parameters."""
        arrays = {name: flips[name] for name in self.kept}
        for name, (source, indices) in self.gathers.items():
            flat = np.ravel(flips[source])
            arrays[name] = np.append(flat, flat.dtype.type(0))[indices]
        return arrays


def _codes(flips: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, int]] | None:
    """One float32 code per element of the flipped parameters, and each parameter's first code; None where a
    parameter is not float32 or there are too many elements to code."""
    codes, offsets, offset = {}, {}, 0
    for name, array in flips.items():
        if array.dtype != np.float32 or offset + array.size > _CODE_LIMIT:
            return None
        bits = np.arange(_CODE_BASE + offset, _CODE_BASE + offset + array.size, dtype=np.uint32)
        codes[name], offsets[name] = bits.view(np.float32).reshape(array.shape), offset
        offset += array.size
    return codes, offsets


def _gather(array: np.ndarray, flips: Mapping[str, np.ndarray],
            offsets: Mapping[str, int]) -> tuple[str, np.ndarray] | bool | None:
    """Where an optimised initializer's elements come from: (parameter, indices), None where it holds no code
    (a constant of its own), False where it mixes codes with other values (ONNX Runtime computed it)."""
    if array.dtype != np.float32:
        return None
    bits = np.ravel(array).view(np.uint32)
    coded = (bits >= _CODE_BASE) & (bits - _CODE_BASE < sum(a.size for a in flips.values()))
    if not coded.any():
        return None
    positions = bits[coded] - _CODE_BASE
    first = int(positions.min())
    source = next((n for n in flips if offsets[n] <= first < offsets[n] + flips[n].size), None)
    if source is None or not np.all(bits[~coded] == 0):
        return False
    size = flips[source].size
    indices = positions - offsets[source]
    if np.any(indices >= size) or len(np.unique(indices)) != size or len(indices) != size:
        return False  # not every element of one parameter exactly once: not a reordering
    full = np.full(bits.shape, size, dtype=np.int64 if size >= 2**31 else np.int32)
    full[coded] = indices
    return source, full.reshape(array.shape)


# The ops ONNX Runtime may run in NCHWc on the CPU: a model without any has no reorders to remove.
_NCHWC_OPS = frozenset({"Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"})


def blocked_template(template: bytes, flips: Mapping[str, np.ndarray], *, threads: int | None = None,
                     external_folder: str | None = None) -> BlockedTemplate | None:
    """The template (whose flipped parameters ``flips`` each trial binds, as :func:`bound_per_session` left
    them) as ONNX Runtime optimises it on this CPU, with its FlipBits on NCHWc tensors; None (the trials keep
    the plain placement, which is always right) where no FlipBits sits between NCHWc ops, where ONNX Runtime
    computes from the flipped parameters more than a reordering, where its optimised graph no longer takes
    every input the template takes (a control input a trial feeds), or where it cannot be read back.
    ``external_folder``: where the template's external tensors lie (see
    :func:`~onnxflip.runtime.session.external_data_folder`)."""
    block = nchwc_block_size()
    coded = _codes(flips)
    if block is None or coded is None:
        return None
    original = onnx.ModelProto.FromString(template)
    if not any(node.op_type in _NCHWC_OPS and node.domain in ("", "ai.onnx") for node in original.graph.node):
        return None
    codes, offsets = coded
    options = read_external_data_from(session_options(threads=threads), external_folder)
    if codes:
        options.add_external_initializers(list(codes), [as_ortvalue(a) for a in codes.values()])
    try:
        optimised = _optimised(template, options)
        model = ir.serde.deserialize_model(optimised)
    except Exception as error:  # noqa: BLE001  the plain placement is the fallback for whatever the runtime does
        logger.info("ONNX Runtime's optimised graph cannot be used (%s): FlipBits stay on plain tensors",
                    str(error).splitlines()[0] if str(error) else type(error).__name__)
        return None
    missing = {i.name for i in original.graph.input} - {i.name for i in optimised.graph.input}
    if missing:
        logger.info("ONNX Runtime's optimised graph no longer takes %s: FlipBits stay on plain tensors",
                    ", ".join(sorted(missing)))
        return None
    kept, gathers = [], {}
    for init in optimised.graph.initializer:
        if init.name in flips:
            kept.append(init.name)
            continue
        found = _gather(numpy_helper.to_array(init), flips, offsets)
        if found is False:
            logger.info("ONNX Runtime computes %s from the flipped parameters: FlipBits stay on plain tensors",
                        init.name)
            return None
        if found is not None:
            gathers[init.name] = found
    if {source for source, _ in gathers.values()} | set(kept) != set(flips):
        return None
    moved = sum(node.attributes.get("nchwc_block") is not None for node in BlockedFlipBitsPass(block)(model).model.graph
                if node.domain != NCHWC_DOMAIN)
    if not moved:
        return None
    proto = ir.serde.serialize_model(model)
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    return BlockedTemplate(bound_per_session(proto, set(kept) | set(gathers)), tuple(kept), gathers, block, moved)

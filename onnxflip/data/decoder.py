"""Inputs of a decoder language model with past key values that data files need not hold.

A decoder export with past key values takes ``input_ids``, ``attention_mask``
(and sometimes ``position_ids``) and per layer ``past_key_values.<i>.key`` /
``.value`` (see :mod:`onnxflip.graph.cache`).  Data that holds only
``input_ids`` (an .npz of token sequences) is completed for it with an
attention mask of ones, positions 0..L-1 and an empty past (past length 0):
one full-sequence pass per sample.
"""

from __future__ import annotations

import logging

import numpy as np

from onnxflip.errors import OnnxflipError
from onnxflip.graph.cache import is_past_input

__all__ = ["ATTENTION_MASK", "INPUT_IDS", "POSITION_IDS", "complete_arrays"]

logger = logging.getLogger(__name__)

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"


def complete_arrays(arrays: dict[str, np.ndarray], specs, *, where: str) -> dict[str, np.ndarray]:
    """The arrays of a data file, completed for a decoder model with past key values: where the model takes
    ``attention_mask``, ``position_ids`` and ``past_key_values.*`` and the data holds only ``input_ids`` for
    them, a mask of ones, positions 0..L-1 and an empty past (one full-sequence pass).  Unchanged otherwise."""
    names = {s.name for s in specs}
    past = [s for s in specs if is_past_input(s.name)]
    if INPUT_IDS not in arrays or not past or any(s.name in arrays for s in past):
        return arrays
    ids = arrays[INPUT_IDS]
    if ids.ndim != 2:
        raise OnnxflipError(f"{where}: input_ids must be (samples, length), not {ids.shape}")
    completed = dict(arrays)
    if ATTENTION_MASK in names and ATTENTION_MASK not in arrays:
        completed[ATTENTION_MASK] = np.ones(ids.shape, np.int64)
    if POSITION_IDS in names and POSITION_IDS not in arrays:
        completed[POSITION_IDS] = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy()
    for spec in past:
        dims = list(spec.shape or [])
        if len(dims) != 4 or not all(isinstance(d, int) for d in (dims[1], dims[3])):
            raise OnnxflipError(f"{where}: cannot make an empty {spec.name}: its shape {spec.describe()} does not fix "
                                "heads and head size; give the past in the data")
        completed[spec.name] = np.zeros((len(ids), dims[1], 0, dims[3]), dtype=spec.dtype)
    logger.info("%s: fed an attention mask of ones and an empty past (%d cache inputs): one full-sequence pass",
                where, len(past))
    return completed

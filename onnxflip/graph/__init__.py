"""What the model becomes: onnx_ir passes with one job each, and the functions that run them.

* :mod:`~onnxflip.graph.sites`: which values are stored where (subgraphs included).
* :mod:`~onnxflip.graph.formats`: the storage formats.
* :mod:`~onnxflip.graph.config`: what an injection is (format, fault model per target, selection);
  the fault model itself is :mod:`onnxflip.faults`' (re-exported here).
* :mod:`~onnxflip.graph.inputs`: defined inputs and the batch dimension.
* :mod:`~onnxflip.graph.passes`: fold_batchnorm, store_in_format, insert_flipbits, qlinear (int8),
  materialize.
* :mod:`~onnxflip.graph.record`: what an injected model holds (its injection record).
* :mod:`~onnxflip.graph.inject`: ``insert_flipbits`` and ``convert_format``, each a sequence of passes.
"""

from __future__ import annotations

from onnxflip.faults import FaultModel
from onnxflip.graph.config import InjectionConfig, control_input_name, counts_output_name
from onnxflip.graph.inject import convert_format, insert_flipbits, plan_sites
from onnxflip.graph.inputs import batch_dimension
from onnxflip.graph.passes.materialize import materialize_parameters
from onnxflip.graph.record import METADATA_KEY, InjectionRecord
from onnxflip.graph.sites import TARGETS, Selection

__all__ = [
    "METADATA_KEY",
    "TARGETS",
    "FaultModel",
    "InjectionConfig",
    "InjectionRecord",
    "Selection",
    "batch_dimension",
    "control_input_name",
    "convert_format",
    "counts_output_name",
    "insert_flipbits",
    "materialize_parameters",
    "plan_sites",
]

"""The operator's contract as the library states it, and the control inputs as the one source of p01/p10/seed."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import model_from_text, raw, run_model
from onnx import TensorProto, helper

from onnxflip import flip_bits, make_session
from onnxflip.faults import FaultModel
from onnxflip.graph.config import InjectionConfig, control_input_name
from onnxflip.graph.inject import insert_flipbits
from onnxflip.graph.passes.materialize import materialize_parameters
from onnxflip.runtime.contract import ELEMENT_TYPES

FLOAT_TYPES = [t for t in ELEMENT_TYPES if t.is_float]


@pytest.mark.parametrize("etype", FLOAT_TYPES, ids=lambda t: t.name)
def test_float_layouts_in_the_library_match_the_dtypes(etype):
    """The library's bit layouts against NumPy's / ml_dtypes' own description of each format."""
    info = ml_dtypes.finfo(etype.dtype)
    assert etype.width == 8 * etype.dtype.itemsize
    assert (etype.exponent_bits, etype.mantissa_bits) == (info.nexp, info.nmant)
    assert etype.has_inf == bool(np.isinf(np.array(np.inf).astype(etype.dtype)))


def test_a_type_outside_the_contract_has_no_kernel():
    node = helper.make_node("FlipBits", ["X"], ["Y"], domain="onnxflip")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.INT64, [4])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT64, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("onnxflip", 1)])
    assert TensorProto.INT64 not in {t.onnx_type for t in ELEMENT_TYPES}
    with pytest.raises(Exception, match="FlipBits"):
        make_session(model)


IDENTITY_MATMUL = """
<ir_version: 10, opset_import: ["" : 21]>
g (float[N,16] x) => (float[N,32] y) <float[16,32] W> {
  y = MatMul (x, W)
}
"""


def _weights_model() -> ir.Model:
    w = np.random.default_rng(5).standard_normal((16, 32)).astype(np.float32) + 4.0  # no zeros: x @ W is exact
    return ir.serde.deserialize_model(model_from_text(IDENTITY_MATMUL, [onnx.numpy_helper.from_array(w, "W")]))


@pytest.mark.parametrize("fed", [False, True], ids=["defaults", "fed"])
def test_injected_nodes_take_p_and_seed_from_their_inputs_only(fed):
    """An injected node has no p01/p10/seed attribute; its flips are flip_bits' for the input's seed."""
    model = _weights_model()
    fault = FaultModel(p01=0.02, p10=0.05, seed=11, bits="mantissa")
    injected = insert_flipbits(model, config=InjectionConfig(activations=None, weights=fault, biases=None))
    (node,) = [n for n in injected.graph if n.op_type == "FlipBits"]
    assert not {"p01", "p10", "seed"} & set(node.attributes)
    p01, p10, seed = (0.1, 0.03, 987654321) if fed else (fault.p01, fault.p10, fault.seed)
    controls = {control_input_name("weights", "p01"): np.array(p01, np.float32),
                control_input_name("weights", "p10"): np.array(p10, np.float32),
                control_input_name("weights", "seed"): np.array(seed, np.int64)} if fed else {}
    w = model.graph.initializers["W"].const_value.numpy()
    expected = flip_bits(w, p01=float(np.float32(p01)), p10=float(np.float32(p10)), seed=seed,
                         stream=node.attributes["stream"].value, bits="mantissa")
    assert np.count_nonzero(raw(expected) != raw(w)) > 10
    eye = {"x": np.eye(16, dtype=np.float32)}
    (in_graph,) = run_model(injected, {**eye, **controls}, exact=True)
    np.testing.assert_array_equal(raw(in_graph), raw(expected))
    (constant,) = run_model(materialize_parameters(injected, controls), eye, exact=True)
    np.testing.assert_array_equal(raw(constant), raw(expected))



@pytest.mark.parametrize(("entry_name", "source"), [("CPU_ENTRY", "flipbits_cpu.cc"),
                                                   ("CUDA_ENTRY", "cuda/flipbits_cuda.cc")])
def test_the_c_entries_are_called_by_the_parameter_names_the_library_states(entry_name, source):
    """The C entries' parameters come from the library's contract, in the order of their C signatures; Python
    passes them by name (a parameter it does not know is a one-line error, not an argument in the wrong place)."""
    import pathlib
    import re

    from onnxflip import OnnxflipError
    from onnxflip.runtime import contract

    entry = getattr(contract, entry_name)
    path = pathlib.Path(__file__).parents[1] / "custom_ops" / source
    signature = re.search(rf"{entry.name}\(([^)]*)\)", path.read_text()).group(1)
    declared = [re.fullmatch(r"(.+?)\s*\b(\w+)", p.strip()).groups() for p in signature.split(",")]
    assert [(name, " ".join(c_type.split())) for c_type, name in declared] == list(entry.parameters)
    values = {name: index for index, (name, _) in enumerate(entry.parameters)}
    assert entry.arguments(dict(reversed(values.items()))) == list(range(len(values)))
    del values["stuck_seed"]
    with pytest.raises(OnnxflipError, match="takes stuck_seed"):
        entry.arguments(values)

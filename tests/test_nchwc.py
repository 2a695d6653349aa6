"""FlipBits on tensors in ONNX Runtime's blocked NCHWc layout: the faults of the same tensor in NCHW."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import raw
from onnx import helper

from onnxflip import make_session
from onnxflip.runtime.contract import element_type
from onnxflip.runtime.flip import flipbits_node_model, run_flipbits_session

PAD = np.float32(-7.25)  # what the padding channels hold; they must keep it whatever flips


def to_nchwc(x: np.ndarray, block: int) -> np.ndarray:
    """x [N, C, H, W] in NCHWc blocks, as a tensor of shape [N, C rounded up to block, H, W]."""
    n, c, h, w = x.shape
    padded = -(-c // block) * block
    full = np.full((n, padded, h, w), PAD, x.dtype)
    full[:, :c] = x
    blocked = full.reshape(n, padded // block, block, h, w).transpose(0, 1, 3, 4, 2)
    return np.ascontiguousarray(blocked).reshape(n, padded, h, w)


def from_nchwc(y: np.ndarray, channels: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """The NCHW tensor of channels ``channels`` and the padding channels of an NCHWc tensor."""
    n, padded, h, w = y.shape
    plain = y.reshape(n, padded // block, h, w, block).transpose(0, 1, 4, 2, 3).reshape(n, padded, h, w)
    return plain[:, :channels], plain[:, channels:]


def node_session(*, block: int = 0, channels: int = 0, ecc: str = "none", threads: int | None = None):
    model = flipbits_node_model(element_type("float32"), mask=0xFFFFFFFF, stream=3, randomness="fixed",
                                nonfinite="keep", ecc=ecc, counts=ecc != "none")
    if block:
        model.graph.node[0].attribute.extend([helper.make_attribute("nchwc_block", block),
                                              helper.make_attribute("channels", channels)])
    return make_session(model, threads=threads)


@pytest.mark.parametrize("block", [8, 16])
@pytest.mark.parametrize("channels", [12, 32])
@pytest.mark.parametrize("p", [1e-6, 1e-3, 1e-1])
@pytest.mark.parametrize("threads", [1, 2])
def test_blocked_flips_are_the_plain_flips(block, channels, p, threads):
    x = np.random.default_rng(0).standard_normal((3, channels, 9, 11)).astype(np.float32)
    plain = run_flipbits_session(node_session(threads=1), x, p01=p, p10=p, seed=5, s0=p / 4, s1=p / 4)
    blocked = run_flipbits_session(node_session(block=block, channels=channels, threads=threads),
                                   to_nchwc(x, block), p01=p, p10=p, seed=5, s0=p / 4, s1=p / 4)
    logical, padding = from_nchwc(blocked, channels, block)
    flipped = raw(x) ^ raw(plain)
    assert np.count_nonzero(flipped) > 0 or p < 1e-4  # p = 1e-6 may flip nothing in 12k values
    np.testing.assert_array_equal(raw(x) ^ raw(np.ascontiguousarray(logical)), flipped)
    assert np.all(padding == PAD)


@pytest.mark.parametrize("block", [8, 16])
def test_blocked_ecc_words_are_the_plain_words(block):
    x = np.random.default_rng(1).standard_normal((2, 20, 5, 5)).astype(np.float32)
    plain, plain_counts = run_flipbits_session(node_session(ecc="secded64"), x, p01=1e-2, p10=1e-2, seed=9)
    blocked, counts = run_flipbits_session(node_session(block=block, channels=20, ecc="secded64"),
                                           to_nchwc(x, block), p01=1e-2, p10=1e-2, seed=9)
    logical, padding = from_nchwc(blocked, 20, block)
    np.testing.assert_array_equal(raw(np.ascontiguousarray(logical)), raw(plain))
    np.testing.assert_array_equal(counts, plain_counts)
    assert plain_counts.sum() > 0 and np.all(padding == PAD)


def test_padding_is_never_flipped_even_at_p_one():
    x = np.zeros((1, 5, 2, 2), np.float32)
    blocked = run_flipbits_session(node_session(block=8, channels=5), to_nchwc(x, 8), p01=1.0, p10=1.0, seed=0)
    logical, padding = from_nchwc(blocked, 5, 8)
    assert np.all(raw(np.ascontiguousarray(logical)) == 0xFFFFFFFF) and np.all(padding == PAD)


def test_a_shape_that_does_not_fit_the_layout_is_refused():
    session = node_session(block=8, channels=12)
    with pytest.raises(Exception, match="must have 16 channels"):
        run_flipbits_session(session, np.zeros((1, 12, 2, 2), np.float32), p01=0.1, p10=0.1, seed=0)


# --- the pass, on graphs shaped like ONNX Runtime's optimised ones ---------------------------------------------

OPTIMISED = """
<ir_version: 10, opset_import: ["" : 17, "com.microsoft.nchwc" : 1, "onnxflip" : 1]>
g (float[N, 16, 4, 4] xb, float p) => (float[N, C, 4, 4] y, float[N, C, 4, 4] z) <float[N, C, 4, 4] x> {
    x = com.microsoft.nchwc.ReorderOutput <channels = CHANNELS, channels_last = 0> (xb)
    f = onnxflip.FlipBits <stream = 0> (x, p, p)
    fb = com.microsoft.nchwc.ReorderInput <channels_last = 0> (f)
    y = com.microsoft.nchwc.ReorderOutput <channels = CHANNELS, channels_last = 0> (fb)
    z = Relu (f)
}
"""


@pytest.mark.parametrize(("block", "channels", "padded"), [(8, 12, 16), (16, 12, 16), (8, 20, 24), (16, 20, 32)])
def test_the_pass_moves_flipbits_onto_the_blocked_tensor(block, channels, padded):
    import onnx_ir as ir

    from onnxflip.graph.passes.blocked_flipbits import BlockedFlipBitsPass

    model = ir.from_onnx_text(OPTIMISED.replace("CHANNELS", str(channels)).replace("C,", f"{channels},"))
    assert BlockedFlipBitsPass(block)(model).modified
    ops = [n.op_type for n in model.graph]
    assert ops.count("ReorderInput") == 0 and ops.count("ReorderOutput") == 2  # y's, and one for Relu's plain read
    flip = next(n for n in model.graph if n.op_type == "FlipBits")
    assert flip.inputs[0].name == "xb" and list(flip.inputs[0].shape)[1:] == [padded, 4, 4]
    assert flip.attributes["nchwc_block"].as_int() == block and flip.attributes["channels"].as_int() == channels
    assert list(flip.outputs[0].shape)[1:] == [padded, 4, 4]
    relu = next(n for n in model.graph if n.op_type == "Relu")
    assert relu.inputs[0].producer().op_type == "ReorderOutput" and relu.inputs[0].producer().inputs[0] is flip.outputs[0]


# --- trials: the blocked template against the plain placement ------------------------------------------------------

TINY = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 3, 8, 8] x) => (float[N, 10] logits, float[N, 16, 8, 8] r1) {
    c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
    r1 = Relu (c1)
    m1 = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r1)
    c2 = Conv <pads = [1, 1, 1, 1]> (m1, w2, b2)
    r2 = Relu (c2)
    m2 = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r2)
    f = Flatten (m2)
    logits = Gemm <transB = 1> (f, wf, bf)
}
"""
IMAGES = np.random.default_rng(3).standard_normal((6, 3, 8, 8)).astype(np.float32)


def tiny_runner(targets: tuple[str, ...], threads: int):
    import onnx_ir as ir
    from conftest import model_from_text
    from onnx import numpy_helper

    from onnxflip.campaign.trials import LocalRunner, TrialSettings
    from onnxflip.data.base import ArraySource
    from onnxflip.metrics import metric_from_spec

    rng = np.random.default_rng(4)
    shapes = {"w1": (16, 3, 3, 3), "b1": (16,), "w2": (20, 16, 3, 3), "b2": (20,), "wf": (10, 80), "bf": (10,)}
    proto = model_from_text(TINY, [numpy_helper.from_array((rng.standard_normal(s) / 4).astype(np.float32), n)
                                   for n, s in shapes.items()])
    settings = TrialSettings(format="float32", targets=targets, batch_size=len(IMAGES))
    source = ArraySource({"x": IMAGES}, np.zeros(len(IMAGES), np.int64))
    return proto, LocalRunner(ir.serde.deserialize_model(proto), source, metric_from_spec("top1"), settings,
                              threads=threads)


def activation_feeds(p: float, seed: int = 11) -> dict[str, np.ndarray]:
    from onnxflip.graph.config import control_input_name

    return {"x": IMAGES, control_input_name("activations", "p01"): np.array(p, np.float32),
            control_input_name("activations", "p10"): np.array(p, np.float32),
            control_input_name("activations", "seed"): np.array(seed, np.int64)}


def plain_session(runner, controls: dict, *, nchwc: bool, threads: int):
    """The trial's model as the plain placement runs it, NCHWc convolutions on (reorders around FlipBits) or off."""
    import onnxruntime as ort

    from onnxflip.graph.passes.materialize import materialize_parameters
    from onnxflip.runtime.session import session_options

    options = session_options(threads=threads)
    if not nchwc:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    return make_session(materialize_parameters(runner.injected, controls), options=options)


def test_this_cpu_has_an_nchwc_block_the_trials_record():
    from onnxflip.runtime.nchwc import BlockedTemplate, nchwc_block_size

    _, runner = tiny_runner(("activations",), threads=1)
    runner._session(1e-3, 1e-3, 0)
    assert nchwc_block_size() in (8, 16)
    assert isinstance(runner._template, BlockedTemplate) and runner._template.block == nchwc_block_size()
    # r1 (also a graph output: a ReorderOutput for it), m1 and r2 (20 channels, padded); m2 stays plain: ONNX
    # Runtime pools in NCHWc only whole blocks of channels
    assert runner._template.moved == 3


@pytest.mark.parametrize("p", [1e-6, 1e-3, 1e-1])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_site_flips_the_same_bits_with_nchwc_on_and_off(p, threads):
    _, runner = tiny_runner(("activations",), threads=threads)
    blocked = runner._session(p, p, 0).session
    sessions = {"blocked": blocked, "nchwc, reorders": plain_session(runner, {}, nchwc=True, threads=1),
                "nchw": plain_session(runner, {}, nchwc=False, threads=1)}
    flips = {name: raw(s.run(["r1"], activation_feeds(p))[0]) ^ raw(s.run(["r1"], activation_feeds(0.0))[0])
             for name, s in sessions.items()}
    assert np.count_nonzero(flips["nchw"]) > 0 or p < 1e-4
    for name in ("blocked", "nchwc, reorders"):
        np.testing.assert_array_equal(flips[name], flips["nchw"], err_msg=name)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_trial_of_all_targets_computes_what_the_plain_placement_does(threads):
    from onnxflip.graph.config import control_input_name

    _, runner = tiny_runner(("activations", "weights", "biases"), threads=threads)
    p = 1e-3
    blocked = runner._session(p, p, 5).session
    controls = runner._controls(p, p, 5)
    plain = plain_session(runner, controls, nchwc=True, threads=threads)
    feeds = activation_feeds(p)
    for name in list(feeds):
        if name.startswith(control_input_name("weights", "")) or name.startswith(control_input_name("biases", "")):
            del feeds[name]
    np.testing.assert_array_equal(raw(blocked.run(["logits"], feeds)[0]), raw(plain.run(["logits"], feeds)[0]))


@pytest.mark.parametrize("targets", [("activations",), ("activations", "weights", "biases")])
def test_at_p_zero_the_blocked_template_is_the_clean_model_bit_for_bit(targets):
    """The template's session fed zero rates, its parameters bound unflipped, against the original model."""
    from onnx import numpy_helper

    from onnxflip.runtime.flip import as_ortvalue
    from onnxflip.runtime.nchwc import blocked_options
    from onnxflip.runtime.session import session_options

    proto, runner = tiny_runner(targets, threads=1)
    runner._session(1e-3, 1e-3, 5)  # a trial at p > 0 makes the template
    template = runner._template
    originals = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    sources = {source for source, _ in template.gathers.values()} | set(template.kept)
    arrays = template.arrays({name: originals[name.removesuffix("_flipped_trial")] for name in sources})
    options = blocked_options(session_options(threads=1))
    if arrays:
        options.add_external_initializers(list(arrays), [as_ortvalue(a) for a in arrays.values()])
    session = make_session(template.model, options=options)
    clean = make_session(proto).run(["logits", "r1"], {"x": IMAGES})
    for got, want in zip(session.run(["logits", "r1"], activation_feeds(0.0)), clean, strict=True):
        np.testing.assert_array_equal(raw(got), raw(want))

"""FlipBits through ONNX Runtime's CPU provider: statistics, exactness, determinism, errors."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
from conftest import TYPE_NAMES, FlipBitsNode, popcount, random_array, raw
from onnx import TensorProto, helper
from scipy import stats

from onnxflip import OnnxflipError, flip_bits, make_session
from onnxflip.bits import element_type, field_mask

N = 1 << 20  # elements per statistical test
SIGMAS = 4.5


def assert_binomial(count: int, trials: int, p: float) -> None:
    mean = trials * p
    sd = math.sqrt(trials * p * (1 - p))
    assert abs(count - mean) <= SIGMAS * max(sd, 1.0), f"{count} flips, expected {mean:.1f} +- {sd:.1f}"


@pytest.mark.parametrize("p", [1e-6, 1e-4, 1e-2, 0.5])
def test_flip_count_is_binomial(type_name, p):
    x = random_array(type_name, N, seed=1)
    y = flip_bits(x, p=p, seed=7)
    width = element_type(type_name).width
    assert_binomial(popcount(raw(x) ^ raw(y)), N * width, p)


def fields_of(type_name: str) -> list[str]:
    if element_type(type_name).is_float:
        return ["all", "sign", "exponent", "mantissa"]
    return ["all", "sign", "low:3", "high:2"]


FIELD_CASES = [(t, f) for t in TYPE_NAMES for f in fields_of(t)]


@pytest.mark.parametrize(("type_name", "field"), FIELD_CASES)
def test_flips_stay_in_mask_and_are_uniform_over_it(type_name, field):
    etype = element_type(type_name)
    mask = field_mask(etype, field)
    x = random_array(type_name, N, seed=2)
    diff = raw(x) ^ raw(flip_bits(x, p=1e-2, bits=field, seed=3))
    assert not np.any(diff & np.array(~mask & etype.all_bits, dtype=diff.dtype)), "a bit outside the mask changed"
    positions = [k for k in range(etype.width) if mask >> k & 1]
    per_bit = np.array([np.count_nonzero(diff >> np.array(k, diff.dtype) & 1) for k in positions])
    assert_binomial(int(per_bit.sum()), N * len(positions), 1e-2)
    if len(positions) > 1:
        assert stats.chisquare(per_bit).pvalue > 1e-4, per_bit


def test_asymmetric_directions(type_name):
    etype = element_type(type_name)
    zeros = np.zeros(N, dtype=etype.dtype)
    ones = np.full(N, etype.all_bits, dtype=f"u{etype.width // 8}").view(etype.dtype)
    assert np.array_equal(raw(flip_bits(zeros, p10=0.3, seed=1)), raw(zeros))
    assert np.array_equal(raw(flip_bits(ones, p01=0.3, seed=1)), raw(ones))

    x = random_array(type_name, N, seed=4)
    y = flip_bits(x, p01=1e-2, p10=1e-3, seed=5)
    before, after = raw(x), raw(y)
    ones_before = popcount(before)
    zeros_before = N * etype.width - ones_before
    rose = popcount(~before & after)
    fell = popcount(before & ~after)
    assert_binomial(rose, zeros_before, 1e-2)
    assert_binomial(fell, ones_before, 1e-3)


def test_p_zero_is_bit_identical(type_name):
    x = random_array(type_name, 10_000, seed=6)
    assert np.array_equal(raw(flip_bits(x, p=0.0, seed=1)), raw(x))


@pytest.mark.parametrize(("type_name", "field"), FIELD_CASES)
def test_p_one_flips_every_masked_bit(type_name, field):
    etype = element_type(type_name)
    x = random_array(type_name, 10_000, seed=8)
    mask = field_mask(etype, field)
    expected = raw(x) ^ np.array(mask, dtype=raw(x).dtype)
    assert np.array_equal(raw(flip_bits(x, p=1.0, bits=field)), expected)


@pytest.mark.parametrize("bit", [0, 7, 22, 23, 30, 31])
def test_forced_flip_of_one_bit_matches_numpy(bit):
    x = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
    expected = (x.view(np.uint32) ^ np.uint32(1 << bit)).view(np.float32)
    np.testing.assert_array_equal(raw(flip_bits(x, p=1.0, bits=1 << bit)), raw(expected))


def test_same_seed_same_bits_for_any_thread_count(type_name):
    x = random_array(type_name, N, seed=9)
    results = [FlipBitsNode(type_name, threads=t)(x, p01=1e-3, p10=2e-3, seed=11) for t in (1, 2, 4)]
    for other in results[1:]:
        assert np.array_equal(raw(results[0]), raw(other))
    assert not np.array_equal(raw(results[0]), raw(x))


def test_fixed_repeats_and_per_run_draws_anew():
    x = random_array("float32", N, seed=10)
    fixed = FlipBitsNode("float32", randomness="fixed")
    assert np.array_equal(raw(fixed(x, p01=1e-3, p10=1e-3, seed=1)), raw(fixed(x, p01=1e-3, p10=1e-3, seed=1)))
    per_run = FlipBitsNode("float32", randomness="per_run")
    first = raw(per_run(x, p01=1e-3, p10=1e-3, seed=1))
    second = raw(per_run(x, p01=1e-3, p10=1e-3, seed=1))
    assert not np.array_equal(first, second)
    # Each run is still a fresh binomial draw.
    assert_binomial(popcount(raw(x) ^ second), N * 32, 1e-3)


def test_seeds_and_streams_draw_independent_flips():
    x = np.zeros(N, dtype=np.float32)
    p = 1e-2
    a = raw(flip_bits(x, p=p, seed=1, stream=0)) != 0
    b = raw(flip_bits(x, p=p, seed=1, stream=1)) != 0
    c = raw(flip_bits(x, p=p, seed=2, stream=0)) != 0
    hit = 1 - (1 - p) ** 32  # chance that an element has any flip
    for u, v in ((a, b), (a, c)):
        assert_binomial(int(np.count_nonzero(u & v)), N, hit * hit)


@pytest.mark.parametrize("policy", ["zero", "nan_to_num"])
def test_nonfinite_policies_leave_only_finite_flipped_values(policy):
    x = np.random.default_rng(1).standard_normal(N).astype(np.float32)
    y = flip_bits(x, p=0.05, bits="exponent", seed=3, nonfinite=policy)
    assert np.all(np.isfinite(y))
    keep = flip_bits(x, p=0.05, bits="exponent", seed=3, nonfinite="keep")
    bad = ~np.isfinite(keep)
    assert bad.any()
    if policy == "zero":
        assert np.all(y[bad] == 0)
    else:
        assert np.all(y[np.isnan(keep)] == 0)
        big = np.isinf(keep)
        np.testing.assert_array_equal(y[big], np.sign(keep[big]) * np.finfo(np.float32).max)
    np.testing.assert_array_equal(raw(y[~bad]), raw(keep[~bad]))


def test_nonfinite_policy_does_not_touch_unflipped_values():
    x = np.array([np.nan, np.inf, -np.inf, 1.0] * 1000, dtype=np.float32)
    y = flip_bits(x, p=0.0, nonfinite="zero")
    np.testing.assert_array_equal(raw(y), raw(x))


def test_empty_tensor():
    x = np.zeros((0, 3), dtype=np.float32)
    assert flip_bits(x, p=0.5).shape == (0, 3)


def test_shape_is_kept():
    x = np.zeros((2, 3, 5, 7), dtype=np.float16)
    assert flip_bits(x, p=0.5, seed=1).shape == x.shape


def _node_model(**attributes) -> bytes:
    node = helper.make_node("FlipBits", ["X", "p01"], ["Y"], domain="onnxflip", name="site_7", **attributes)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n"]), helper.make_tensor_value_info("p01", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("onnxflip", 1)], ir_version=10)
    return model.SerializeToString()


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"p01": 2.0}, "p01 = 2 is not a probability"),
        ({"p10": -0.5}, "p10 = -0.5 is not a probability"),
        ({"p01": float("nan")}, "is not a probability"),
        ({"nonfinite": "clamp"}, "nonfinite 'clamp'"),
        ({"randomness": "sometimes"}, "randomness 'sometimes'"),
        ({"bitmask": 1 << 40}, "outside the 32-bit"),
    ],
)
def test_bad_attributes_fail_at_session_creation_naming_the_node(attributes, message):
    with pytest.raises(Exception, match=message) as info:
        make_session(_node_model(**attributes))
    assert "site_7" in str(info.value)


@pytest.mark.parametrize("value", [1.5, -1.0, float("nan")])
def test_bad_probability_input_fails_at_run_time_naming_the_node(value):
    session = make_session(_node_model())
    with pytest.raises(Exception, match=r"site_7.*input p01"):
        session.run(None, {"X": np.zeros(4, np.float32), "p01": np.array(value, np.float32)})


def test_inputs_take_precedence_over_attributes():
    session = make_session(_node_model(p01=0.0))
    x = np.zeros(1000, np.float32)
    (y,) = session.run(None, {"X": x, "p01": np.array(1.0, np.float32)})
    assert np.all(raw(y) == 0xFFFFFFFF)


def test_python_helper_rejects_bad_arguments():
    x = np.zeros(4, np.float32)
    with pytest.raises(OnnxflipError, match="probability"):
        flip_bits(x, p=2.0)
    with pytest.raises(OnnxflipError, match="either p"):
        flip_bits(x, p=0.1, p01=0.1)
    with pytest.raises(OnnxflipError, match="does not fit"):
        flip_bits(x, bits=1 << 33)
    with pytest.raises(OnnxflipError, match="element type"):
        flip_bits(np.zeros(4, np.int64), p=0.1)
    with pytest.raises(OnnxflipError, match="nonfinite"):
        flip_bits(x, p=0.1, nonfinite="maybe")


def test_onnx_runtime_knows_flipbits_only_through_the_library():
    with pytest.raises(Exception, match="FlipBits"):
        ort.InferenceSession(_node_model(), providers=["CPUExecutionProvider"])
    x = random_array("float32", 64, seed=5)
    (y,) = make_session(_node_model()).run(None, {"X": x, "p01": np.array(0.0, np.float32)})
    np.testing.assert_array_equal(raw(y), raw(x))

"""Stuck-at cells and SECDED words: the kernel on crafted inputs, the code against a NumPy reference, statistics."""

from __future__ import annotations

import ctypes
import itertools
import json
import math

import numpy as np
import onnx
import pytest
from conftest import TYPE_NAMES, popcount, random_array, raw, run_model, template_classifier

from onnxflip import OnnxflipError, flip_bits
from onnxflip.bits import element_type, field_mask
from onnxflip.cli import main
from onnxflip.faults import FaultModel, words_per_run
from onnxflip.graph.config import InjectionConfig, control_input_name, counts_output_name
from onnxflip.graph.inject import insert_flipbits
from onnxflip.graph.passes.materialize import materialize_parameters
from onnxflip.graph.record import METADATA_KEY
from onnxflip.modelio import save_model
from onnxflip.runtime.contract import ECC_CODES, ECC_MODES, ON_DETECTED
from onnxflip.runtime.flip import flipbits_node_model, run_flipbits_session
from onnxflip.runtime.library import load_library
from onnxflip.runtime.session import make_session, runtime_proto

SIGMAS = 4.5  # tolerance of every statistical check, in standard deviations of the count
CODE_WIDTHS = (8, 16, 32, 64)


def _ones(type_name: str, size: int) -> np.ndarray:
    etype = element_type(type_name)
    return np.full(size, etype.all_bits, dtype=f"u{etype.width // 8}").view(etype.dtype)


def _zeros(type_name: str, size: int) -> np.ndarray:
    return np.zeros(size, dtype=element_type(type_name).dtype)


def stuck_map(type_name: str, size: int, **settings) -> tuple[np.ndarray, np.ndarray]:
    """(cells stuck at 0, cells stuck at 1) as bit masks per element, read from all-ones and all-zeros inputs."""
    at0 = ~raw(flip_bits(_ones(type_name, size), **settings))
    at1 = raw(flip_bits(_zeros(type_name, size), **settings))
    return at0, at1


def within(count: int, trials: int, p: float, *, extra: float = 0.0) -> bool:
    """count in [n p - k sigma, n (p + extra) + k sigma] for a binomial count (extra: a one-sided allowance)."""
    sigma = math.sqrt(trials * (p + extra) * (1 - p) + 1.0)
    return trials * p - SIGMAS * sigma <= count <= trials * (p + extra) + SIGMAS * sigma


# --- stuck-at cells ------------------------------------------------------------------------------


@pytest.mark.parametrize("type_name", TYPE_NAMES)
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_every_stuck_cell_reads_its_value_at_p0_and_under_flips(type_name, p):
    at0, at1 = stuck_map(type_name, 1 << 14, s0=0.05, s1=0.08, seed=4)
    assert popcount(at0) > 0 and popcount(at1) > 0
    assert not np.any(at0 & at1)  # a cell is stuck at one value
    x = random_array(type_name, 1 << 14, seed=2)
    y = raw(flip_bits(x, p=p, s0=0.05, s1=0.08, seed=4))
    assert np.array_equal(y & at1, at1) and not np.any(y & at0)
    if p == 0.0:  # the other cells read what was written
        free = ~(at0 | at1)
        assert np.array_equal(y & free, raw(x) & free)


@pytest.mark.parametrize("type_name", TYPE_NAMES)
def test_stuck_counts_match_the_binomial_expectation(type_name):
    etype = element_type(type_name)
    size, s0, s1 = 1 << 15, 0.02, 0.01
    for bits in ("all", field_mask(etype, "sign") | 1):
        mask = field_mask(etype, bits)
        at0, at1 = stuck_map(type_name, size, s0=s0, s1=s1, seed=9, bits=bits)
        assert not np.any((at0 | at1) & ~np.array(mask, dtype=at0.dtype))  # only the mask's cells stick
        cells = size * bin(mask).count("1")
        assert within(popcount(at0), cells, s0) and within(popcount(at1), cells, s1), (popcount(at0), popcount(at1))


def _node(type_name: str, *, randomness: str = "fixed", threads: int | None = None, ecc: str = "none"):
    etype = element_type(type_name)
    model = flipbits_node_model(etype, mask=etype.all_bits, stream=3, randomness=randomness, nonfinite="keep", ecc=ecc)
    return make_session(model, threads=threads)


def test_the_stuck_map_is_the_same_at_every_run_while_per_run_flips_change():
    session = _node("float32", randomness="per_run")
    zeros, ones = _zeros("float32", 1 << 14), _ones("float32", 1 << 14)
    stuck = {"seed": 5, "s0": 0.02, "s1": 0.02}
    at1 = raw(run_flipbits_session(session, zeros, p01=0.0, p10=0.0, **stuck))
    runs = [raw(run_flipbits_session(session, zeros, p01=1e-3, p10=1e-3, **stuck)) for _ in range(3)]
    at0 = ~raw(run_flipbits_session(session, ones, p01=0.0, p10=0.0, **stuck))
    assert popcount(at1) > 0 and popcount(at0) > 0
    for y in runs:
        assert np.array_equal(y & at1, at1) and not np.any(y & at0)
    assert not np.array_equal(runs[0], runs[1])  # the flips are new at each run


def test_the_stuck_map_is_the_same_for_every_batch_and_thread_count():
    batches = [random_array("float16", 1 << 16, seed=s).reshape(4, -1) for s in (1, 2)]
    settings = {"p01": 0.0, "p10": 0.0, "seed": 8, "s0": 0.01, "s1": 0.01}
    ones = _ones("float16", 1 << 16).reshape(4, -1)
    zeros = _zeros("float16", 1 << 16).reshape(4, -1)
    maps = []
    for threads in (1, 2, 4):
        session = _node("float16", threads=threads)
        at0 = ~raw(run_flipbits_session(session, ones, **settings)) & 0xFFFF
        at1 = raw(run_flipbits_session(session, zeros, **settings))
        for batch in batches:
            y = raw(run_flipbits_session(session, batch, **settings))
            assert np.array_equal(y & at1, at1) and not np.any(y & at0)
        # a smaller batch holds the first samples, in the same cells
        first = raw(run_flipbits_session(session, zeros[:1], **settings))
        assert np.array_equal(first, at1[:1])
        maps.append((at0, at1))
    assert all(np.array_equal(a[0], maps[0][0]) and np.array_equal(a[1], maps[0][1]) for a in maps)


def test_a_new_seed_is_a_new_memory():
    a = stuck_map("int8", 1 << 14, s0=0.05, s1=0.05, seed=1)
    b = stuck_map("int8", 1 << 14, s0=0.05, s1=0.05, seed=2)
    assert not np.array_equal(a[0], b[0]) and not np.array_equal(a[1], b[1])


def test_stuck_seed_keys_the_memory_apart_from_the_flip_seed():
    settings = {"s0": 0.05, "s1": 0.05}
    a = stuck_map("float32", 1 << 14, seed=1, stuck_seed=9, **settings)
    b = stuck_map("float32", 1 << 14, seed=2, stuck_seed=9, **settings)
    c = stuck_map("float32", 1 << 14, seed=9, **settings)  # without stuck_seed the seed keys the cells
    assert all(np.array_equal(a[i], b[i]) and np.array_equal(a[i], c[i]) for i in (0, 1))


@pytest.mark.parametrize("ecc", ["secded", "secded64"])
def test_stuck_cells_in_ecc_words_are_corrected_like_flips(ecc):
    # Stuck cells that disagree with the stored bit are errors of the codeword: one per word is corrected.
    x = random_array("float32", 1 << 16, seed=3)
    y, counts = flip_bits(x, s0=1e-3, s1=1e-3, ecc=ecc, seed=6, return_counts=True)
    assert counts.corrected > 0
    changed = int(np.count_nonzero(raw(y) != raw(x)))
    values_per_word = 2 if ecc == "secded64" else 1
    assert changed <= (counts.detected + counts.silent) * values_per_word


# --- the SECDED code -------------------------------------------------------------------------------


def hamming_bits(k: int) -> int:
    """r of the extended Hamming code of k data bits: the smallest r with 2^r >= k + r + 1."""
    return next(r for r in itertools.count() if 2**r >= k + r + 1)


def reference_encode(k: int, data: int) -> int:
    """Check bits of an extended Hamming code, written out: Hamming positions 1.. with check bits at the powers
    of two, data bits in order at the other positions; check bit j is the parity of the positions with bit j set,
    and bit r the parity of the whole codeword."""
    r = hamming_bits(k)
    data_positions = [pos for pos in range(1, k + r + 1) if pos & (pos - 1)]
    ones = [pos for i, pos in enumerate(data_positions) if (data >> i) & 1]
    checks = 0
    for j in range(r):
        checks |= (sum(1 for pos in ones if pos >> j & 1) & 1) << j
    overall = (len(ones) + bin(checks).count("1")) & 1
    return checks | overall << r


def _library_code():
    lib = load_library()
    lib.onnxflip_secded_encode.restype = ctypes.c_int64
    lib.onnxflip_secded_encode.argtypes = [ctypes.c_int32, ctypes.c_uint64]
    lib.onnxflip_secded_decode.restype = ctypes.c_int32
    lib.onnxflip_secded_decode.argtypes = [ctypes.c_int32, ctypes.POINTER(ctypes.c_uint64), ctypes.c_uint32]

    def decode(k: int, data: int, checks: int) -> tuple[int, int]:
        word = ctypes.c_uint64(data)
        status = lib.onnxflip_secded_decode(k, ctypes.byref(word), checks)
        return status, word.value

    return lib.onnxflip_secded_encode, decode


CLEAN, CORRECTED, DETECTED = 0, 1, 2


@pytest.mark.parametrize("k", CODE_WIDTHS)
def test_check_bits_equal_the_reference(k):
    encode, _ = _library_code()
    rng = np.random.default_rng(k)
    for data in [0, (1 << k) - 1, *map(int, rng.integers(0, 1 << min(k, 63), size=300, dtype=np.uint64))]:
        data |= int(rng.integers(0, 2)) << (k - 1)
        assert encode(k, data) == reference_encode(k, data), hex(data)
    assert encode(12, 0) == -1


def _codeword_errors(k: int):
    """Every codeword bit as (data error, check error): k data bits, then r + 1 check bits."""
    return [(1 << i, 0) for i in range(k)] + [(0, 1 << j) for j in range(hamming_bits(k) + 1)]


@pytest.mark.parametrize("k", CODE_WIDTHS)
def test_every_single_error_is_corrected_and_every_double_error_detected(k):
    encode, decode = _library_code()
    rng = np.random.default_rng(100 + k)
    data = int(rng.integers(0, 1 << min(k, 63), dtype=np.uint64)) | (1 << (k - 1))
    checks = encode(k, data)
    assert decode(k, data, checks) == (CLEAN, data)
    errors = _codeword_errors(k)
    assert len(errors) == k + hamming_bits(k) + 1  # 13, 22, 39, 72 bits
    for de, ce in errors:
        assert decode(k, data ^ de, checks ^ ce) == (CORRECTED, data), (de, ce)
    for (d1, c1), (d2, c2) in itertools.combinations(errors, 2):
        status, _ = decode(k, data ^ d1 ^ d2, checks ^ c1 ^ c2)
        assert status == DETECTED, (d1, c1, d2, c2)


@pytest.mark.parametrize("k", CODE_WIDTHS)
def test_a_triple_error_at_hamming_positions_3_5_6_decodes_silently_wrong(k):
    # 3 ^ 5 ^ 6 = 0: the syndrome vanishes and the parity is odd, so the decoder blames the overall parity bit.
    encode, decode = _library_code()
    data = 0x5A & ((1 << k) - 1)
    status, decoded = decode(k, data ^ 0b111, encode(k, data))  # data bits 0, 1, 2 sit at positions 3, 5, 6
    assert status == CORRECTED and decoded == data ^ 0b111


# --- ECC through the operator ----------------------------------------------------------------------


def test_the_contract_states_each_ecc_word():
    assert ECC_MODES == ("none", "secded", "secded64") and ON_DETECTED == ("keep", "zero")
    for width in CODE_WIDTHS:
        assert ECC_CODES["secded"][width] == (width, hamming_bits(width) + 1)
        assert ECC_CODES["secded64"][width] == (64, hamming_bits(64) + 1)

ECC_CASES = [("int8", "secded"), ("float16", "secded"), ("float32", "secded"), ("float64", "secded"),
             ("int8", "secded64"), ("float32", "secded64")]


def _codeword_length(type_name: str, ecc: str) -> tuple[int, int]:
    """(values per word, codeword bits), from the widths alone."""
    width = element_type(type_name).width
    k = width if ecc == "secded" else 64
    return k // width, k + hamming_bits(k) + 1


@pytest.mark.parametrize(("type_name", "ecc"), ECC_CASES)
def test_word_fractions_match_the_binomial_expectation(type_name, ecc):
    values, n = _codeword_length(type_name, ecc)
    p = 2e-3
    x = random_array(type_name, 1 << 18, seed=7)
    _, counts = flip_bits(x, p=p, ecc=ecc, seed=12, return_counts=True)
    words = -(-x.size // values)
    assert counts.words == words
    p0 = (1 - p) ** n
    p1 = n * p * (1 - p) ** (n - 1)
    p2 = math.comb(n, 2) * p**2 * (1 - p) ** (n - 2)
    p3plus = 1 - p0 - p1 - p2  # three or more errors: detected, miscorrected or, rarely, corrected
    assert within(counts.corrected, words, p1, extra=p3plus), counts
    assert within(counts.detected, words, p2, extra=p3plus), counts
    assert counts.silent <= words * p3plus + SIGMAS * math.sqrt(words * p3plus + 1.0), counts
    assert within(counts.corrected + counts.detected + counts.silent, words, 1 - p0), counts


@pytest.mark.parametrize("ecc", ["secded", "secded64"])
def test_one_way_flips_see_the_check_bits_values(ecc):
    # Zero data encodes to zero check bits: 1->0 flips find nothing to flip, 0->1 flips hit all n codeword bits.
    _, n = _codeword_length("float32", ecc)
    zeros = np.zeros(1 << 16, np.float32)
    _, none = flip_bits(zeros, p10=0.05, ecc=ecc, seed=1, return_counts=True)
    assert (none.corrected, none.detected, none.silent) == (0, 0, 0)
    p = 2e-3
    _, counts = flip_bits(zeros, p01=p, ecc=ecc, seed=1, return_counts=True)
    p3plus = 1 - (1 - p) ** n - n * p * (1 - p) ** (n - 1) - math.comb(n, 2) * p**2 * (1 - p) ** (n - 2)
    assert within(counts.corrected, counts.words, n * p * (1 - p) ** (n - 1), extra=p3plus), counts


@pytest.mark.parametrize(("type_name", "ecc"), ECC_CASES)
def test_corrected_words_read_the_written_values_and_detected_ones_follow_on_detected(type_name, ecc):
    values, _ = _codeword_length(type_name, ecc)
    x = random_array(type_name, 1 << 16, seed=5)
    x = np.where(raw(x) == 0, raw(x) | 1, raw(x)).view(x.dtype)  # no zero value: zeroed words are visible
    keep, kept = flip_bits(x, p=3e-3, ecc=ecc, seed=2, return_counts=True)
    zero, zeroed = flip_bits(x, p=3e-3, ecc=ecc, seed=2, on_detected="zero", return_counts=True)
    assert kept == zeroed and kept.detected > 0 and kept.corrected > 0
    changed_words = np.count_nonzero((raw(keep) != raw(x)).reshape(-1, values).any(axis=1))
    assert changed_words <= kept.detected + kept.silent
    zero_words = np.count_nonzero((raw(zero) == 0).reshape(-1, values).all(axis=1))
    assert zero_words == kept.detected


@pytest.mark.parametrize("ecc", ["none", "secded", "secded64"])
@pytest.mark.parametrize("size", [1, 5, 13, 1027])
def test_p0_is_bit_identical_with_ecc_and_partial_words(ecc, size):
    x = random_array("int8", size, seed=size)
    y, counts = flip_bits(x, p=0.0, ecc=ecc, seed=1, return_counts=True)
    assert np.array_equal(raw(y), raw(x)) and (counts.corrected, counts.detected, counts.silent) == (0, 0, 0)
    assert counts.words == (-(-size // 8) if ecc == "secded64" else size)


def test_ecc_words_and_counts_are_the_same_on_any_thread_count():
    x = random_array("float16", 1 << 18, seed=8)
    runs = [flip_bits(x, p=2e-3, s0=1e-3, s1=1e-3, ecc="secded64", seed=4, threads=t, return_counts=True)
            for t in (1, 2, 4)]
    assert runs[0][1].corrected > 0
    assert all(np.array_equal(raw(y), raw(runs[0][0])) and counts == runs[0][1] for y, counts in runs)


def test_without_ecc_every_changed_value_is_silent():
    x = random_array("float32", 1 << 15, seed=1)
    y, counts = flip_bits(x, p=1e-3, s1=1e-3, seed=3, return_counts=True)
    assert counts.silent == np.count_nonzero(raw(y) != raw(x)) > 0 and counts.corrected == counts.detected == 0


def test_flips_without_new_settings_are_those_of_flip_bits_alone():
    x = random_array("bfloat16", 1 << 14, seed=4)
    plain = flip_bits(x, p01=1e-2, p10=1e-3, seed=9)
    y, _ = flip_bits(x, p01=1e-2, p10=1e-3, seed=9, ecc="none", s0=0.0, s1=0.0, return_counts=True)
    assert np.array_equal(raw(plain), raw(y))


# --- settings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("settings", "message"), [
    ({"s0": 0.6, "s1": 0.5}, "exceeds 1"),
    ({"s0": -0.1}, "not a probability"),
    ({"ecc": "hamming"}, "ecc must be one of"),
    ({"on_detected": "trap"}, "on_detected must be one of"),
])
def test_bad_fault_settings_are_one_line_errors(settings, message):
    x = np.zeros(4, np.float32)
    with pytest.raises(OnnxflipError, match=message) as info:
        flip_bits(x, **settings)
    assert "\n" not in str(info.value)
    with pytest.raises(OnnxflipError, match=message):
        FaultModel(**settings)


def test_the_kernel_refuses_stuck_probabilities_above_one():
    model = flipbits_node_model(element_type("float32"), mask=0xFFFFFFFF, stream=0, randomness="fixed",
                                nonfinite="keep")
    model.graph.node[0].attribute.extend([onnx.helper.make_attribute("s0", 0.7), onnx.helper.make_attribute("s1", 0.7)])
    with pytest.raises(Exception, match="s0 \\+ s1"):
        make_session(model)


def test_ecc_on_a_width_it_cannot_protect_is_an_input_error(monkeypatch, tmp_path, capsys):
    import onnxflip.faults

    monkeypatch.setattr(onnxflip.faults, "ECC_CODES", {"secded": {8: (8, 5)}, "secded64": {}})
    with pytest.raises(OnnxflipError, match="cannot protect 32-bit float32"):
        insert_flipbits(template_classifier(), config=InjectionConfig(weights=FaultModel(ecc="secded")))
    path = tmp_path / "model.onnx"
    save_model(template_classifier(), path)
    assert main(["inject", str(path), "-o", str(tmp_path / "out.onnx"), "--ecc", "secded"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot protect" in err[0]


@pytest.mark.parametrize(("options", "message", "status"), [
    (["--stuck-at0", "0.6", "--stuck-at1", "0.5"], "exceeds 1", 1),
    (["--ecc", "parity"], "--ecc", 2),  # a value outside a choice list: a usage error, as for every choice
    (["--on-detected", "trap"], "--on-detected", 2),
])
def test_bad_fault_options_are_one_line_errors(tmp_path, capsys, options, message, status):
    path = tmp_path / "model.onnx"
    save_model(template_classifier(), path)
    assert main(["inject", str(path), "-o", str(tmp_path / "out.onnx"), *options]) == status
    assert not (tmp_path / "out.onnx").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxflip: error:") and message in err[0]


# --- injected models ---------------------------------------------------------------------------------


def test_an_ecc_target_reports_its_word_counts_and_materialised_weights_keep_them():
    weights = FaultModel(p01=2e-3, p10=2e-3, ecc="secded64", seed=3)
    config = InjectionConfig(activations=None, biases=None, weights=weights)
    injected = insert_flipbits(template_classifier(), config=config)
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    onnx.checker.check_model(runtime_proto(injected), full_check=True)
    name = counts_output_name("weights")
    outputs = [o.name for o in injected.graph.outputs]
    assert outputs == ["logits", name]
    first, second = (run_model(injected, {"input": x}) for _ in range(2))
    words = -(-(10 * 3072 + 100) // 2)  # the two weight tensors, two float32 values per 64-bit word
    sites = json.loads(injected.metadata_props[METADATA_KEY])["sites"]
    assert words_per_run(sites, "weights") == words
    p = 2e-3
    expected_corrected = words * 72 * p * (1 - p) ** 71
    assert np.array_equal(first[1], second[1])  # fixed weights: the same words every run
    assert within(int(first[1][0]), words, expected_corrected / words, extra=1e-3)
    materialized = materialize_parameters(injected)
    assert np.array_equal(run_model(materialized, {"input": x})[1], first[1])
    np.testing.assert_array_equal(run_model(materialized, {"input": x}, exact=True)[0],
                                  run_model(injected, {"input": x}, exact=True)[0])


def test_activation_words_per_run_scale_with_the_batch():
    activations = FaultModel(p01=1e-2, p10=1e-2, ecc="secded", randomness="per_run")
    injected = insert_flipbits(template_classifier(), config=InjectionConfig(activations=activations, weights=None,
                                                                            biases=None))
    sites = json.loads(injected.metadata_props[METADATA_KEY])["sites"]
    assert words_per_run(sites, "activations", batch=3) == 3 * (10 + 10)  # hidden and logits, one word per value
    counts = run_model(injected, {"input": np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)})[1]
    assert 0 < counts.sum() <= 60


def test_a_fed_stuck_seed_keeps_the_activation_memory_across_batch_seeds():
    activations = FaultModel(s1=0.01, randomness="per_run")
    injected = insert_flipbits(template_classifier(), config=InjectionConfig(activations=activations, weights=None,
                                                                            biases=None))
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)

    def logits(seed: int, stuck_seed: int | None) -> np.ndarray:
        feeds = {"input": x, "onnxflip_activations_seed": np.array(seed, np.int64)}
        if stuck_seed is not None:
            feeds["onnxflip_activations_stuck_seed"] = np.array([stuck_seed], np.int64)
        return raw(run_model(injected, feeds, exact=True)[0])

    assert np.array_equal(logits(1, 5), logits(2, 5))
    assert not np.array_equal(logits(1, None), logits(2, None))
    assert np.array_equal(logits(5, None), logits(1, 5))


def test_stuck_probabilities_are_control_inputs():
    config = InjectionConfig(activations=None, biases=None, weights=FaultModel(s1=0.0))
    injected = insert_flipbits(template_classifier(), config=config)
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    clean = run_model(injected, {"input": x}, exact=True)[0]
    stuck = run_model(injected, {"input": x, "onnxflip_weights_s1": np.array(0.05, np.float32)}, exact=True)[0]
    assert np.array_equal(run_model(template_classifier(), {"input": x}, exact=True)[0], clean)
    assert not np.array_equal(clean, stuck)


def _zero_rates(target: str, **rates: float) -> dict[str, np.ndarray]:
    values = dict.fromkeys(("p01", "p10", "s0", "s1"), 0.0) | rates
    return {control_input_name(target, w): np.array(v, np.float32) for w, v in values.items()}


@pytest.mark.parametrize(("fault", "given", "kept"), [
    ({}, _zero_rates("activations"), 1),  # every rate 0 for the trial: only the logits' FlipBits (an output) stays
    ({}, {control_input_name("activations", w): np.array(0.0, np.float32) for w in ("p01", "p10")}, 2),  # s0/s1 free
    ({}, _zero_rates("activations", s1=0.05), 2),  # stuck cells at p = 0 are faults
    ({"ecc": "secded"}, _zero_rates("activations"), 2),  # its word counts are read
], ids=["all-zero", "stuck-not-given", "stuck-at-p0", "ecc-counts-read"])
def test_materialising_drops_an_activation_flip_only_when_it_is_the_identity(fault, given, kept):
    activations = FaultModel(randomness="per_run", **fault)
    injected = insert_flipbits(template_classifier(), config=InjectionConfig(activations=activations, weights=None,
                                                                            biases=None))
    fixed = materialize_parameters(injected, given)
    assert sum(n.op_type == "FlipBits" for n in fixed.graph) == kept
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    clean = run_model(template_classifier(), {"input": x}, exact=True)[0]
    outputs = run_model(fixed, {"input": x, **given}, exact=True)
    stuck = float(given.get(control_input_name("activations", "s1"), 0.0)) > 0
    assert np.array_equal(outputs[0], clean) != stuck
    if fault.get("ecc"):
        assert outputs[1].tolist() == [0, 0, 0]


@pytest.mark.parametrize(("fault", "outputs"), [({"s1": 0.05}, 1), ({"ecc": "secded"}, 2)])
def test_fixed_weights_with_stuck_cells_or_ecc_at_p0_are_materialised_not_dropped(fault, outputs):
    """Stuck cells at p = 0 change the weights; ECC counts stay an output: the node becomes constants."""
    injected = insert_flipbits(template_classifier(), config=InjectionConfig(
        activations=None, biases=None, weights=FaultModel(seed=2, **fault)))
    fixed = materialize_parameters(injected)
    assert not any(n.op_type == "FlipBits" for n in fixed.graph)
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    in_graph, materialised = run_model(injected, {"input": x}, exact=True), run_model(fixed, {"input": x}, exact=True)
    assert len(materialised) == outputs
    for a, b in zip(in_graph, materialised):
        np.testing.assert_array_equal(a, b)
    clean = run_model(template_classifier(), {"input": x}, exact=True)[0]
    assert np.array_equal(materialised[0], clean) == ("ecc" in fault)

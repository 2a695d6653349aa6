"""The zoo's byte-level language model: text split, training steps, the optimum-style export, the shipped files.

Everything here builds the model at a tiny size and trains it for a few steps
on a tiny text; the shipped model is only loaded and run, never trained.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import onnx
import pytest
from conftest import needs_zoo_extra, run_model

from onnxflip.data.sources import MODEL_METADATA_KEY
from onnxflip.runtime.session import IR_VERSION

MODELS_DIR = pathlib.Path(__file__).resolve().parent.parent / "models"
SHIPPED = MODELS_DIR / "lm.onnx"
SHIPPED_EVAL = MODELS_DIR / "lm_eval.npz"
TINY = {"d_model": 32, "layers": 2, "heads": 2, "context": 32}


def _lm():
    needs_zoo_extra()
    from onnxflip.zoo import lm

    return lm


def _write_sources(root: pathlib.Path, files: int) -> None:
    """``files`` small Python files whose text names their sorted index, and one under site-packages."""
    for i in range(files):
        path = root / f"pkg{i % 3}" / f"mod{i:02d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# file {i:02d}\n" + "def f(x):\n    return x + 1\n" * 20)
    (root / "site-packages").mkdir(exist_ok=True)
    (root / "site-packages" / "outside.py").write_text("# not the standard library\n")


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    lm = _lm()
    root = tmp_path_factory.mktemp("stdlib")
    _write_sources(root, 40)
    return lm.stdlib_text(holdout_every=20, root=root)


@pytest.fixture(scope="module")
def tiny_trained(tiny_text, tmp_path_factory):
    """A tiny model trained for 2 steps on the tiny text and exported; (result, path)."""
    lm = _lm()
    config = lm.LMTrainConfig(model=lm.LMConfig(**TINY), steps=2, batch_size=4, warmup=1, eval_windows=4)
    result = lm.train_lm(config, text=tiny_text, progress=False)
    path = tmp_path_factory.mktemp("models") / "lm.onnx"
    lm.export_lm(result.model, path, info={"heldout_perplexity": result.heldout_perplexity})
    return result, path


def _shapes(values) -> dict[str, tuple[int, list]]:
    """Each graph input's or output's element type and shape, symbolic axes by name."""
    return {v.name: (v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in values}


def _check_layout(proto: onnx.ModelProto) -> dict:
    """Assert the optimum decoder-with-past layout; returns the model's metadata."""
    meta = json.loads({p.key: p.value for p in proto.metadata_props}[MODEL_METADATA_KEY])
    arch = meta["architecture"]
    layers, heads, head_dim = arch["layers"], arch["heads"], arch["d_model"] // arch["heads"]
    f32, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    past, total = "past_sequence_length", "past_sequence_length + sequence_length"
    expected_in = {"input_ids": (i64, ["batch_size", "sequence_length"]), "attention_mask": (i64, ["batch_size", total])}
    expected_out = {"logits": (f32, ["batch_size", "sequence_length", 256])}
    for i in range(layers):
        for kind in ("key", "value"):
            expected_in[f"past_key_values.{i}.{kind}"] = (f32, ["batch_size", heads, past, head_dim])
            expected_out[f"present.{i}.{kind}"] = (f32, ["batch_size", heads, total, head_dim])
    assert _shapes(proto.graph.input) == expected_in
    assert _shapes(proto.graph.output) == expected_out
    assert [v.name for v in proto.graph.input] == list(expected_in)  # inputs in optimum's order
    assert proto.ir_version <= IR_VERSION
    assert meta["vocabulary"] == "bytes"
    return meta


def _past(meta: dict, batch: int) -> dict[str, np.ndarray]:
    arch = meta["architecture"]
    shape = (batch, arch["heads"], 0, arch["d_model"] // arch["heads"])
    return {f"past_key_values.{i}.{kind}": np.zeros(shape, np.float32)
            for i in range(arch["layers"]) for kind in ("key", "value")}


def _decode(path, meta: dict, ids: np.ndarray, *, prefill: int) -> np.ndarray:
    """Logits of every position: the first ``prefill`` tokens in one pass, then one token per step, each step fed
    the previous step's present.* as past_key_values.*."""
    feeds, logits, done = _past(meta, ids.shape[0]), [], 0
    for end in ([prefill] if prefill else []) + list(range(max(prefill, 0) + 1, ids.shape[1] + 1)):
        outputs = run_model(path, {"input_ids": ids[:, done:end], "attention_mask": np.ones((ids.shape[0], end), np.int64),
                                   **feeds})
        logits.append(outputs[0])
        feeds = dict(zip(feeds, outputs[1:]))  # present.{i}.key/value in the order of past_key_values.{i}.*
        done = end
    return np.concatenate(logits, axis=1)


# --- the text -----------------------------------------------------------------------------------


def test_every_twentieth_file_is_held_out_and_site_packages_is_not_read(tiny_text):
    root = pathlib.Path(tiny_text.root)
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    markers = [p.read_bytes().split(b"\n")[0] for p in files]  # b"# file NN", in sorted-path order
    heldout, train = tiny_text.heldout.tobytes(), tiny_text.train.tobytes()
    assert tiny_text.files == 40 and tiny_text.heldout_files == 2
    assert [m for m in markers if m in heldout] == [markers[0], markers[20]]
    assert [m for m in markers if m in train] == [m for i, m in enumerate(markers) if i % 20]
    assert b"not the standard library" not in heldout + train


def test_eval_sequences_are_non_overlapping_held_out_windows(tiny_text):
    lm = _lm()
    sequences = lm.eval_sequences(tiny_text, samples=8, length=16)
    assert sequences.dtype == np.int64 and sequences.shape == (8, 16)
    heldout = tiny_text.heldout
    rows = {bytes(heldout[start : start + 16]): start for start in range(0, heldout.size - 15, 16)}
    starts = [rows[bytes(row.astype(np.uint8))] for row in sequences]  # each row is a whole window of the split
    assert len(set(starts)) == 8


# --- training and export ------------------------------------------------------------------------


def test_training_steps_lower_the_loss(tiny_text):
    lm = _lm()
    config = lm.LMTrainConfig(model=lm.LMConfig(**TINY), steps=40, batch_size=8, lr=1e-2, warmup=5, eval_windows=4)
    result = lm.train_lm(config, text=tiny_text, progress=False)
    assert len(result.losses) == 40
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5]) - 1
    assert 1 < result.heldout_perplexity < 256


def test_export_has_the_optimum_decoder_layout(tiny_trained):
    result, path = tiny_trained
    proto = onnx.load(path)
    meta = _check_layout(proto)
    assert meta["parameters"] == sum(p.numel() for p in result.model.parameters())
    shapes = {init.name: list(init.dims) for init in proto.graph.initializer}
    assert shapes["blocks.1.qkv.weight"] == [32, 96] and shapes["head.weight"] == [32, 256]  # stored in x out
    assert not [name for name in shapes if name.startswith("onnx::")]


def test_export_matches_torch(tiny_trained):
    import torch

    result, path = tiny_trained
    meta = _check_layout(onnx.load(path))
    ids = np.random.default_rng(0).integers(0, 256, (3, 20), dtype=np.int64)
    with torch.no_grad():
        expected = result.model(torch.from_numpy(ids), torch.ones(3, 20, dtype=torch.int64),
                                *result.model.empty_past(3))[0].numpy()
    (got, *_) = run_model(path, {"input_ids": ids, "attention_mask": np.ones_like(ids), **_past(meta, 3)})
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("prefill", [0, 7])
def test_decode_loop_matches_the_full_pass(tiny_trained, prefill):
    _, path = tiny_trained
    meta = _check_layout(onnx.load(path))
    ids = np.random.default_rng(1).integers(0, 256, (2, 12), dtype=np.int64)
    (full, *presents) = run_model(path, {"input_ids": ids, "attention_mask": np.ones_like(ids), **_past(meta, 2)})
    assert all(p.shape[2] == 12 for p in presents)
    np.testing.assert_allclose(_decode(path, meta, ids, prefill=prefill), full, atol=1e-4, rtol=0)


def test_right_padding_leaves_the_real_tokens_logits(tiny_trained):
    _, path = tiny_trained
    meta = _check_layout(onnx.load(path))
    ids = np.random.default_rng(2).integers(0, 256, (2, 10), dtype=np.int64)
    (full, *_) = run_model(path, {"input_ids": ids, "attention_mask": np.ones_like(ids), **_past(meta, 2)})
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    padded = np.where(mask == 1, ids, 0)
    (got, *_) = run_model(path, {"input_ids": padded, "attention_mask": mask, **_past(meta, 2)})
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[0], full[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got[1, :6], full[1, :6], atol=1e-5, rtol=0)


def test_cli_trains_and_writes_the_model_and_its_sequences(tiny_text, tmp_path, monkeypatch):
    lm = _lm()
    from onnxflip.cli import main

    tiny = lm.LMTrainConfig(model=lm.LMConfig(**TINY), eval_windows=4)
    monkeypatch.setattr(lm, "LMTrainConfig", lambda: tiny)  # the command's defaults, at a tiny size
    monkeypatch.setattr(lm, "stdlib_text", lambda holdout_every: tiny_text)
    out = tmp_path / "small.onnx"
    assert main(["zoo", "train", "--model", "lm", "--steps", "2", "--batch-size", "4", "--seed", "1", "-o", str(out)]) == 0
    meta = _check_layout(onnx.load(out))
    assert meta["training"]["steps"] == 2 and meta["training"]["batch_size"] == 4 and meta["training"]["seed"] == 1
    with np.load(tmp_path / "small_eval.npz") as data:
        assert data["input_ids"].dtype == np.int64 and data["input_ids"].shape[1] == 64


@pytest.mark.parametrize(("args", "word"), [(["--model", "lm", "--data", "x"], "--data"),
                                            (["--model", "lm", "--epochs", "2"], "--epochs"),
                                            (["--model", "vgg11", "--steps", "2"], "--steps")])
def test_cli_refuses_options_of_the_other_kind_of_model(tmp_path, capsys, args, word):
    needs_zoo_extra()
    from onnxflip.cli import main

    assert main(["zoo", "train", *args, "-o", str(tmp_path / "m.onnx")]) == 2
    assert word in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


# --- the shipped files --------------------------------------------------------------------------


def test_shipped_sequences_are_held_out_bytes():
    with np.load(SHIPPED_EVAL) as data:
        assert set(data.files) == {"input_ids"}
        ids = data["input_ids"]
    assert ids.dtype == np.int64 and ids.shape == (256, 64)
    assert ids.min() >= 0 and ids.max() < 256
    assert len({row.tobytes() for row in ids}) == 256


def test_shipped_model_has_the_layout_decodes_like_its_full_pass_and_beats_chance():
    proto = onnx.load(SHIPPED)
    meta = _check_layout(proto)
    assert 1e6 * 0.5 < meta["parameters"] < 3e6 and SHIPPED.stat().st_size < 10e6
    assert 1 < meta["heldout_perplexity"] < 256
    with np.load(SHIPPED_EVAL) as data:
        ids = data["input_ids"][:2, :16]
    (full, *_) = run_model(SHIPPED, {"input_ids": ids, "attention_mask": np.ones_like(ids), **_past(meta, 2)})
    np.testing.assert_allclose(_decode(SHIPPED, meta, ids, prefill=8), full, atol=1e-4, rtol=0)
    # Next-byte cross entropy on the held-out bytes, far below chance's log(256).
    logp = full[:, :-1] - np.log(np.exp(full[:, :-1]).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, ids[:, 1:, None], axis=-1).mean()
    assert nll < np.log(256) / 2

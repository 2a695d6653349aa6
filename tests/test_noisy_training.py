"""Noisy training: the torch FlipBits operator against ONNX Runtime's, its gradient, and `zoo train --noise-p`."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import needs_zoo_extra, popcount, random_array, raw, tiny_vgg

needs_zoo_extra()
import torch  # noqa: E402 - after the skip where the zoo extra is missing

from onnxflip import OnnxflipError  # noqa: E402
from onnxflip.bits import field_mask  # noqa: E402
from onnxflip.cli import main  # noqa: E402
from onnxflip.graph.sites import find_sites  # noqa: E402
from onnxflip.runtime.contract import element_type  # noqa: E402
from onnxflip.runtime.flip import flipbits_node_model, run_flipbits_session  # noqa: E402
from onnxflip.runtime.session import make_session  # noqa: E402
from onnxflip.runtime.torch_flip import flip_tensor, flip_tensor_ste  # noqa: E402
from onnxflip.zoo.noise import NoiseSettings, activation_sites, noisy_forward, weight_sites  # noqa: E402
from onnxflip.zoo.train import TrainConfig, train  # noqa: E402

SIGMAS = 4.5  # flip counts must lie within this many binomial standard deviations of the mean
FLOAT32 = element_type("float32")


def _ort_flips(x: np.ndarray, *, p: float, bits: str, seed: int, stream: int, run: int) -> np.ndarray:
    """What a one-node FlipBits model (per_run) outputs at its run ``run`` (the session runs run + 1 times)."""
    model = flipbits_node_model(FLOAT32, mask=field_mask(FLOAT32, bits), stream=stream, randomness="per_run",
                                nonfinite="keep")
    session = make_session(model)
    for _ in range(run + 1):
        out = run_flipbits_session(session, x, p01=p, p10=p, seed=seed)
    return out


@pytest.mark.parametrize("run", [0, 1, 3])
@pytest.mark.parametrize("bits", ["all", "mantissa", "0x40000000"])
def test_the_torch_op_draws_the_flips_of_onnx_runtime(run, bits):
    x = random_array("float32", 10_000, seed=run)  # ten blocks, NaNs and infinities among the values
    expected = _ort_flips(x, p=3e-3, bits=bits, seed=123456789, stream=7, run=run)
    got = flip_tensor(torch.from_numpy(x), p=3e-3, bits=bits, seed=123456789, stream=7, run=run).numpy()
    assert popcount(raw(expected) ^ raw(x)) > 0
    np.testing.assert_array_equal(raw(got), raw(expected))


def test_each_run_stream_and_seed_draws_other_flips_and_the_input_is_kept():
    x = torch.from_numpy(random_array("float32", 4096, seed=1))
    before = x.clone()
    draws = [flip_tensor(x, p=1e-2, seed=s, stream=k, run=r).numpy() for s, k, r in
             [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0)]]
    again = flip_tensor(x, p=1e-2, seed=0, stream=0, run=0).numpy()
    np.testing.assert_array_equal(raw(again), raw(draws[0]))
    for i in range(len(draws)):
        for j in range(i):
            assert not np.array_equal(raw(draws[i]), raw(draws[j])), (i, j)
    assert torch.equal(x.view(torch.int32), before.view(torch.int32))


def test_the_gradient_passes_straight_through():
    x = torch.randn(3, 1000, dtype=torch.float32, requires_grad=True)
    upstream = torch.randn(3, 1000)
    y = flip_tensor_ste(x, p=0.05, bits="mantissa", seed=3, stream=1, run=2)
    assert not torch.equal(y, x.detach())
    y.backward(upstream)
    assert torch.equal(x.grad, upstream)
    (jacobian,) = torch.autograd.grad(flip_tensor_ste(x, p=0.05, seed=3).sum(), x)
    assert torch.equal(jacobian, torch.ones_like(x))


def test_p_zero_leaves_the_tensor_bit_identical():
    x = random_array("float32", 5000, seed=2)
    out = flip_tensor(torch.from_numpy(x), p=0.0, seed=9, stream=4, run=11).numpy()
    np.testing.assert_array_equal(raw(out), raw(x))


@pytest.mark.parametrize(("p", "bits"), [(1e-4, "all"), (1e-2, "all"), (1e-3, "exponent")])
def test_flip_count_is_binomial(p, bits):
    n = 1 << 20
    x = random_array("float32", n, seed=4)
    flipped = flip_tensor(torch.from_numpy(x), p=p, bits=bits, seed=5, stream=2, run=6).numpy()
    diff = raw(flipped) ^ raw(x)
    mask = field_mask(FLOAT32, bits)
    assert not np.any(diff & np.uint32(~mask & FLOAT32.all_bits)), "a bit outside the field changed"
    trials = n * bin(mask).count("1")
    mean, sd = trials * p, math.sqrt(trials * p * (1 - p))
    assert abs(popcount(diff) - mean) <= SIGMAS * sd, (popcount(diff), mean, sd)


def test_bad_settings_are_refused_in_one_line():
    x = torch.zeros(8)
    with pytest.raises(OnnxflipError, match="not a probability"):
        flip_tensor(x, p=1.5, seed=0)
    with pytest.raises(OnnxflipError, match="does not support element type"):
        flip_tensor(torch.zeros(8, dtype=torch.int64), p=0.1, seed=0)
    with pytest.raises(OnnxflipError, match="noise targets"):
        NoiseSettings(p=0.1, targets="biases")
    with pytest.raises(OnnxflipError, match="bit field"):
        NoiseSettings(p=0.1, bits="low:3")


def test_the_activation_sites_are_those_of_the_exported_model(vgg_path):
    """One torch activation site per activation site find_sites reports on the exported model (the logits being
    one of them), and one torch weight site per ONNX weight (the exported model adds the folded Conv biases)."""
    model = tiny_vgg()
    exported = ir.serde.deserialize_model(onnx.load(vgg_path))
    onnx_activations = find_sites(exported, targets=["activations"])
    assert len(onnx_activations) == len(activation_sites(model)) + 1
    onnx_weights = find_sites(exported, targets=["weights"])
    assert len(onnx_weights) == sum(name.endswith(".weight") for name in weight_sites(model))


def test_the_noisy_forward_pass_flips_only_inside_the_call():
    model = tiny_vgg()
    model.train()
    x = torch.rand(4, 3, 32, 32)
    clean_state = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    outputs = {}
    for targets in ("weights", "activations", "all"):
        forward = noisy_forward(model, NoiseSettings(p=1e-3, targets=targets, bits="mantissa"), seed=0)
        outputs[targets] = forward(x, 0).detach()
        outputs[targets + " again"] = forward(x, 0).detach()
        outputs[targets + " next step"] = forward(x, 1).detach()
    clean = model(x).detach()
    for targets in ("weights", "activations", "all"):
        assert torch.equal(outputs[targets], outputs[targets + " again"]), targets
        assert not torch.equal(outputs[targets], outputs[targets + " next step"]), targets
        assert not torch.equal(outputs[targets], clean), targets
    for key, value in clean_state.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert torch.equal(noisy_forward(model, NoiseSettings(), seed=0)(x, 0).detach(), clean)


@pytest.mark.parametrize("targets", ["weights", "activations", "all"])
def test_training_with_noise_runs_and_updates_the_weights(synthetic_data, targets):
    noise = NoiseSettings(p=1e-3, targets=targets, bits="mantissa")
    config = TrainConfig(model="vgg11", width=0.125, epochs=1, batch_size=25, lr=0.05, max_steps=2, noise=noise)
    result = train(config, data_dir=synthetic_data, progress=False)
    clean = train(TrainConfig(**{**config.__dict__, "noise": NoiseSettings()}), data_dir=synthetic_data,
                  progress=False)
    assert len(result.losses) == 2 and all(math.isfinite(v) for v in result.losses)
    assert result.losses[0] != clean.losses[0]  # the first step's forward pass already flipped
    assert result.skipped_steps == 0


def test_the_checkpoint_keeps_the_noise_and_a_resume_needs_the_same(synthetic_data, tmp_path):
    noise = NoiseSettings(p=1e-3, targets="weights", bits="mantissa")
    config = TrainConfig(model="vgg11", width=0.125, epochs=1, batch_size=50, lr=0.05, noise=noise)
    ckpt = tmp_path / "noisy.ckpt"
    first = train(config, data_dir=synthetic_data, checkpoint=ckpt, progress=False)
    state = torch.load(ckpt, weights_only=False)
    assert NoiseSettings.from_json(state["config"]["noise"]) == noise
    resumed = train(config, data_dir=synthetic_data, checkpoint=ckpt, progress=False)  # nothing left to train
    assert resumed.losses == first.losses
    other = TrainConfig(**{**config.__dict__, "noise": NoiseSettings(p=1e-2, targets="weights", bits="mantissa")})
    with pytest.raises(OnnxflipError, match="other settings"):
        train(other, data_dir=synthetic_data, checkpoint=ckpt, progress=False)
    # A checkpoint written before the noise settings existed is one without noise.
    del state["config"]["noise"]
    torch.save(state, ckpt)
    with pytest.raises(OnnxflipError, match="other settings"):
        train(config, data_dir=synthetic_data, checkpoint=ckpt, progress=False)
    train(TrainConfig(**{**config.__dict__, "noise": NoiseSettings()}), data_dir=synthetic_data, checkpoint=ckpt,
          progress=False)


def test_cli_trains_with_noise_and_records_it(synthetic_data, tmp_path, capsys):
    out = tmp_path / "noisy.onnx"
    code = main(["zoo", "train", "--model", "vgg11", "--width", "0.125", "--epochs", "1", "--batch-size", "50",
                 "--data", str(synthetic_data), "-o", str(out), "--noise-p", "1e-3", "--noise-targets", "activations",
                 "--noise-bits", "mantissa"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "trained with flips (p 0.001, activations, bits mantissa" in captured.out
    meta = json.loads({p.key: p.value for p in onnx.load(out).metadata_props}["onnxflip.model"])
    expected = NoiseSettings(p=1e-3, targets="activations", bits="mantissa")
    assert NoiseSettings.from_json(meta["noise"]) == expected and meta["noise_skipped_steps"] == 0
    state = torch.load(out.with_suffix(".ckpt"), weights_only=False)
    assert NoiseSettings.from_json(state["config"]["noise"]) == expected


@pytest.mark.parametrize(("extra", "message"), [
    (["--noise-targets", "weights"], "training without --noise-p does not use --noise-targets"),
    (["--noise-p", "0", "--noise-bits", "mantissa"], "training without --noise-p does not use --noise-bits"),
    (["--noise-p", "1.5"], "--noise-p"),
    (["--noise-p", "1e-3", "--noise-targets", "biases"], "--noise-targets"),
    (["--noise-p", "1e-3", "--noise-bits", "low:3"], "bit field"),
    (["--model", "lm", "--noise-p", "1e-3"], "--model lm does not use --noise-p"),
])
def test_cli_refuses_contradictory_noise_options_in_one_line(tmp_path, capsys, extra, message):
    out = tmp_path / "never.onnx"
    vgg = [] if "lm" in extra else ["--width", "0.125", "--data", str(tmp_path)]
    code = main(["zoo", "train", *vgg, "-o", str(out), *extra])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0] and not out.exists(), lines


def test_a_run_can_start_from_another_runs_weights(synthetic_data, tmp_path, capsys):
    plain = tmp_path / "plain.onnx"
    common = ["zoo", "train", "--model", "vgg11", "--width", "0.125", "--epochs", "1", "--batch-size", "50",
              "--data", str(synthetic_data)]
    assert main([*common, "-o", str(plain)]) == 0
    base = torch.load(plain.with_suffix(".ckpt"), weights_only=False)["model"]
    tuned = tmp_path / "tuned.onnx"
    code = main([*common, "--lr", "1e-9", "--init", str(plain.with_suffix(".ckpt")), "--noise-p", "1e-4",
                 "--noise-targets", "weights", "--noise-bits", "mantissa", "-o", str(tuned)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    state = torch.load(tuned.with_suffix(".ckpt"), weights_only=False)
    assert state["config"]["init"] == str(plain.with_suffix(".ckpt"))
    # A peak learning rate of 1e-9 leaves the weights where the first run left them (a random start would not),
    # and a fine-tune keeps the BatchNorm statistics as they were (the flipped activations never reach them).
    for key, value in base.items():
        if value.is_floating_point():
            torch.testing.assert_close(state["model"][key], value, atol=1e-6 if "running" not in key else 0,
                                       rtol=0, msg=key)
    meta = json.loads({p.key: p.value for p in onnx.load(tuned).metadata_props}["onnxflip.model"])
    assert meta["init"] == "plain.ckpt"


@pytest.mark.parametrize(("model", "width", "message"), [("vgg11", "0.25", "not vgg11 at width 0.25"),
                                                         ("vgg13", "0.125", "not vgg13 at width 0.125")])
def test_a_start_from_another_network_is_refused_in_one_line(synthetic_data, tmp_path, capsys, model, width,
                                                            message):
    plain = tmp_path / "plain.onnx"
    common = ["--epochs", "1", "--batch-size", "50", "--data", str(synthetic_data)]
    assert main(["zoo", "train", "--model", "vgg11", "--width", "0.125", *common, "-o", str(plain)]) == 0
    capsys.readouterr()
    out = tmp_path / "other.onnx"
    code = main(["zoo", "train", "--model", model, "--width", width, *common, "--init",
                 str(plain.with_suffix(".ckpt")), "-o", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and message in lines[0] and not out.exists(), lines


def test_a_step_the_flips_make_non_finite_changes_nothing(synthetic_data):
    """At p = 0.3 every step's flips make the loss, a gradient or a BatchNorm statistic inf or NaN: no step
    updates the weights, and the BatchNorm statistics stay as they were (the forward pass alone would change
    them)."""
    from onnxflip.zoo.models import build_model

    config = TrainConfig(model="vgg11", width=0.125, epochs=1, batch_size=25, lr=0.05, max_steps=3,
                         noise=NoiseSettings(p=0.3, targets="activations"))
    result = train(config, data_dir=synthetic_data, progress=False)
    torch.manual_seed(config.seed)
    initial = build_model("vgg11", width=0.125).state_dict()
    assert result.skipped_steps == 3
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, initial[key]), key

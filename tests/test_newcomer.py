"""What a new user tripped over, each as the user ran it: the grid's table, a failed run's folder, ..."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from onnxflip.cli import main


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _images(tmp_path: pathlib.Path, count: int = 40) -> pathlib.Path:
    rng = np.random.default_rng(1)
    path = tmp_path / "images.npz"
    np.savez(path, input=rng.random((count, 3, 32, 32), dtype=np.float32), labels=rng.integers(0, 10, count))
    return path


def _class_zero_model(tmp_path: pathlib.Path, *, samples: int = 200, share: float = 0.7) -> tuple[pathlib.Path,
                                                                                                   pathlib.Path]:
    """A 3-class model (64 inputs, 1024 ReLU units, 3 logits) that predicts class 0 for ``share`` of its
    ``samples`` samples (an .npz of inputs, no labels), and whose outputs at p = 1e-2 are all NaN or inf."""
    import onnx
    from conftest import model_from_text

    rng = np.random.default_rng(0)
    hidden, width = 1024, 64
    w1 = (rng.normal(size=(hidden, width)) / 8).astype(np.float32)
    w2 = (rng.normal(size=(3, hidden)) / 16).astype(np.float32)
    x = rng.normal(size=(samples, width)).astype(np.float32)
    logits = np.maximum(x @ w1.T, 0) @ w2.T
    margin = logits[:, 0] - logits[:, 1:].max(axis=1)
    bias = np.array([1e-3 - np.quantile(margin, 1 - share), 0, 0], np.float32)  # class 0 for `share` of them
    assert np.mean((logits + bias).argmax(axis=1) == 0) == share
    model = model_from_text(f"""
    <ir_version: 10, opset_import: ["" : 21]>
    g (float[N,{width}] input) => (float[N,3] y) <float[{hidden},{width}] W1, float[3,{hidden}] W2, float[3] b> {{
      h = Gemm <transB = 1> (input, W1)
      r = Relu (h)
      y = Gemm <transB = 1> (r, W2, b)
    }}""", [onnx.numpy_helper.from_array(w1, "W1"), onnx.numpy_helper.from_array(w2, "W2"),
            onnx.numpy_helper.from_array(bias, "b")])
    onnx.save(model, tmp_path / "three.onnx")
    np.savez(tmp_path / "three.npz", input=x)
    return tmp_path / "three.onnx", tmp_path / "three.npz"


def test_outputs_all_nan_agree_with_nothing(tmp_path, capsys):
    """The user's model: at p = 1e-2 every output is NaN or inf, and the clean model predicts class 0 for 70% of
    the samples.  Under NumPy's argmax rule each NaN vector "predicted" class 0 and agreed 68% of the time, and the
    run called the model robust ("midpoint above the range"); now a ruined output agrees with nothing, the table
    shows the non-finite share beside the score, and results.json records the rule.  --nonfinite-score argmax
    gives the old numbers back."""
    model, data = _class_zero_model(tmp_path)

    def evaluate(*extra: str) -> tuple[dict, str]:
        out = tmp_path / f"r{len(extra)}"
        code, printed, err = _cli(capsys, "evaluate", model, "--data", data, "--metric", "agreement",
                                  "--p", "0,1e-4,1e-3,1e-2", "--trials", "3", "--out", out, *extra)
        assert code == 0, err
        return json.loads((out / "results.json").read_text()), printed

    result, printed = evaluate()
    ruined = result["rows"][-1]
    assert ruined["p"] == 1e-2 and ruined["nonfinite"] == 1.0  # every output NaN or inf
    assert ruined["mean"] == 0.0 and result["midpoint"]["status"] == "below", result["midpoint"]
    row = next(line for line in printed.splitlines() if line.split()[:1] == ["0.01"])
    assert row.split()[:4] == ["0.01", "3", "0.0000", "100.0%"], printed
    assert ("nonfinite: the share of samples whose output holds NaN or inf; agreement scores them as wrong "
            "(--nonfinite-score wrong)") in printed
    assert result["experiment"]["nonfinite_score"] == result["nonfinite_score"] == "wrong"

    old, printed = evaluate("--nonfinite-score", "argmax")
    assert old["rows"][-1]["nonfinite"] == 1.0 and 0.6 < old["rows"][-1]["mean"] <= 0.7  # NaN "agrees" on class 0
    assert old["experiment"]["nonfinite_score"] == old["nonfinite_score"] == "argmax"
    assert "agreement ranks NaN as the largest value (--nonfinite-score argmax)" in printed


def test_a_grid_whose_score_dips_below_the_level_is_not_called_above_the_range(tmp_path, capsys):
    """The user's grid, scored by the argmax rule: the table shows the score below the midpoint level at p = 1e-4
    and above it at 1e-2 (the NaN outputs there agree with the clean class 0); the verdict follows from every
    point, so it is not "above" but non-monotone, naming both points, and no midpoint is claimed."""
    model, data = _class_zero_model(tmp_path)
    code, out, err = _cli(capsys, "evaluate", model, "--data", data, "--metric", "agreement", "--nonfinite-score",
                          "argmax", "--p", "0,1e-4,1e-3,1e-2", "--trials", "3", "--out", tmp_path / "r")
    assert code == 0, err
    result = json.loads((tmp_path / "r" / "results.json").read_text())
    mid, means = result["midpoint"], {r["p"]: r["mean"] for r in result["rows"]}
    assert means[1e-4] < mid["level"] <= means[1e-2], means  # the data the verdict must not contradict
    assert mid["status"] == "non-monotone" and mid["p"] is None and "bound_p" not in mid
    assert mid["note"].startswith(f"the score falls below the midpoint level 0.6667 at p = 0.0001 (mean "
                                  f"{means[1e-4]:.4f}) but is above it again at p = 0.01 (mean {means[1e-2]:.4f}): the measured range holds no midpoint to claim")
    assert f"no midpoint: {mid['note']}" in out and "above the range" not in out
    assert result["stop_reason"] == "the points fall below the midpoint level and rise above it again"


def test_a_grid_prints_the_score_of_each_probability_with_its_interval(vgg_path, tmp_path, capsys):
    code, out, err = _cli(capsys, "evaluate", vgg_path, "--data", _images(tmp_path), "--metric", "agreement",
                          "--p", "0,1e-3", "--trials", "3", "--out", tmp_path / "r")
    assert code == 0, err
    rows = json.loads((tmp_path / "r" / "results.json").read_text())["rows"]
    lines = out.splitlines()
    header = lines.index(next(line for line in lines if line.split()[:3] == ["p", "trials", "mean"]))
    clean, faulty = lines[header + 1].split(), lines[header + 2].split()
    assert clean[:3] == ["0", "1", "1.0000"] and "clean model" in lines[header + 1]
    assert faulty[:3] == ["0.001", "3", f"{rows[1]['mean']:.4f}"]
    assert lines[header + 2].endswith(f"[{rows[1]['low']:.4f}, {rows[1]['high']:.4f}]")
    assert rows[1]["low"] <= rows[1]["mean"] <= rows[1]["high"]


def test_the_interval_of_a_grid_point_covers_the_mean_95_percent_of_the_time():
    """Student's t over 3 trials' scores: simulated trials (normal, mean 0.6, sd 0.1, far from the clip at 0
    and 1), 4,000 seeded replications; coverage within 0.93..0.97 (the binomial sd at 0.95 is 0.0034)."""
    from onnxflip.campaign.results import mean_interval

    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(4000):
        low, high = mean_interval(rng.normal(0.6, 0.1, size=3))
        hits += low <= 0.6 <= high
    assert 0.93 <= hits / 4000 <= 0.97
    assert mean_interval(np.array([0.5])) == (None, None) and mean_interval(np.array([0.5, 0.5])) == (0.5, 0.5)


def test_a_run_that_fails_before_any_result_leaves_no_results_folder(tmp_path, capsys):
    """A model ONNX Runtime cannot load fails at the first trial, after the folder is made: it is removed
    again; a folder that was there before is kept."""
    from conftest import write_unloadable_model

    model = write_unloadable_model(tmp_path / "m.onnx")
    data = tmp_path / "x.npz"
    np.savez(data, x=np.ones((4, 4)))
    for out, existed in ((tmp_path / "new" / "results", False), (tmp_path / "kept", True)):
        if existed:
            out.mkdir()
        code, _, err = _cli(capsys, "evaluate", model, "--data", data, "--metric", "rel-error", "--p", "1e-3",
                            "--trials", "1", "--out", out)
        assert code == 1 and "ONNX Runtime cannot load the model" in err
        assert out.is_dir() == existed


def test_a_build_that_cannot_fetch_the_headers_says_what_to_do_in_one_line(tmp_path):
    """Without Debian's archive keyring (or apt-get), the header fetch the build runs fails in one line that
    names ONNXRUNTIME_INCLUDE_DIR; nothing is fetched."""
    import os
    import subprocess

    script = pathlib.Path(__file__).parent.parent / "custom_ops" / "cmake" / "fetch_onnxruntime_headers.sh"
    env = {**os.environ, "ONNXFLIP_ORT_DEB_KEYRING": str(tmp_path / "no-keyring.gpg")}
    done = subprocess.run(["bash", str(script), str(tmp_path / "headers")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and done.stdout == "" and done.stderr.count("\n") == 1
    assert "keyring" in done.stderr and "-DONNXRUNTIME_INCLUDE_DIR=" in done.stderr
    assert not (tmp_path / "headers").exists()


def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    """The README's first Python example (inject, a session run on a batch, flip_bits on an array, ECC counts)
    runs as written where the checkout's models/ folder is, on the shipped VGG-A, every name it uses defined."""
    import re

    root = pathlib.Path(__file__).parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    start = readme.index("From Python")  # the first example
    code = re.search(r"```python\n(.*?)```", readme[start:], re.DOTALL).group(1)
    (tmp_path / "models").symlink_to(root / "models")  # the checkout's root, but noisy.onnx written in tmp_path
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "noisy.onnx").is_file() and namespace["y"].shape == namespace["x"].shape
    assert namespace["logits"].shape == (8, 10) and np.isfinite(namespace["logits"]).all()


def test_warnings_and_counts_read_like_the_command_s_own_lines(vgg_path, tmp_path):
    """A module's warning is printed as ``onnxflip: warning: ...`` like the commands' own, and one trial is
    "1 trial" (the command run as a user runs it, in its own process)."""
    import subprocess
    import sys

    split = tmp_path / "train"
    for name in ("cat", "dog"):
        (split / name).mkdir(parents=True)
        for i in range(2):
            from PIL import Image

            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(split / name / f"{i}.png")
    done = subprocess.run([sys.executable, "-m", "onnxflip.cli", "evaluate", str(vgg_path), "--data", str(split),
                           "--p", "0", "--trials", "1", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning" in line.lower()]
    assert warnings and all(line.startswith("onnxflip: warning: ") for line in warnings), done.stderr
    assert "; 1 trial in " in done.stdout


def test_the_figure_says_what_was_measured_and_names_each_element(vgg_path, tmp_path, capsys):
    import matplotlib.pyplot as plt

    from onnxflip.report.plots import figure

    code, _, err = _cli(capsys, "evaluate", vgg_path, "--data", _images(tmp_path), "--metric", "agreement",
                        "--p", "0,1e-5,1e-4,1e-3,1e-2", "--trials", "2", "--out", tmp_path / "r")
    assert code == 0, err
    result = json.loads((tmp_path / "r" / "results.json").read_text())
    fig = figure([result])
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "fitted curve" in legend and "its 95% band" in legend
    assert any(t.startswith("clean (p = 0) 1.0000") for t in legend)
    if result["midpoint"]["p"]:
        assert any(t.startswith(f"midpoint {result['midpoint']['p']:.3g}") for t in legend)
    assert "vgg.onnx" in ax.get_title() and "40 samples per trial, 9 trials" in ax.get_title()
    plt.close(fig)


def test_the_terminal_bar_shows_the_estimate_and_width_a_log_shows(monkeypatch, capsys):
    import io
    import sys

    from onnxflip.cli import _Progress

    terminal = io.StringIO()
    terminal.isatty = lambda: True
    monkeypatch.setattr(sys, "stderr", terminal)
    progress = _Progress("local")
    for _ in range(3):
        progress.on_batch()
    progress.on_step({"event": "fit", "x": -5.52, "trials": 35, "seconds": 12.0, "width": 0.18})
    progress.bar.refresh()
    progress.close()
    shown = terminal.getvalue()
    assert "fit at log10 p = -5.52: 35 trials, Wald width 0.18 decades" in shown and "3 batches" in shown


def test_zoo_train_promises_only_the_data_it_reads_and_draws_no_bar_into_a_log(tmp_path, capsys, monkeypatch):
    import pytest

    from onnxflip import cli
    from onnxflip.errors import OnnxflipError

    pytest.importorskip("torch", reason="needs the zoo extra")
    option = next(p for p in cli.zoo.commands["train"].params if p.name == "data")
    assert "CIFAR-10" in option.help and ".npz" not in option.help and "ImageFolder tree" not in option.help
    seen = {}

    def stop(config, **kwargs):
        seen.update(kwargs)
        raise OnnxflipError("stopped")

    import onnxflip.zoo.train

    monkeypatch.setattr(onnxflip.zoo.train, "train", stop)
    code, _, err = _cli(capsys, "zoo", "train", "--epochs", "1", "-o", tmp_path / "m.onnx")
    assert code == 1 and "stopped" in err and seen["progress"] is False  # stderr is no terminal here


def test_a_converted_model_is_evaluated_as_the_original_in_its_format(vgg_path, tmp_path, capsys):
    """The clean baseline of a format: evaluate scores a model convert wrote, clean and with flips, to the
    numbers of the original evaluated with --format (the same sites, in the same order, the same flips)."""
    converted = tmp_path / "f16.onnx"
    assert _cli(capsys, "convert", vgg_path, "-o", converted, "--format", "float16")[0] == 0
    data = _images(tmp_path)
    rows = []
    for model, extra in ((converted, []), (vgg_path, ["--format", "float16"])):
        out = tmp_path / f"r{len(rows)}"
        code, _, err = _cli(capsys, "evaluate", model, "--data", data, "--metric", "agreement", "--p", "0,1e-4",
                            "--trials", "2", "--out", out, *extra)
        assert code == 0, err
        rows.append([(r["p"], r["mean"]) for r in json.loads((out / "results.json").read_text())["rows"]])
    assert rows[0] == rows[1] and rows[0][0] == (0.0, 1.0) and rows[0][1][1] < 1.0


def test_resume_extends_a_finished_grid_with_more_trials_and_points(vgg_path, tmp_path, capsys):
    """--resume with more --trials and another point keeps the recorded trials (bit for bit) and adds the new
    ones: the result is the campaign run at once with those settings; another seed is still refused."""
    data = _images(tmp_path)
    common = ["evaluate", vgg_path, "--data", data, "--metric", "agreement"]
    out, whole = tmp_path / "grown", tmp_path / "whole"
    assert _cli(capsys, *common, "--p", "0,1e-4", "--trials", "2", "--out", out)[0] == 0
    first = json.loads((out / "results.json").read_text())["trials"]
    code, _, err = _cli(capsys, *common, "--p", "0,1e-4,1e-3", "--trials", "4", "--out", out, "--resume")
    assert code == 0, err
    assert _cli(capsys, *common, "--p", "0,1e-4,1e-3", "--trials", "4", "--out", whole)[0] == 0

    def scored(folder):
        return sorted((t["p"], t["trial"], t["score"]) for t in json.loads((folder / "results.json").read_text())["trials"])

    grown = scored(out)
    assert grown == scored(whole) and len(grown) == 1 + 4 + 4
    assert {(t["p"], t["trial"], t["score"]) for t in first} <= set(grown)
    code, _, err = _cli(capsys, *common, "--p", "0,1e-4", "--trials", "2", "--seed", "3", "--out", out, "--resume")
    assert code == 1 and "seed: 0 -> 3" in err


def test_resume_never_shrinks_a_grid(vgg_path, tmp_path, capsys):
    data = _images(tmp_path)
    common = ["evaluate", vgg_path, "--data", data, "--metric", "agreement", "--out", tmp_path / "r"]
    assert _cli(capsys, *common, "--p", "0,1e-4,1e-3", "--trials", "3")[0] == 0
    before = (tmp_path / "r" / "results.json").read_text()
    for fewer in (["--p", "0,1e-4", "--trials", "3"], ["--p", "0,1e-4,1e-3", "--trials", "2"]):
        code, _, err = _cli(capsys, *common, *fewer, "--resume")
        assert code == 1 and err.count("\n") == 1 and "that these settings leave out" in err
    assert (tmp_path / "r" / "results.json").read_text() == before


def test_an_injected_model_refuses_the_options_it_fixes_unless_they_are_its_own(vgg_path, tmp_path, capsys):
    """evaluate on a model inject wrote flips what the model holds: an option that fixes the injection, given with
    another value, is refused in one line naming it (nothing written); left out or given as the model's, the
    numbers are the same and results.json records the model's sites, nonfinite policy and ECC words."""
    injected = tmp_path / "injected.onnx"
    assert _cli(capsys, "inject", vgg_path, "-o", injected, "--p", "0", "--exclude", "classifier", "--nonfinite",
                "zero", "--ecc", "secded")[0] == 0
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"protect": [{"site": "features.0.weight", "bit": 30}]}))
    common = ["evaluate", injected, "--data", _images(tmp_path), "--metric", "agreement", "--p", "0,3e-3",
              "--trials", "2"]
    for option, *extra in (["--include", "features"], ["--exclude", "features"], ["--ops", "Relu"],
                           ["--nonfinite", "keep"], ["--ecc", "none"], ["--on-detected", "--ecc", "secded"],
                           ["--bits", "sign"], ["--targets", "weights"], ["--format", "float16"],
                           ["--every-intermediate"], ["--no-fold-batchnorm"], ["--protect", plan]):
        if option == "--on-detected":
            extra = ["zero", *extra]
        code, _, err = _cli(capsys, *common, "--out", tmp_path / "refused", option, *extra)
        assert code == 1 and err.count("\n") == 1, (option, err)
        assert err.startswith("onnxflip: error: the model is injected with ") and f"leave {option} out" in err
        assert not (tmp_path / "refused").exists()
    results = []
    for extra in ([], ["--exclude", "classifier", "--nonfinite", "zero", "--ecc", "secded", "--format", "float32",
                       "--targets", "biases,weights,activations"]):
        out = tmp_path / f"r{len(results)}"
        code, _, err = _cli(capsys, *common, "--out", out, *extra)
        assert code == 0, err
        results.append(json.loads((out / "results.json").read_text()))
    left_out, as_held = results
    assert left_out["settings"] == as_held["settings"] and left_out["exposure"] == as_held["exposure"]
    assert [r["mean"] for r in left_out["rows"]] == [r["mean"] for r in as_held["rows"]]
    held = left_out["settings"]
    assert (held["selection"]["exclude"], held["nonfinite"], held["ecc"]) == ("classifier", "zero", "secded")


def test_results_record_the_preprocessing_applied_also_when_the_model_stores_it(vgg_path, synthetic_data, tmp_path,
                                                                                capsys):
    """The zoo's export stores its preprocessing (onnxflip.preprocess): results.json records the spec applied,
    completed for the model's input, whether stored or given with --preprocess; an .npz is fed as it is (null)."""
    import onnx

    from onnxflip.data.preprocess import PREPROCESS_METADATA_KEY

    stored = {p.key: p.value for p in onnx.load(vgg_path).metadata_props}[PREPROCESS_METADATA_KEY]
    applied = {}
    for name, data, extra in (("stored", synthetic_data, []),
                              ("given", synthetic_data, ["--preprocess", '{"mean": [0.5, 0.5, 0.5]}']),
                              ("npz", _images(tmp_path), [])):
        out = tmp_path / name
        code, _, err = _cli(capsys, "evaluate", vgg_path, "--data", data, "--metric", "agreement", "--p", "0",
                            "--trials", "1", "--out", out, *extra)
        assert code == 0, err
        applied[name] = json.loads((out / "results.json").read_text())["preprocess"]
    base = {"scale": True, "std": [1.0, 1.0, 1.0], "channels": "RGB", "layout": "NCHW"}
    assert applied["stored"] == {**base, **json.loads(stored), "mean": [0.0, 0.0, 0.0]}
    assert applied["given"] == {**base, "resize": [32, 32], "mean": [0.5, 0.5, 0.5]}
    assert applied["npz"] is None


def test_a_fit_at_the_weibull_limit_of_its_shape_prints_no_note(vgg_path, tmp_path, capsys):
    """Ruinous weight flips give the Weibull curve, the family's limit (shape lambda at its lower bound): the
    fit records the bound, and the summary prints no note, since it changes nothing (a note at a bound that
    matters says what to do: tests/test_campaign_statistics.py)."""
    code, out, err = _cli(capsys, "evaluate", vgg_path, "--data", _images(tmp_path), "--metric", "agreement",
                          "--targets", "weights", "--p", "1e-7:1e-3:9", "--trials", "3", "--out", tmp_path / "r")
    assert code == 0, err
    fit = json.loads((tmp_path / "r" / "results.json").read_text())["fit"]
    assert fit["at_bound"] == ["shape_lambda"] and fit["shape_lambda"] < 0.011
    assert "bound" not in out and "note:" not in out


def test_an_include_pattern_that_matches_nothing_says_so_and_names_a_few_sites(vgg_path, tmp_path, capsys):
    for command in (["inject", vgg_path, "-o", tmp_path / "x.onnx"],
                    ["evaluate", vgg_path, "--data", _images(tmp_path), "--out", tmp_path / "r"]):
        code, _, err = _cli(capsys, *command, "--include", "nomatch")
        assert code == 1 and err.count("\n") == 1, err
        assert "the --include 'nomatch' pattern matches no site's tensor or node name" in err
        assert "sites without it include features.0.weight, features.0.bias" in err
        assert "no stored activation" not in err


def test_a_missing_data_folder_says_how_to_fetch_one(vgg_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ONNXFLIP_DATA", str(tmp_path / "nowhere"))
    for data in ([], ["--data", tmp_path / "missing"]):
        code, _, err = _cli(capsys, "evaluate", vgg_path, *data)
        assert code == 1 and err.count("\n") == 1 and "does not exist" in err
        assert "give --data DIR" in err and "add --download to fetch the official CIFAR-10 release" in err


def test_compare_writes_every_probability_in_one_format(vgg_path, tmp_path, capsys):
    """Midpoints of different magnitudes (2.88e-06 and 0.00023 as %g writes them) and their intervals all in
    scientific notation with three significant digits."""
    out = tmp_path / "r"
    code, _, err = _cli(capsys, "evaluate", vgg_path, "--data", _images(tmp_path), "--metric", "agreement",
                        "--p", "0,1e-4,1e-3", "--trials", "2", "--out", out)
    assert code == 0, err
    result = json.loads((out / "results.json").read_text())
    folders = []
    for name, (p, low, high) in (("a", (2.88e-6, 2.5e-6, 3.3e-6)), ("b", (2.3e-4, 1.95e-4, 2.71e-4))):
        result["midpoint"].update(p=p, low=low, high=high, status="grid")
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(result))
        folders.append(tmp_path / name)
    code, table, err = _cli(capsys, "compare", *folders, "-o", tmp_path / "curves.png")
    assert code == 0, err
    rows = [line.split()[-4:-1] for line in table.splitlines()[1:]]
    assert rows == [["2.88e-06", "[2.50e-06,", "3.30e-06]"], ["2.30e-04", "[1.95e-04,", "2.71e-04]"]], table


def test_a_row_s_samples_is_the_number_results_csv_has_and_older_lists_still_resume(vgg_path, tmp_path, capsys):
    """results.json's rows give the samples each trial scored as the number results.csv has (a list only where a
    point's trials scored different numbers, the CSV's 500/2000); a file written when every row held a list
    still resumes to the same trials."""
    import csv

    from onnxflip.campaign.design import TrialOutcome
    from onnxflip.campaign.results import rows_of

    out = tmp_path / "r"
    common = ["evaluate", vgg_path, "--data", _images(tmp_path), "--metric", "agreement", "--p", "0,1e-3",
              "--out", out]
    assert _cli(capsys, *common, "--trials", "2")[0] == 0
    result = json.loads((out / "results.json").read_text())
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["samples"] for r in result["rows"]] == [40, 40] == [int(r["samples"]) for r in table]
    for row in result["rows"]:  # as files written before rows held a number have it
        row["samples"] = [row["samples"]]
    (out / "results.json").write_text(json.dumps(result))
    code, _, err = _cli(capsys, *common, "--trials", "3", "--resume")
    assert code == 0, err
    resumed = json.loads((out / "results.json").read_text())
    assert {json.dumps(t) for t in result["trials"]} <= {json.dumps(t) for t in resumed["trials"]}
    assert [r["samples"] for r in resumed["rows"]] == [40, 40]
    mixed = [TrialOutcome(p=1e-3, trial=t, samples=n, score=0.5, sample_variance=0.25)
             for t, n in ((0, 500), (1, 2000))]
    assert rows_of(mixed, lambda p: (p, p, 0.0, 0.0))[0]["samples"] == [500, 2000]


def test_a_results_file_written_while_trials_run_has_a_pending_midpoint(vgg_path, tmp_path, capsys):
    """A campaign interrupted after its first write leaves results.json with midpoint status pending (every key
    of a midpoint, no value); resumed, it finishes with the midpoint measured."""
    metric = tmp_path / "interrupting.py"  # the second score it gives, the first trial at p > 0: Ctrl-C, once
    metric.write_text("import pathlib\n\nimport numpy as np\n\ncalls = []\n\n\ndef score(faulty, clean, labels):\n"
                      "    calls.append(1)\n    once = pathlib.Path(__file__).with_suffix('.interrupted')\n"
                      "    if len(calls) == 2 and not once.exists():\n        once.touch()\n"
                      "        raise KeyboardInterrupt\n    return np.ones(len(faulty))\n")
    out = tmp_path / "r"
    common = ["evaluate", vgg_path, "--data", _images(tmp_path), "--p", "0,1e-3", "--trials", "2", "--out", out]
    code, _, _ = _cli(capsys, *common, "--metric", f"{metric}:score")
    assert code == 130
    partial = json.loads((out / "results.json").read_text())
    assert partial["midpoint"] == {"status": "pending", "level": None, "p": None, "low": None, "high": None,
                                   "log10": None}
    assert [t["p"] for t in partial["trials"]] == [0.0]
    code, _, err = _cli(capsys, *common, "--metric", f"{metric}:score", "--resume")
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["midpoint"]["status"] != "pending"

"""`onnxflip reproduce` on two tiny models and synthetic data: the report is filled from its JSON.

The verdicts on the paper's findings are checked against chosen numbers in tests/test_report_verdicts.py.
"""

from __future__ import annotations

import json
import re

from conftest import write_zoo_models

from onnxflip.cli import main
from onnxflip.data import load_split
from onnxflip.quantize import quantize_model


def test_reproduce_writes_a_report_built_from_its_json(synthetic_data, tmp_path, capsys):
    models = write_zoo_models(tmp_path / "models", synthetic_data, ("vgg11", "vgg13"))
    out = tmp_path / "repro"
    args = ["reproduce", "--models", "vgg11,vgg13", "--models-dir", str(models), "--formats", "float32,bfloat16,int8",
            "--bits", "all,exponent,mantissa", "--p-range", "1e-8:0.3", "--precision", "1", "--budget", "60",
            "--target-sets", "none", "--data", str(synthetic_data), "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    text = (out / "report.md").read_text()
    grid = [c for c in report["cells"] if c["section"] == "grid"]
    # 2 models x (2 float formats x 3 bit fields + int8 all bits), 3 extra cells, and VGG-A's float32 weights
    # written once per trial and read by every batch
    assert len(grid) == 14 and len(report["cells"]) == 19
    reads = [c for c in report["cells"] if c["section"] == "reads"]
    assert [(c["model"], c["targets"], c["randomness"], c["batch_size"]) for c in reads] == [
        ("vgg11", ["weights"], "fixed", 500), ("vgg11", ["weights"], "per_run", 50)]
    settings = json.loads((out / reads[1]["folder"] / "results.json").read_text())["settings"]
    assert settings["parameter_randomness"] == "per_run" and settings["batch_size"] == 50
    assert "## Write noise and read noise" in text
    # Every cell's time counts, also where the midpoint lies beyond the searched range.
    assert any(c["bound"] for c in report["cells"]) and all(c["wall_seconds"] > 0 for c in report["cells"])
    for cell in grid:
        row = f"| {cell['model']} | {cell['format']} | activations | {cell['bits']} | {cell['clean_accuracy']:.4f} |"
        assert row in text
        if cell["midpoint"]:
            assert f"{cell['midpoint']:.3g}" in text
        else:
            assert f"{cell['bound']} {cell['bound_p']:.3g}" in text
    assert "## The paper's findings" in text  # its verdicts: tests/test_report_verdicts.py
    assert re.search(r"## Flips in one direction", text) and re.search(r"## Nonfinite policy", text)
    assert (out / "midpoint_vs_depth.png").is_file() and (out / "curves_vgg11.png").is_file()
    assert f"Command: `onnxflip {' '.join(args)}`" in text
    # A second run with --resume reuses every finished cell.
    before = {c["folder"]: c["evaluations"] for c in report["cells"]}
    assert main([*args, "--resume"]) == 0
    again = json.loads((out / "report.json").read_text())
    assert {c["folder"]: c["evaluations"] for c in again["cells"]} == before
    assert again["cells"] == report["cells"]
    # Its cells scored NaN and inf as wrong: a resume that would score the rest by argmax is refused, not mixed.
    assert report["spec"]["nonfinite_score"] == "wrong"
    capsys.readouterr()
    assert main([*args, "--resume", "--nonfinite-score", "argmax"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was measured with --nonfinite-score wrong: resume with --nonfinite-score wrong" in err[0]


def test_every_target_combination_gets_its_float32_and_int8_cells(synthetic_data, tmp_path, capsys):
    models = write_zoo_models(tmp_path / "models", synthetic_data, ("vgg11",))
    args = ["reproduce", "--models", "vgg11", "--models-dir", str(models), "--formats", "float32,int8",
            "--p-range", "1e-8:0.3", "--precision", "1", "--budget", "40", "--no-extras", "--bits", "all",
            "--data", str(synthetic_data), "--out", str(tmp_path / "repro")]
    # The float32-bias variant needs its model: one line naming the command that makes it.
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "vgg11_int8_floatbias.onnx is missing" in err and "--bias float" in err and "\n" not in err
    quantize_model(models / "vgg11.onnx", models / "vgg11_int8_floatbias.onnx",
                   calibration=load_split(synthetic_data, "train").as_float_nchw(), bias="float")
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "repro" / "report.json").read_text())
    got = {("+".join(c["targets"]), c["format"], c["bias"]) for c in report["cells"]}
    sets = ["activations", "weights", "biases", "activations+weights", "activations+weights+biases"]
    want = {(t, f, "int32") for t in sets for f in ("float32", "int8")}
    want |= {(t, "int8", "float") for t in sets if "biases" in t}
    assert got == want and len(report["cells"]) == len(want)
    # Each cell ran its own search with the noisy values it names, on the model its bias type names.
    for c in report["cells"]:
        settings = json.loads((tmp_path / "repro" / c["folder"] / "results.json").read_text())
        assert settings["settings"]["targets"] == c["targets"]
        assert settings["model"].endswith({"float32": "vgg11.onnx", "int32": "vgg11_int8.onnx",
                                           "float": "vgg11_int8_floatbias.onnx"}[
            "float32" if c["format"] == "float32" else c["bias"]])
    text = (tmp_path / "repro" / "report.md").read_text()
    assert "## The int8 claim per combination of noisy values" in text and "**Summary.**" in text
    for t in sets:
        assert f"| {t} | int32 | vgg11 |" in text
        assert (f"| {t} | float32 | vgg11 |" in text) == ("biases" in t)


def test_target_sets_parse_and_refuse(tmp_path, capsys):
    from onnxflip.campaign.reproduce import parse_target_sets

    assert parse_target_sets("weights+activations;biases;none".replace(";none", "")) == (
        ("activations", "weights"), ("biases",))
    assert parse_target_sets("none") == ()
    for bad in ("activations;gradients", "weights+weights", "weights;;biases"):
        assert main(["reproduce", "--target-sets", bad, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("onnxflip: error:") and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_field_formats_limit_the_exponent_and_mantissa_cells():
    from onnxflip.campaign.reproduce import GridSpec

    spec = GridSpec(models=("vgg11", "vgg13"), formats=("float16", "float32", "int8"),
                    bits=("all", "exponent", "mantissa"), field_formats=("float32",), extras=False)
    cells = {(c.model, c.format, c.bits) for c in spec.cells()}
    assert cells == {(m, f, "all") for m in ("vgg11", "vgg13") for f in ("float16", "float32", "int8")} | {
        (m, "float32", b) for m in ("vgg11", "vgg13") for b in ("exponent", "mantissa")}
    every = GridSpec(models=("vgg11",), formats=("float16", "float32", "int8"), bits=("all", "mantissa"), extras=False)
    assert {(c.format, c.bits) for c in every.cells()} == {
        ("float16", "all"), ("float32", "all"), ("int8", "all"), ("float16", "mantissa"), ("float32", "mantissa")}


def test_the_default_grid_measures_exponent_and_mantissa_flips_at_both_ends_of_depth():
    """Every float format of VGG-A and VGG-E, and float32 of each network beyond VGG, gets exponent-only and
    mantissa-only cells by default (the paper's two findings about bit fields); the middle depths and int8 do not;
    --field-models chooses others."""
    from onnxflip.campaign.reproduce import GridSpec

    fields = {(c.model, c.format, c.bits) for c in GridSpec().cells() if c.section == "grid" and c.bits != "all"}
    assert fields == {(m, f, b) for m in ("vgg11", "vgg19") for f in ("float16", "bfloat16", "float32", "float64")
                      for b in ("exponent", "mantissa")} | {
        (m, "float32", b) for m in ("resnet20", "mobilenetv2s") for b in ("exponent", "mantissa")}
    chosen = GridSpec(field_models=("vgg13",), extras=False, target_sets=())
    assert {c.model for c in chosen.cells() if c.bits != "all"} == {"vgg13"}


def test_field_models_outside_the_models_are_refused(tmp_path, capsys):
    assert main(["reproduce", "--models", "vgg11", "--field-models", "vgg19", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("onnxflip: error:") and "--field-models" in err and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_target_sets_without_both_formats_are_refused(tmp_path, capsys):
    assert main(["reproduce", "--formats", "float32", "--target-sets", "weights", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--target-sets compares float32 with int8 cells" in err[0]


def test_field_formats_rejects_int8(tmp_path, capsys):
    assert main(["reproduce", "--field-formats", "int8", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("onnxflip: error:") and "int8" in err and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_overwrite_never_deletes_the_models_or_another_folder(synthetic_data, tmp_path, capsys):
    models = write_zoo_models(tmp_path / "models", synthetic_data, ("vgg11",))
    before = sorted(p.name for p in models.iterdir())
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    for out, message in ((models, "holds the input"), (tmp_path, "holds the input"), (other, "holds no report.json")):
        code = main(["reproduce", "--models", "vgg11", "--models-dir", str(models), "--formats", "float32",
                     "--target-sets", "none", "--data", str(synthetic_data), "--out", str(out), "--overwrite"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and message in err[0], (out, err)
    assert sorted(p.name for p in models.iterdir()) == before and (other / "notes.txt").read_text() == "keep"
    code = main(["reproduce", "--models", "vgg11", "--models-dir", str(models), "--formats", "float32",
                 "--target-sets", "none", "--data", str(synthetic_data), "--out", str(tmp_path / "typo"), "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "nothing to resume" in err[0] and not (tmp_path / "typo").exists()


def test_the_default_grid_pairs_write_and_read_noise_once_per_network():
    from onnxflip.campaign.reproduce import GridSpec

    spec = GridSpec()
    reads = [c for c in spec.cells() if c.randomness == "per_run"]
    assert [(c.model, c.format, c.targets, c.batch_size) for c in reads] == [
        (m, "float32", ("weights",), 50) for m in ("vgg11", "resnet20", "mobilenetv2s")]
    writes = {c.key for c in spec.cells() if c.targets == ("weights",) and c.format == "float32"}
    assert {c.model for c in reads} <= {k.split("-")[0] for k in writes}  # each read cell has its write cell
    assert len({c.key for c in spec.cells()}) == len(spec.cells())  # every cell its own folder
    assert GridSpec(extras=False).cells() == [c for c in spec.cells() if c.section not in
                                              ("asymmetric", "nonfinite", "reads")]

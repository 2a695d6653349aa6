"""The command line: inject, inspect, convert; bad input gives one line and a non-zero exit."""

from __future__ import annotations

import importlib.metadata
import json
import os

import click
import numpy as np
import onnx
import pytest
from conftest import file_digest

from onnxflip.cli import cli, main


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _commands(command: click.Command, path: tuple[str, ...] = ()):
    """(path, command) for the group and every command under it."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_every_option_of_every_command_has_help_text():
    missing = [f"{' '.join(path) or 'onnxflip'} {param.opts[0]}" for path, command in _commands(cli)
               for param in command.params if isinstance(param, click.Option) and not (param.help or "").strip()]
    assert not missing, missing
    assert {" ".join(path) for path, _ in _commands(cli)} >= {
        "inject", "inspect", "convert", "evaluate", "compare", "quantize", "reproduce", "zoo train"}


@pytest.mark.parametrize("group", [[], ["zoo"]])
def test_a_group_alone_prints_its_help_as_a_usage_error(capsys, group):
    code, out, err = run(capsys, *group)
    assert code == 2 and out == "" and err.startswith("Usage: ") and "Commands:" in err and "error" not in err


def test_version_is_the_installed_distribution_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"onnxflip {importlib.metadata.version('onnxflip')}"


def test_inject_then_inspect(vgg_path, tmp_path, capsys):
    out = tmp_path / "injected.onnx"
    code, stdout, _ = run(capsys, "inject", str(vgg_path), "-o", str(out), "--p", "1e-5", "--format", "bfloat16")
    assert code == 0 and "35 FlipBits sites" in stdout
    model = onnx.load(out)
    assert sum(n.op_type == "FlipBits" for n in model.graph.node) == 35
    code, listing, _ = run(capsys, "inspect", str(out))
    assert code == 0
    assert "weights: 10 sites" in listing and "bfloat16" in listing
    code, planned, _ = run(capsys, "inspect", str(vgg_path), "--format", "bfloat16")
    assert code == 0 and planned.splitlines()[-3:] == listing.splitlines()[-3:]


def test_convert_writes_a_clean_model(vgg_path, tmp_path, capsys):
    out = tmp_path / "f16.onnx"
    code, _, _ = run(capsys, "convert", str(vgg_path), "-o", str(out), "--format", "float16")
    assert code == 0
    assert not any(n.op_type == "FlipBits" for n in onnx.load(out).graph.node)
    # its stored values already pass through float16: it is inspected as the original in float16, never converted
    # again, and another format is refused
    def sites(*args):  # the site rows without the tensor names (convert names its values <name>_float16)
        code, listing, _ = run(capsys, "inspect", *args, "--json")
        assert code == 0
        return [{k: v for k, v in row.items() if k != "tensor"} for row in json.loads(listing)["sites"]]

    assert sites(str(out)) == sites(str(vgg_path), "--format", "float16")
    code, _, err = run(capsys, "convert", str(out), "-o", str(tmp_path / "y.onnx"), "--format", "float16")
    assert code == 1 and err.strip() == "onnxflip: error: the model is already converted to float16; convert the original model"
    code, _, err = run(capsys, "inject", str(out), "-o", str(tmp_path / "x.onnx"), "--format", "bfloat16")
    assert code == 1 and "the model is converted to float16 (onnxflip convert)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f16.onnx"]


def test_quantize_refuses_an_injected_or_converted_model(vgg_path, synthetic_data, tmp_path, capsys):
    made = {"injected.onnx": ["inject", "--p", "1e-5"], "f16.onnx": ["convert", "--format", "float16"]}
    for name, command in made.items():
        assert run(capsys, command[0], str(vgg_path), "-o", str(tmp_path / name), *command[1:])[0] == 0
    for name, message in (("injected.onnx", "is injected"), ("f16.onnx", "is converted to float16")):
        code, _, err = run(capsys, "quantize", str(tmp_path / name), "-o", str(tmp_path / "q.onnx"), "--data",
                           str(synthetic_data), "--samples", "4")
        assert code == 1 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "q.onnx").exists()


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make_input", "extra", "message"),
    [
        (lambda d, vgg: _write(d / "notes.onnx", b"this is not a model"), [], "not a readable ONNX model"),
        (lambda d, vgg: _write(d / "cut.onnx", vgg.read_bytes()[:2000]), [], "ONNX model"),
        (lambda d, vgg: d / "missing.onnx", [], "does not exist"),
        (lambda d, vgg: vgg, ["--include", "no-tensor-has-this-name"], "no site matches"),
        (lambda d, vgg: vgg, ["--ops", "Relu,Frobnicate"], "unknown ONNX op type"),
        (lambda d, vgg: vgg, ["--p", "2"], "not in the range"),
        (lambda d, vgg: vgg, ["--p01", "-0.1"], "not in the range"),
        (lambda d, vgg: vgg, ["--format", "int8"], "needs a quantised model"),
        (lambda d, vgg: vgg, ["--bits", "exponent", "--format", "int8"], "needs a quantised model"),
        (lambda d, vgg: vgg, ["--targets", "activations,gradients"], "gradients not in"),
        (lambda d, vgg: vgg, ["--bits", "0x1ffffffff"], "does not fit"),
    ],
)
def test_bad_input_gives_one_line_and_leaves_files_alone(vgg_path, tmp_path, capsys, make_input, extra, message):
    source = make_input(tmp_path, vgg_path)
    before = file_digest(source) if source.exists() else None
    out = tmp_path / "out.onnx"
    code, _, err = run(capsys, "inject", str(source), "-o", str(out), *extra)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    assert not out.exists()
    if before is not None:
        assert file_digest(source) == before


@pytest.mark.parametrize("where", ["missing-folder", "unwritable"])
def test_bad_output_folder(vgg_path, tmp_path, capsys, where):
    if where == "missing-folder":
        out = tmp_path / "no" / "such" / "out.onnx"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        if os.access(locked, os.W_OK):
            out = "/proc/onnxflip-out.onnx"  # root writes anywhere a permission bit allows; /proc refuses files
        else:
            out = locked / "out.onnx"
    code, _, err = run(capsys, "inject", str(vgg_path), "-o", str(out))
    assert code != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_input_is_left_alone_and_no_temporary_file_remains(vgg_path, tmp_path, capsys):
    source = tmp_path / "model.onnx"
    source.write_bytes(vgg_path.read_bytes())
    before = file_digest(source)
    code, _, _ = run(capsys, "inject", str(source), "-o", str(tmp_path / "other.onnx"))
    assert code == 0 and file_digest(source) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "other.onnx"]


@pytest.mark.parametrize("command", [["inject", "--p", "1e-5"], ["convert", "--format", "float16"]])
def test_output_over_the_input_model_is_refused(vgg_path, tmp_path, capsys, command):
    source = tmp_path / "model.onnx"
    source.write_bytes(vgg_path.read_bytes())
    before = file_digest(source)
    code, _, err = run(capsys, command[0], str(source), "-o", str(tmp_path / "." / "model.onnx"), *command[1:])
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and "is the input model" in lines[0], err
    assert file_digest(source) == before


@pytest.mark.parametrize("command", ["inject", "compare"])
def test_an_output_folder_that_is_a_file_is_named_as_a_file(vgg_path, tmp_path, capsys, command):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    if command == "inject":
        args = ["inject", str(vgg_path), "-o", str(afile / "x.onnx")]
    else:
        results = tmp_path / "results"
        results.mkdir()
        (results / "results.json").write_text(json.dumps({"settings": {}, "rows": []}))
        args = ["compare", str(results), "-o", str(afile / "c.png")]
    code, _, err = run(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and f"{afile} is a file" in lines[0], err
    assert "does not exist" not in err
    assert afile.read_text() == "not a folder"


def _weight_and_bias_sizes(path) -> dict[str, int]:
    """Elements of the Conv/Gemm weight and bias initializers, read from the file with onnx alone."""
    proto = onnx.load(path)
    sizes = {init.name: int(np.prod(init.dims)) for init in proto.graph.initializer}
    totals = {"weights": 0, "biases": 0}
    for node in proto.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            totals["weights"] += sizes[node.input[1]]
            totals["biases"] += sizes[node.input[2]] if len(node.input) > 2 else 0
    return totals


def test_inspect_json_lists_the_sites_the_injected_model_has(vgg_path, tmp_path, capsys):
    code, listing, _ = run(capsys, "inspect", str(vgg_path), "--json", "--format", "float16")
    rows = json.loads(listing)["sites"]
    assert code == 0 and {tuple(sorted(r)) for r in rows} == {("bits", "dtype", "elements", "mask", "target", "tensor")}
    out = tmp_path / "injected.onnx"
    assert run(capsys, "inject", str(vgg_path), "-o", str(out), "--format", "float16", "--p", "1e-4")[0] == 0
    injected = onnx.load(out)
    flipped = {node.input[0] for node in injected.graph.node if node.op_type == "FlipBits"}
    assert len(rows) == len(flipped)
    assert {r["dtype"] for r in rows} == {"float16"} and {r["bits"] for r in rows} == {16}
    assert {r["mask"] for r in rows} == {"0xffff"}
    for target, elements in _weight_and_bias_sizes(vgg_path).items():
        assert sum(r["elements"] for r in rows if r["target"] == target) == elements
    code, again, _ = run(capsys, "inspect", str(out), "--json")
    # The injected model records the logits under the name of the value FlipBits reads ("logits_clean").
    def without_names(listing):
        return [{k: v for k, v in row.items() if k != "tensor"} for row in listing]

    assert code == 0 and without_names(json.loads(again)["sites"]) == without_names(rows)


@pytest.mark.parametrize(
    ("probability", "warned"), [([], True), (["--p", "0"], False), (["--p01", "1e-3"], False)])
def test_inject_without_a_probability_warns_that_it_writes_p0(vgg_path, tmp_path, capsys, probability, warned):
    out = tmp_path / "injected.onnx"
    code, stdout, err = run(capsys, "inject", str(vgg_path), "-o", str(out), *probability)
    assert code == 0 and "FlipBits sites" in stdout
    lines = err.strip().splitlines()
    if warned:
        assert len(lines) == 1 and lines[0].startswith("onnxflip: warning:") and "are 0" in lines[0], err
    else:
        assert lines == []


def test_inject_options_build_the_recorded_fault_models(vgg_path, tmp_path, capsys):
    out = tmp_path / "injected.onnx"
    code, _, _ = run(capsys, "inject", str(vgg_path), "-o", str(out), "--targets", "activations,weights",
                     "--p01", "1e-3", "--bits", "exponent", "--seed", "9", "--nonfinite", "zero",
                     "--activation-randomness", "fixed", "--parameter-randomness", "per_run", "--include", "features",
                     "--stuck-at0", "1e-4", "--stuck-at1", "2e-4", "--ecc", "secded", "--on-detected", "zero")
    assert code == 0
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    config = json.loads(meta["onnxflip.injection"])["config"]
    common = {"p01": 1e-3, "p10": 0.0, "bits": "exponent", "seed": 9, "nonfinite": "zero", "s0": 1e-4, "s1": 2e-4,
              "ecc": "secded", "on_detected": "zero"}
    assert config["activations"] == {**common, "randomness": "fixed"}
    assert config["weights"] == {**common, "randomness": "per_run"}
    assert config["biases"] is None and config["selection"]["include"] == "features"


USAGE, INPUT = 2, 1


def _case(status: int, *args: str):
    return pytest.param(status, args, id=f"{status}:{' '.join(args)}")


@pytest.mark.parametrize(
    ("status", "args"),
    [
        # usage errors: unknown options, bad or missing option values, options that contradict each other
        _case(USAGE, "inject", "{model}", "-o", "{out}", "--frobnicate"),
        _case(USAGE, "inject", "{model}", "-o", "{out}", "--p", "1e-3", "--p01", "1e-3"),
        _case(USAGE, "inject", "{model}", "-o", "{out}", "--ops", "Relu,Frobnicate"),
        _case(USAGE, "inspect", "{model}", "--format", "float128"),
        _case(USAGE, "inspect", "{model}", "--include", "("),
        _case(USAGE, "convert", "{model}", "-o", "{out}"),
        _case(USAGE, "compare", "{results}"),
        _case(USAGE, "quantize", "{model}"),
        _case(USAGE, "evaluate", "{model}", "--p", "0:1e-2:5"),
        _case(USAGE, "evaluate", "{model}", "--midpoint", "--p-range", "0:1e-2"),
        _case(USAGE, "evaluate", "{model}", "--ops", "Frobnicate"),
        _case(USAGE, "evaluate", "{model}", "--direction", "sideways"),
        _case(USAGE, "reproduce", "--models", "vgg12", "--out", "{out}"),
        _case(USAGE, "zoo", "train", "--model", "vgg12", "-o", "{out}"),
        # input errors: missing or broken files and folders
        _case(INPUT, "inject", "{missing}", "-o", "{out}", "--p", "1e-3"),
        _case(INPUT, "inject", "{model}", "-o", "{afile}/x.onnx", "--p", "1e-3"),
        _case(INPUT, "inspect", "{missing}"),
        _case(INPUT, "inspect", "{results}"),
        _case(INPUT, "inspect", "{results}/results.json"),
        _case(INPUT, "evaluate", "{results}/results.json", "--data", "{results}", "--out", "{out}"),
        _case(INPUT, "compare", "{model}", "-o", "{out}.png"),
        _case(INPUT, "zoo", "train", "--data", "{afile}", "-o", "{out}"),
        _case(INPUT, "inject", "{model}", "-o", "{results}", "--p", "1e-3"),
        _case(USAGE, "evaluate", "{model}", "--resume", "--overwrite"),
        _case(INPUT, "convert", "{missing}", "-o", "{out}", "--format", "float16"),
        _case(INPUT, "compare", "{missing}", "-o", "{out}.png"),
        _case(INPUT, "compare", "{results}", "-o", "{afile}/c.png"),
        _case(INPUT, "quantize", "{missing}", "-o", "{out}"),
        _case(INPUT, "quantize", "{model}", "-o", "{out}", "--data", "{missing}"),
        _case(INPUT, "evaluate", "{missing}", "--data", "{missing}", "--out", "{out}"),
        _case(INPUT, "evaluate", "{model}", "--data", "{missing}", "--out", "{out}"),
    ],
)
def test_the_same_kind_of_error_has_the_same_exit_status_in_every_command(classifier_path, tmp_path, capsys,
                                                                           status, args):
    results = tmp_path / "results"
    results.mkdir()
    (results / "results.json").write_text(json.dumps({"settings": {}, "rows": []}))
    (tmp_path / "afile").write_text("a file")
    paths = {"model": classifier_path, "out": tmp_path / "out.onnx", "results": results,
             "missing": tmp_path / "missing", "afile": tmp_path / "afile"}
    code, _, err = run(capsys, *(a.format(**paths) for a in args))
    lines = err.strip().splitlines()
    assert code == status and len(lines) == 1 and lines[0].startswith("onnxflip: error:"), (code, err)
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("args", [["zoo", "train", "-o", "{out}"], ["quantize", "{model}", "-o", "{out}", "--download"]])
def test_without_torch_the_zoo_and_download_name_the_extra(classifier_path, tmp_path, capsys, monkeypatch, args):
    import sys

    for module in ("torch", "torchvision", "onnxscript"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it fails
    paths = {"model": classifier_path, "out": tmp_path / "out.onnx"}
    code, _, err = run(capsys, *(a.format(**paths) for a in args))
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "pip install 'onnxflip[zoo]'" in lines[0], err
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("command", ["evaluate", "reproduce"])
def test_without_ray_the_ray_executor_names_the_extra(classifier_path, synthetic_data, tmp_path, capsys, monkeypatch,
                                                      command):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: importing it fails
    args = [str(classifier_path)] if command == "evaluate" else ["--models-dir", str(classifier_path.parent)]
    code, _, err = run(capsys, command, *args, "--data", str(synthetic_data), "--out", str(tmp_path / "r"),
                       "--executor", "ray")
    lines = err.strip().splitlines()
    assert code == 1 and lines == ["onnxflip: error: the ray executor needs Ray: pip install 'onnxflip[ray]'"], err
    assert not (tmp_path / "r").exists()


def test_a_ray_address_without_the_ray_executor_is_a_usage_error(classifier_path, tmp_path, capsys):
    code, _, err = run(capsys, "evaluate", str(classifier_path), "--ray-address", "127.0.0.1:6379",
                       "--out", str(tmp_path / "r"))
    assert code == 2 and "--ray-address needs --executor ray" in err and len(err.strip().splitlines()) == 1, err


def test_quantize_calibrates_on_an_npz(classifier_path, tmp_path, capsys):
    data = tmp_path / "inputs.npz"
    np.savez(data, input=np.random.default_rng(0).random((20, 3, 32, 32), dtype=np.float32))
    out = tmp_path / "q.onnx"
    code, written, err = run(capsys, "quantize", str(classifier_path), "-o", str(out), "--data", str(data))
    assert code == 0 and "calibrated on 20 samples" in written, err
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(out).graph.node}


def test_convert_refuses_a_quantised_model_without_pointing_to_an_option_it_lacks(qdq_path, tmp_path, capsys):
    code, _, err = run(capsys, "convert", str(qdq_path), "-o", str(tmp_path / "c.onnx"), "--format", "float16")
    assert code == 1 and err.strip() == ("onnxflip: error: the model is quantised: convert writes float formats "
                                         "of a float model; inject or evaluate the int8 model as it is")

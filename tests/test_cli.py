"""The command line: inject, inspect, convert; bad input gives one line and a non-zero exit."""

from __future__ import annotations

import json
import os

import onnx
import pytest
from click.testing import CliRunner
from conftest import file_digest

from onnxflip.cli import cli, main


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("command", [[], ["inject"], ["inspect"], ["convert"]])
def test_help_explains_each_command(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output
    if command == ["inject"]:
        for option in ("--format", "--targets", "--p01", "--bits", "--seed", "--nonfinite", "--include"):
            assert option in result.output


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
        (lambda d, vgg: vgg, ["--format", "int8"], "needs a QDQ"),
        (lambda d, vgg: vgg, ["--bits", "exponent", "--format", "int8"], "needs a QDQ"),
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

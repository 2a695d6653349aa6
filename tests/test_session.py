"""The one session builder: providers it really runs on, and the README's plain ONNX Runtime recipe."""

from __future__ import annotations

import functools
import pathlib
import re

import numpy as np
import onnxruntime as ort
import pytest
from conftest import model_from_text, template_classifier

from onnxflip import OnnxflipError, make_session, session_providers
from onnxflip.cli import main
from onnxflip.graph.config import control_input_name
from onnxflip.graph.inject import insert_flipbits
from onnxflip.graph.sites import DEFAULT_TARGETS
from onnxflip.modelio import save_model
from onnxflip.runtime.session import IR_VERSION, runtime_bytes, runtime_proto, session_options

RELU = """
<ir_version: 10, opset_import: ["" : 21]>
g (float[N,4] x) => (float[N,4] y) {
  y = Relu (x)
}
"""


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_cpu_session_reports_the_cpu_provider():
    session = make_session(model_from_text(RELU, []))
    assert session_providers(session) == ("CPUExecutionProvider",)


def test_cuda_runs_on_the_gpu_or_fails_with_one_line(capfd):
    """Where onnxruntime-gpu lists the CUDA provider but cannot start it (no GPU, no CUDA libraries), ONNX
    Runtime falls back to the CPU after several multi-line messages; the builder refuses in one line instead."""
    try:
        session = make_session(model_from_text(RELU, []), provider="cuda")
    except OnnxflipError as exc:
        assert "\n" not in str(exc) and "provider cpu" in str(exc)
        captured = capfd.readouterr()
        assert captured.err == "" and captured.out == "", captured.err
    else:
        assert session_providers(session)[0] == "CUDAExecutionProvider"


@functools.cache
def _cuda_usable() -> bool:
    try:
        make_session(model_from_text(RELU, []), provider="cuda")
    except OnnxflipError:
        return False
    return True


def test_cuda_missing_from_the_onnxruntime_build_is_one_line_of_error(monkeypatch, capfd):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(OnnxflipError, match="no CUDAExecutionProvider"):
        make_session(model_from_text(RELU, []), provider="cuda")
    assert capfd.readouterr().err == ""


def test_evaluate_with_an_unusable_cuda_provider_fails_with_one_line(classifier_path, synthetic_data, tmp_path, capfd):
    if _cuda_usable():
        pytest.skip("the CUDA provider works here")
    out = tmp_path / "results"
    code = main(["evaluate", str(classifier_path), "--data", str(synthetic_data), "--p", "1e-3", "--trials", "1",
                 "--samples", "20", "--provider", "cuda", "--out", str(out)])
    err = capfd.readouterr().err
    assert code == 1
    assert _one_error_line(err).startswith("onnxflip: error: provider cuda"), err
    assert not (out / "results.json").exists()


def test_sessions_share_the_process_arena_without_changing_numbers():
    """Every session draws CPU memory from one arena of the process (a trial's fresh session runs in pages an
    earlier session touched); what one session left there does not change another's outputs."""
    model = template_classifier()
    x = np.random.default_rng(0).random((64, 3, 32, 32), dtype=np.float32)
    own_arena = ort.InferenceSession(runtime_bytes(model), providers=["CPUExecutionProvider"])
    expected = own_arena.run(None, {"input": x})[0]
    assert session_options().get_session_config_entry("session.use_env_allocators") == "1"
    for _ in range(3):
        session = make_session(model)
        session.run(None, {"input": np.full_like(x, np.nan)})
        np.testing.assert_array_equal(session.run(None, {"input": x})[0], expected)
        del session


def test_the_ir_version_is_lowered_without_changing_the_caller_s_proto():
    proto = model_from_text(RELU, [])
    proto.ir_version = IR_VERSION + 1
    assert runtime_proto(proto).ir_version == IR_VERSION
    assert proto.ir_version == IR_VERSION + 1


def _readme_recipe() -> str:
    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    intro = readme.index("Any ONNX Runtime program can load the operator")
    block = re.search(r"```python\n(.*?)```", readme[intro:], re.DOTALL)
    return block.group(1)


def test_the_readme_onnxruntime_recipe_runs_without_warnings(tmp_path, capfd, monkeypatch):
    """The recipe as the README writes it: no "appears in graph inputs" warnings, the control inputs listed."""
    save_model(insert_flipbits(template_classifier()), tmp_path / "noisy.onnx")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_readme_recipe(), "README.md", "exec"), namespace)  # the README's own code
    captured = capfd.readouterr()
    assert "appears in graph inputs" not in captured.err + captured.out, captured.err
    assert set(namespace["controls"]) == {control_input_name(t, w) for t in DEFAULT_TARGETS for w in ("p01", "p10", "seed", "s0", "s1", "stuck_seed")}

#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build with the CUDA kernels, run the GPU tests and the GPU benchmark.
# Prints a short summary table last.  Usage: bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-gpu
.venv-gpu/bin/pip install -q -e '.[test]' || exit 1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
.venv-gpu/bin/python -c "import onnxflip.runtime.cuda as c; print('CUDA kernels built:', c.has_cuda_kernels())"
.venv-gpu/bin/pytest -q -m gpu tests/test_gpu.py 2>&1 | tee /tmp/onnxflip-gpu-tests.log | tail -5
.venv-gpu/bin/python - <<'PY'
import numpy as np, onnxruntime as ort
from onnxflip import make_session
from onnxflip.graph import insert_flipbits, InjectionConfig, control_input_name
from onnxflip.modelio import load_model, save_model
print("ONNX Runtime providers:", ort.get_available_providers())
save_model(insert_flipbits(load_model("models/vgg11.onnx")), "/tmp/onnxflip-gpu-vgg.onnx")
x = np.random.default_rng(0).random((64, 3, 32, 32), dtype=np.float32)
feeds = {"input": x, control_input_name("activations", "p01"): np.array(1e-4, np.float32),
         control_input_name("weights", "p01"): np.array(1e-5, np.float32)}
cpu = make_session("/tmp/onnxflip-gpu-vgg.onnx").run(None, feeds)[0]
try:
    gpu = make_session("/tmp/onnxflip-gpu-vgg.onnx", provider="cuda").run(None, feeds)[0]
    print("injected VGG, CUDA vs CPU provider: max |diff| =", float(np.nanmax(np.abs(gpu - cpu))),
          "same NaN positions:", bool((np.isnan(gpu) == np.isnan(cpu)).all()))
except Exception as exc:  # the CUDA provider may be unusable on this machine
    print("CUDA execution provider not usable:", str(exc).splitlines()[0])
PY
.venv-gpu/bin/python benchmarks/bench_gpu.py
echo "== summary =="
grep -E "passed|failed" /tmp/onnxflip-gpu-tests.log | tail -1

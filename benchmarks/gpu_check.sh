#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build the library with its CUDA kernels against the Python packages the
# machine already has (no package index needed), run the GPU tests and the GPU benchmark, keep the logs.
#
#   here, once (needs apt):  bash custom_ops/cmake/fetch_onnxruntime_headers.sh .ort-headers
#   there:                   bash benchmarks/gpu_check.sh [LOG_FOLDER]      (the checkout with .ort-headers/)
#
# The GPU machine needs python3 with torch (CUDA), nvcc, cmake, ninja, scikit-build-core, onnx, onnx-ir,
# onnxruntime, numpy, scipy, click, tqdm, matplotlib, ml-dtypes and pytest.  The tests run the CUDA kernel
# through the library's C entry point (onnxflip.runtime.cuda) on torch tensors and compare it with the CPU
# kernel run by ONNX Runtime's CPU provider; ONNX Runtime's CUDA provider is checked only where
# onnxruntime-gpu is installed.  Prints a summary last; exits non-zero if a step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
logs=$(mkdir -p "${1:-gpu-check-logs}" && cd "${1:-gpu-check-logs}" && pwd)
python=${PYTHON:-python3}
headers=${ONNXRUNTIME_INCLUDE_DIR:-$PWD/.ort-headers}
status=0
step() {  # step NAME COMMAND...: run, log to $logs/NAME.log, remember a failure
  local name=$1; shift
  echo "== $name"
  "$@" >"$logs/$name.log" 2>&1
  local rc=$?
  tail -n 15 "$logs/$name.log"
  [ $rc -eq 0 ] || { echo "!! $name failed (exit $rc)"; status=1; }
  return $rc
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$logs/gpu.txt"
step build "$python" -m pip install --no-build-isolation --no-deps -v -e . \
  --config-settings=cmake.define.ONNXRUNTIME_INCLUDE_DIR="$headers" \
  --config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHITECTURES:-90}" || exit 1
step kernels "$python" -c "import onnxflip.runtime.cuda as c, torch; print('CUDA kernels built:', \
c.has_cuda_kernels()); print('torch sees:', torch.cuda.get_device_name()); assert c.has_cuda_kernels()" || exit 1
# Every GPU test (bit identity with the CPU kernel per element type, p from 0 to 1, masks, both randomness
# modes, stuck cells, SECDED/SECDED64 with their counts; flip statistics), then the CPU kernel's own tests.
step gpu-tests "$python" -m pytest -p no:cacheprovider -q -m gpu -rfE tests/test_gpu.py
step cpu-kernel-tests "$python" -m pytest -p no:cacheprovider -q -rfE tests/test_flipbits_op.py tests/test_faults.py
step ort-cuda-provider "$python" - <<'PY'
import onnxruntime as ort
providers = ort.get_available_providers()
print("ONNX Runtime", ort.__version__, "providers:", providers)
if "CUDAExecutionProvider" not in providers:
    print("ONNX Runtime's CUDA execution provider is not installed here (onnxruntime-gpu): not checked")
    raise SystemExit(0)
import numpy as np
from onnxflip import make_session
from onnxflip.graph import control_input_name, insert_flipbits
from onnxflip.modelio import load_model, save_model
save_model(insert_flipbits(load_model("models/vgg11.onnx")), "/tmp/onnxflip-gpu-vgg.onnx")
x = np.random.default_rng(0).random((64, 3, 32, 32), dtype=np.float32)
feeds = {"input": x, control_input_name("activations", "p01"): np.array(1e-4, np.float32),
         control_input_name("weights", "p01"): np.array(1e-5, np.float32)}
cpu = make_session("/tmp/onnxflip-gpu-vgg.onnx").run(None, feeds)[0]
gpu = make_session("/tmp/onnxflip-gpu-vgg.onnx", provider="cuda").run(None, feeds)[0]
print("injected VGG, CUDA vs CPU provider: max |diff| =", float(np.nanmax(np.abs(gpu - cpu))),
      "same NaN positions:", bool((np.isnan(gpu) == np.isnan(cpu)).all()))
PY
step bench-gpu "$python" benchmarks/bench_gpu.py
echo "== summary"
cat "$logs/gpu.txt"
for name in gpu-tests cpu-kernel-tests; do
  printf '%-18s %s\n' "$name" "$(grep -E '(passed|failed|error)' "$logs/$name.log" | tail -n 1)"
done
exit $status

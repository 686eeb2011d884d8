#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (never in CI): install the TensorRT extra, run the GPU parity tests, the
# encoder/decoder runtime benchmark on the GPU and the serving benchmark with configs/serve.gpu.yaml, and
# write benchmarks/results/gpu_*.json. Budget: under 8 minutes on one GPU (each step has its own timeout).
#
#   benchmarks/gpu_check.sh            # from the repository root, after the README's install
#
# Weights: seeded random (SAMGRAPH_WEIGHTS=random): the true compute cost, meaningless masks; a machine with
# the registry's weights in SAMGRAPH_CACHE_DIR can set SAMGRAPH_WEIGHTS=registry instead.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE=disabled
export SAMGRAPH_REQUIRE_GPU=1          # the GPU tests fail instead of skipping without a GPU or TensorRT
export SAMGRAPH_REQUIRE_DATA=1
export SAMGRAPH_WEIGHTS="${SAMGRAPH_WEIGHTS:-random}"
PY="${PYTHON:-.venv/bin/python}"
mkdir -p benchmarks/results

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee benchmarks/results/gpu_device.csv

# onnxruntime-gpu provides the same `onnxruntime` module as the CPU wheel: replace it, then the extra
# (onnxruntime-gpu, TensorRT's Python wheels, torch-tensorrt).
timeout 240 "$PY" -m pip uninstall -y onnxruntime >/dev/null 2>&1 || true
timeout 240 "$PY" -m pip install -e ".[tensorrt]"

# 1. parity: TensorRT fp32/fp16 engines against eager torch (tests/unit/test_runtime_tensorrt.py)
timeout 180 "$PY" -m pytest tests/unit/test_runtime_tensorrt.py -q -s -p no:cacheprovider \
    --junitxml=benchmarks/results/gpu_parity.xml

# 2. the encoder and decoder per runtime on the GPU (torch fp32/bf16, TensorRT fp32/fp16)
timeout 150 "$PY" -m benchmarks.runtime_encoders --device cuda --rounds 10 --clicks 50 --out gpu_runtime_encoders

# 3. the service with the GPU config: fresh images and interactive sessions, 1 and 4 clients
timeout 240 "$PY" -m benchmarks.serving --config configs/serve.gpu.yaml --workloads fresh,interactive \
    --concurrency 1,4 --max-seconds 30 --skip-naive --out gpu_serving

ls -l benchmarks/results/gpu_*

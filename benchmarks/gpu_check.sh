#!/usr/bin/env bash
# One prepared check of segrank's CUDA path, runnable in a few minutes on any CUDA machine,
# from the repository root:  bash benchmarks/gpu_check.sh [OUT_DIR]
# It builds segrank in place (needs pybind11, scikit-build-core, cmake there), checks that the
# CUDA provider really runs, that results match the CPU path, and times CUDA against CPU.
# Where onnxruntime-gpu is not installed, point SEGRANK_ORT_WHEEL at its wheel: it goes into a
# private folder that shadows a CPU-only onnxruntime.
set -euo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
if [ -n "${SEGRANK_ORT_WHEEL:-}" ]; then
  python3 -m pip install -q --no-deps --target /tmp/segrank-ort "$SEGRANK_ORT_WHEEL"
  export PYTHONPATH=/tmp/segrank-ort${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-deps --no-build-isolation . 2>&1 | tail -2
cd /tmp  # import the installed package, not the source folder
python3 "$OLDPWD/benchmarks/gpu_check.py" --out "$OLDPWD/$out/gpu_check.json"

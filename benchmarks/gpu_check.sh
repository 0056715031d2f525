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
elif [ -n "${SEGRANK_ORT_DIR:-}" ]; then  # an unpacked onnxruntime-gpu wheel
  export PYTHONPATH=$SEGRANK_ORT_DIR${PYTHONPATH:+:$PYTHONPATH}
fi
# CUDA / cuDNN libraries shipped as nvidia-* Python packages (e.g. beside a CUDA PyTorch)
nvlibs=$(python3 -c "import glob, site; print(':'.join(sorted({p for s in site.getsitepackages() for p in glob.glob(s + '/nvidia/**/lib', recursive=True)})))" 2>/dev/null || true)
[ -n "$nvlibs" ] && export LD_LIBRARY_PATH=$nvlibs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.__file__, o.get_available_providers())"
python3 -m pip install -q --no-deps --no-build-isolation . 2>&1 | tail -2
cd /tmp  # import the installed package, not the source folder
case $out in /*) ;; *) out=$OLDPWD/$out ;; esac
python3 "$OLDPWD/benchmarks/gpu_check.py" --out "$out/gpu_check.json"

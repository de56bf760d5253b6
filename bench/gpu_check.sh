#!/usr/bin/env bash
# The GPU device check in one call, on a fresh GPU machine with this repository.
#   bench/gpu_check.sh [ORT_ARCHIVE] [-- gpu_check args...]
# ORT_ARCHIVE: onnxruntime-gpu packed by shared/tools/pack_ort_gpu.py (a .tar.xz), unpacked
# into a temporary folder put first on PYTHONPATH; without it the installed onnxruntime-gpu
# is used. Every site-packages/nvidia/*/lib folder found (the CUDA 13 and cuDNN pip
# libraries) goes on LD_LIBRARY_PATH too, for an onnxruntime without preload_dlls.
# Then: the GPU tests (tests/gpu), and python -m bench.gpu_check, whose markdown goes to
# stdout and JSON to ${OUT:-.}/gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  unpacked=$(mktemp -d)
  trap 'rm -rf "$unpacked"' EXIT
  tar xJf "$1" -C "$unpacked"
  export PYTHONPATH="$unpacked${PYTHONPATH:+:$PYTHONPATH}"
  shift
fi
[ "${1:-}" = "--" ] && shift
libs=$("$PYTHON" - <<'PY'
import glob, site, sys
roots = [*site.getsitepackages(), site.getusersitepackages(), *sys.path]
print(":".join(sorted({d for r in roots for d in glob.glob(f"{r}/nvidia/*/lib")})))
PY
)
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi || echo "gpu_check: no nvidia-smi"
if "$PYTHON" -c "import pytest" 2>/dev/null; then
  "$PYTHON" -m pytest tests/gpu -q -p no:cacheprovider || echo "gpu_check: GPU tests failed"
fi
"$PYTHON" -m bench.gpu_check --json "${OUT:-.}/gpu_check.json" "$@"

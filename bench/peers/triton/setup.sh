#!/usr/bin/env bash
# Install Triton Inference Server for the benchmark: the nvidia-pytriton wheel (which ships
# a tritonserver binary and its python backend) into bench/.peers/triton/venv, with
# onnxruntime for the model; then generate the client's protobuf module with the main
# venv's grpc_tools. Needs the main .venv (make test's install). Takes a few minutes.
#   bash bench/peers/triton/setup.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
PEER=bench/.peers/triton
PYTHON=${PYTHON:-python3}
mkdir -p "$PEER/stubs"
[ -x "$PEER/venv/bin/python" ] || "$PYTHON" -m venv "$PEER/venv"
"$PEER/venv/bin/pip" install --quiet nvidia-pytriton==0.7.0 onnxruntime numpy
.venv/bin/python -m grpc_tools.protoc -I bench/peers/triton --python_out="$PEER/stubs" \
  bench/peers/triton/triton_subset.proto
SERVER=$(find "$PEER/venv" -path '*tritonserver/bin/tritonserver' | head -1)
[ -n "$SERVER" ] || { echo "setup: no tritonserver binary in the nvidia-pytriton wheel" >&2; exit 1; }
# The python backend runs models in a stub process built for one Python version; the wheel
# ships one per version: put the venv's next to the backend, as pytriton itself does.
TRITON=$(dirname "$(dirname "$SERVER")")
PYVER=$("$PEER/venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
cp "$TRITON/python_backend_stubs/$PYVER/triton_python_backend_stub" "$TRITON/backends/python/"
echo "triton set up: $SERVER"
echo "try: .venv/bin/python -m bench.peers.triton.serve --models bench/.cache/models"

#!/usr/bin/env bash
# Install TorchServe 0.12 for the benchmark into bench/.peers/torchserve/venv (its worker
# imports torch; onnxruntime runs the model), then generate the client's protobuf module
# with the main venv's grpc_tools. Needs Java 11+ (`apt-get install -y
# openjdk-17-jre-headless`) and the main .venv. Takes a few minutes.
#   bash bench/peers/torchserve/setup.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
PEER=bench/.peers/torchserve
PYTHON=${PYTHON:-python3}
command -v java >/dev/null || { echo "setup: TorchServe needs Java: apt-get install -y openjdk-17-jre-headless" >&2; exit 1; }
mkdir -p "$PEER/stubs"
[ -x "$PEER/venv/bin/python" ] || "$PYTHON" -m venv "$PEER/venv"
"$PEER/venv/bin/pip" install --quiet torchserve==0.12.0 torch-model-archiver==0.12.0 pyyaml \
  onnxruntime numpy torch
.venv/bin/python -m grpc_tools.protoc -I bench/peers/torchserve --python_out="$PEER/stubs" \
  bench/peers/torchserve/torchserve_subset.proto
echo "torchserve set up; try: .venv/bin/python -m bench.peers.torchserve.serve --models bench/.cache/models"

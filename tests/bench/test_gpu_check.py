"""The GPU device check runs on CPU with tiny sizes and says that CUDA is absent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_check_runs_the_cpu_parts_and_writes_json(tmp_path):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a CUDA onnxruntime: bench/gpu_check.sh is the check here")
    out = tmp_path / "check.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--quick", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CUDA is absent here" in result.stdout
    data = json.loads(out.read_text())
    assert data["failed"] == [] and data["environment"]["cuda"] is False
    assert set(data["step_us"]) == {"CPU, 1 thread"}
    assert set(data["step_us"]["CPU, 1 thread"]) == {"1", "8"}
    assert data["server_cpu"]["errors"] == 0
    assert data["server_benchmark"]["cpu"]["1"]["msg_per_s"] > 0

"""tritonclient, unchanged, against a real rnnstream server: outputs equal the native API's.

tritonclient requires protobuf<7, so, like a user's separate application, it runs in a
virtual environment of its own, cached outside the repository (keyed by the requirement)
so that reruns are fast. Skipped when that environment cannot be installed (offline).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rnnstream

REQUIREMENT = "tritonclient[grpc]==2.73.0"
SCRIPT = Path(__file__).with_name("tritonclient_script.py")
TOL = 1e-5


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rnnstream-tests"


def tritonclient_python() -> Path:
    """The python of a venv holding ``REQUIREMENT``, made once and reused."""
    key = hashlib.sha256(REQUIREMENT.encode()).hexdigest()[:12]
    venv = _cache_root() / f"tritonclient-venv-{key}"
    python = venv / "bin" / "python"
    if (venv / ".ready").exists():
        return python
    building = venv.with_name(venv.name + f".building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(building)], check=True, timeout=300)
        subprocess.run(
            [str(building / "bin" / "python"), "-m", "pip", "install", "--quiet", REQUIREMENT],
            check=True,
            timeout=600,
            capture_output=True,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(building, ignore_errors=True)
        pytest.skip(f"cannot install {REQUIREMENT}: {exc}")
    (building / ".ready").touch()
    # Moved into place whole (its python finds its packages from where it lies; only the
    # console scripts' shebangs would name the old path, and none is used).
    try:
        building.rename(venv)
    except OSError:  # another run finished first
        shutil.rmtree(building, ignore_errors=True)
    return python


def _sequence(seed: int, lengths: list[int]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, 2)).astype(np.float32) for n in lengths]


@pytest.mark.slow
def test_tritonclient_unchanged(server, tmp_path):
    python = tritonclient_python()
    unary = _sequence(1, [7])[0]
    sequences = {
        "a": {"id": 101, "chunks": _sequence(2, [2, 1, 3])},
        "b": {"id": 102, "chunks": _sequence(3, [1, 4])},
        "c": {"id": "sequence-c", "chunks": _sequence(4, [3, 2, 2, 1])},
    }
    spec = {
        "unary": unary.tolist(),
        "sequences": {
            name: {"id": s["id"], "chunks": [c.tolist() for c in s["chunks"]]}
            for name, s in sequences.items()
        },
    }
    (tmp_path / "in.json").write_text(json.dumps(spec))
    subprocess.run(
        [
            str(python),
            str(SCRIPT),
            server.address,
            str(tmp_path / "in.json"),
            str(tmp_path / "out.json"),
        ],
        check=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
    )
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["live"] and out["ready"]
    assert out["metadata"] == {"inputs": [["x", "FP32"]], "outputs": [["y", "FP32"]]}
    native = rnnstream.Client(server.address)
    try:
        np.testing.assert_allclose(out["unary"], native.predict(unary, model="tiny"), atol=TOL)
        for name, sequence in sequences.items():
            with native.session("tiny", return_sequences=True) as session:
                for i, chunk in enumerate(sequence["chunks"]):
                    expected = session.steps(chunk)
                    np.testing.assert_allclose(out["sequences"][f"{name}/{i}"], expected, atol=TOL)
    finally:
        native.close()

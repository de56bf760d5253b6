"""The GPU image and the [server-gpu] extra agree with the CUDA major onnxruntime-gpu needs.

onnxruntime-gpu's own metadata says which CUDA it was built for: its ``cuda`` and ``cudnn``
extras require ``nvidia-cuda-runtime~=13.0``, ``nvidia-cudnn-cu13`` and so on. The metadata
is read without the 255 MB wheel (``pip install --dry-run --report`` uses the index's
PEP 658 metadata) and cached under ``~/.cache/rnnstream-tests``. Without registry access the
test fails and says so: a silent skip would let the image drift from onnxruntime-gpu.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"


def server_gpu_requirement() -> str:
    """The onnxruntime-gpu requirement of the [server-gpu] extra, as written in pyproject."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    (requirement,) = [r for r in extras["server-gpu"] if r.startswith("onnxruntime-gpu")]
    return str(requirement)


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rnnstream-tests"


def onnxruntime_gpu_metadata(requirement: str) -> dict:
    """The core metadata (as pip's installation report writes it) of the version pip picks."""
    key = hashlib.sha256(requirement.encode()).hexdigest()[:12]
    cached = _cache_root() / f"onnxruntime-gpu-metadata-{key}.json"
    if cached.exists():
        return dict(json.loads(cached.read_text()))
    report = cached.with_name(cached.name + f".{os.getpid()}")
    report.parent.mkdir(parents=True, exist_ok=True)
    bare = requirement.split("[")[0] + requirement[requirement.find("]") + 1 :]
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps"),
            *("--ignore-installed", "--only-binary=:all:", "--quiet"),
            *("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11"),
            *("--target", str(report.parent / "unused"), "--report", str(report), bare),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0 or not report.exists():
        pytest.fail(
            f"could not read onnxruntime-gpu's metadata from the package index ({bare}): this "
            "test needs registry access to check the Dockerfile's CUDA major. pip said: "
            + result.stderr[-2000:]
        )
    metadata = json.loads(report.read_text())["install"][0]["metadata"]
    report.unlink()
    cached.write_text(json.dumps(metadata))
    return dict(metadata)


def cuda_majors(requires_dist: list[str]) -> dict[str, set[int]]:
    """CUDA majors the ``cuda`` and ``cudnn`` extras' requirements name, by extra.

    ``nvidia-cudnn-cu13`` names 13 by its suffix; ``nvidia-cuda-runtime~=13.0`` by its version.
    """
    majors: dict[str, set[int]] = {}
    for line in requires_dist:
        requirement, _, marker = line.partition(";")
        extra = re.search(r"extra\s*==\s*['\"](\w+)['\"]", marker)
        if extra is None or extra.group(1) not in ("cuda", "cudnn"):
            continue
        name = re.match(r"[A-Za-z0-9_.-]+", requirement.strip())
        assert name is not None
        suffix = re.search(r"-cu(\d+)$", name.group(0))
        version = re.search(r"(?:~=|==|>=)\s*(\d+)", requirement)
        if suffix:
            majors.setdefault(extra.group(1), set()).add(int(suffix.group(1)))
        elif name.group(0) == "nvidia-cuda-runtime" and version:
            majors.setdefault(extra.group(1), set()).add(int(version.group(1)))
    return majors


def dockerfile_cuda_majors(text: str) -> set[int]:
    """CUDA majors of every nvidia/cuda image the Dockerfile names (FROM or ARG default)."""
    return {int(m) for m in re.findall(r"nvidia/cuda:(\d+)\.", text)}


def test_cuda_majors_are_read_from_requires_dist():
    requires = [
        "numpy>=1.21.6",
        'nvidia-cuda-runtime~=13.0; extra == "cuda"',
        'nvidia-cufft~=12.0; extra == "cuda"',
        'nvidia-cudnn-cu13~=9.0; extra == "cudnn"',
    ]
    assert cuda_majors(requires) == {"cuda": {13}, "cudnn": {13}}
    assert dockerfile_cuda_majors("ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime") == {12}


def test_dockerfile_cuda_major_matches_onnxruntime_gpu():
    requirement = server_gpu_requirement()
    assert re.match(r"onnxruntime-gpu\[cuda,\s*cudnn\]", requirement), (
        f"[server-gpu] must install onnxruntime-gpu's cuda and cudnn extras: {requirement}"
    )
    assert "<" in requirement, "pin onnxruntime-gpu's range so this check is deterministic"
    metadata = onnxruntime_gpu_metadata(requirement)
    majors = cuda_majors(metadata.get("requires_dist", []))
    assert set(majors) == {"cuda", "cudnn"}, (
        f"onnxruntime-gpu {metadata['version']} has no cuda/cudnn extras naming a CUDA major: "
        f"{metadata.get('requires_dist')}"
    )
    wanted = set().union(*majors.values())
    assert len(wanted) == 1, f"onnxruntime-gpu's extras name several CUDA majors: {majors}"
    text = DOCKERFILE.read_text()
    assert dockerfile_cuda_majors(text) <= wanted, (
        f"the Dockerfile names CUDA {sorted(dockerfile_cuda_majors(text))}, onnxruntime-gpu "
        f"{metadata['version']} needs CUDA {wanted.pop()}"
    )
    # The gpu image gets CUDA from the extras, so it must install [server-gpu].
    assert re.search(r'"\.\[server-gpu(,[a-z-]+)*\]"', text)

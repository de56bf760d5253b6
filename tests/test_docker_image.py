"""The default Docker image, built and run for real.

The test builds the CPU image (``--target runtime``, what ``docker build -t rnnstream .``
yields), runs it with ``--network host`` on a free port of 127.0.0.1 and checks it: it runs
as uid 10001 without torch, its HEALTHCHECK passes, it starts without onnxruntime
warnings, it serves a session exactly as an in-process server on the same models does,
``docker stop`` drains with exit code 0, and a new container on the same volume resumes
that session where it stopped.

``PYTHON_IMAGE``, when set, is passed as the build argument of the same name (a local
stand-in for ``python:3.11-slim-bookworm`` where Docker Hub cannot be reached; ``.ci/run``
sets it). Without a Docker engine the tests are skipped, saying so (they fail instead when
``PYTHON_IMAGE`` is set: that machine was meant to build). The containers and
volumes the tests create are removed by id; the image is kept as the build cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rnnstream
from rnnstream.server.server import BackgroundServer
from rnnstream.server.settings import Settings
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]
IMAGE_TAG = "rnnstream:test"
BUILD_TIMEOUT_S = 900
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
UID = "10001"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(BUILD_TIMEOUT_S + 300)]


def docker(*args: str, timeout: float = 60, check: bool = True) -> str:
    """Run a docker command; its stdout (``check``: fail on a non-zero exit, with stderr)."""
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check:
        assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr[-4000:]}"
    return result.stdout.strip()


def no_engine_reason() -> str | None:
    """Why no Docker engine can be used here, or None when one answers."""
    if shutil.which("docker") is None:
        return "no docker command on PATH"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        lines = info.stderr.strip().splitlines() or ["docker info failed"]
        return lines[-1]
    return None


_NO_ENGINE = no_engine_reason()
if _NO_ENGINE is not None:
    _MESSAGE = f"Docker image not built or run: no Docker engine ({_NO_ENGINE})"
    if os.environ.get("PYTHON_IMAGE"):  # a base image was named: building was expected
        pytest.fail(_MESSAGE, pytrace=False)
    pytest.skip(_MESSAGE, allow_module_level=True)


@dataclass(frozen=True)
class Image:
    """The built image: its id and the configuration the tests rely on."""

    id: str
    config: dict[str, Any]

    @property
    def state_dir(self) -> str:
        """The image's ``RNNSTREAM_STATE_DIR``."""
        env = dict(item.split("=", 1) for item in self.config["Env"])
        return str(env["RNNSTREAM_STATE_DIR"])


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The default (CPU) image, built from this checkout."""
    # BuildKit needs buildx; without it, the legacy builder (it builds every stage up to
    # --target, which is why the CUDA stage comes after runtime).
    buildkit = subprocess.run(["docker", "buildx", "version"], capture_output=True, timeout=60)
    env = dict(os.environ, DOCKER_BUILDKIT="1" if buildkit.returncode == 0 else "0")
    iidfile = tmp_path_factory.mktemp("image") / "id"
    command = ["docker", "build", "--network", "host", "--target", "runtime", "--force-rm"]
    if os.environ.get("PYTHON_IMAGE"):
        command += ["--build-arg", f"PYTHON_IMAGE={os.environ['PYTHON_IMAGE']}"]
    command += ["--iidfile", str(iidfile), "-t", IMAGE_TAG, str(REPO)]
    build = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=BUILD_TIMEOUT_S, check=False
    )
    assert build.returncode == 0, (
        f"{' '.join(command)} failed (without Docker Hub, set PYTHON_IMAGE to a local base "
        f"image):\n{(build.stdout + build.stderr)[-4000:]}"
    )
    image_id = iidfile.read_text().strip()
    config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", image_id))
    return Image(image_id, config)


class Container:
    """A container of the image on the host's network, serving on a free loopback port."""

    def __init__(self, image: Image, volume: str) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.id = docker(
            "run",
            "--detach",
            "--network",
            "host",
            "--env",
            "RNNSTREAM_HOST=127.0.0.1",
            "--env",
            f"RNNSTREAM_PORT={self.port}",
            "--volume",
            f"{volume}:{image.state_dir}",
            image.id,
        )

    def state(self, field: str) -> str:
        """One field of the container's state (``Running``, ``ExitCode``, ...)."""
        return docker("container", "inspect", "--format", f"{{{{.State.{field}}}}}", self.id)

    def logs(self) -> str:
        """Everything the container wrote to stdout and stderr."""
        result = subprocess.run(
            ["docker", "logs", self.id], capture_output=True, text=True, timeout=60, check=True
        )
        return result.stdout + result.stderr

    def wait_until_serving(self) -> None:
        """Poll grpc.health.v1 through the SDK until SERVING; fail if the container exits."""
        deadline = time.monotonic() + START_TIMEOUT_S
        with rnnstream.Client(self.address, timeout=2, max_retries=0) as client:
            while True:
                try:
                    if client.health() == "SERVING":
                        return
                except rnnstream.RnnstreamError:
                    pass
                assert self.state("Running") == "true", f"container exited:\n{self.logs()}"
                assert time.monotonic() < deadline, f"not serving in time:\n{self.logs()}"
                time.sleep(0.2)

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        """Run a command in the container (as the image's user)."""
        return subprocess.run(
            ["docker", "exec", self.id, *command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def stop(self) -> None:
        """``docker stop``: SIGTERM, and SIGKILL after ``STOP_TIMEOUT_S``."""
        docker("stop", "--time", str(STOP_TIMEOUT_S), self.id, timeout=STOP_TIMEOUT_S + 60)

    def remove(self) -> None:
        """Remove the container, running or not."""
        docker("rm", "--force", self.id, check=False)


class Containers:
    """Containers of the image that share one new volume; ``close`` removes them and it."""

    def __init__(self, image: Image) -> None:
        self.image = image
        self.volume = docker("volume", "create")
        self.started: list[Container] = []

    def start(self) -> Container:
        """A new container on the volume, once it serves."""
        container = Container(self.image, self.volume)
        self.started.append(container)
        container.wait_until_serving()
        return container

    def close(self) -> None:
        """Remove every container started, then the volume."""
        for container in self.started:
            container.remove()
        docker("volume", "rm", self.volume, check=False)


@pytest.fixture
def containers(image: Image) -> Iterator[Containers]:
    """Containers for one test, removed after it."""
    pool = Containers(image)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="module")
def reference_server() -> Iterator[BackgroundServer]:
    """An in-process server on the same bundled models: what the image must answer."""
    settings = Settings.from_env({}, host="127.0.0.1", port=0, state_dir="")
    with BackgroundServer(settings) as server:
        yield server


def reference_outputs(server: BackgroundServer, x: np.ndarray) -> np.ndarray:
    """Y of one uninterrupted session of the default model over x."""
    with rnnstream.Client(server.address, timeout=30) as client, client.session() as session:
        return session.steps(x)


def steps_for(client: rnnstream.Client, seed: int, t: int) -> np.ndarray:
    """Random steps [t, F] for the default model."""
    n_features = next(m.n_features for m in client.models() if m.name == client.default_model())
    return np.random.default_rng(seed).standard_normal((t, n_features)).astype(np.float32)


def test_state_dir_is_a_volume_of_the_image(image):
    assert image.config["Volumes"] == {image.state_dir: {}}
    assert image.config["User"] == UID


def test_container_runs_as_non_root_without_torch_and_passes_its_healthcheck(image, containers):
    container = containers.start()
    status = container.exec("cat", "/proc/1/status").stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids == [UID] * 4, status
    no_torch = container.exec("python", "-c", "import torch")
    assert no_torch.returncode != 0, "the image has torch"
    healthcheck = image.config["Healthcheck"]["Test"]
    assert healthcheck[0] == "CMD", healthcheck
    probe = container.exec(*healthcheck[1:])
    assert probe.returncode == 0, probe.stderr
    logs = container.logs()
    assert "serving" in logs
    assert "W:onnxruntime" not in logs and "telemetry" not in logs, logs


def test_stop_drains_and_a_new_container_resumes_the_session_exactly(containers, reference_server):
    first = containers.start()
    with rnnstream.Client(first.address, timeout=30) as client:
        x = steps_for(client, seed=7, t=40)
        with client.session() as session:
            before = session.steps(x[:25])
            session_id = session.id
    want = reference_outputs(reference_server, x)
    np.testing.assert_array_equal(before, want[:25])

    first.stop()
    assert first.state("ExitCode") == "0", first.logs()
    assert "snapshot: 1 sessions written" in first.logs()

    second = containers.start()
    with (
        rnnstream.Client(second.address, timeout=30) as client,
        client.session(session_id=session_id) as session,
    ):
        assert session.next_step == 25
        after = session.steps(x[25:])
    np.testing.assert_array_equal(after, want[25:])

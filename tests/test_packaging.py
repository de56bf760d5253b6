"""The installed distribution adds exactly one top-level import name, ``rnnstream``.

The server and the training code live in the top-level folders ``service/`` and ``export/``
but are imported as ``rnnstream.server`` and ``rnnstream.export``: an application with its
own ``service.py`` next to it must keep working, and ``rnnstream serve`` must never import
that file instead of ours.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from this checkout (no network: setuptools is installed)."""
    out = tmp_path_factory.mktemp("wheel")
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*build, "--wheel-dir", str(out), str(REPO)],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("rnnstream-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with only the wheel installed (its dependencies are taken
    from this environment's site-packages through a path file, so no download is needed;
    that file adds no rnnstream: this environment's own is an editable install, whose
    hook lives in a .pth file that a path entry does not run)."""
    root = tmp_path_factory.mktemp("venv")
    venv.create(root, with_pip=False, symlinks=True)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(purelib)
    entry = root / "bin" / "rnnstream"
    entry.write_text(f"#!{python}\nimport sys\nfrom rnnstream.cli import main\nsys.exit(main())\n")
    entry.chmod(0o755)
    return root


def test_wheel_holds_one_top_level_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
        names = set(archive.namelist())
    packages = {t for t in tops if not t.endswith(".dist-info")}
    assert packages == {"rnnstream"}
    assert "rnnstream/server/server.py" in names
    assert "rnnstream/export/onnx.py" in names


@pytest.mark.slow
def test_installed_wheel_imports_only_namespaced_names(fresh_venv: Path, tmp_path: Path) -> None:
    python = fresh_venv / "bin" / "python"
    for name in ("service", "export"):
        result = subprocess.run(
            [str(python), "-c", f"import {name}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0, f"import {name} works in a fresh install"
        assert "ModuleNotFoundError" in result.stderr
    subprocess.run(
        [str(python), "-c", "import rnnstream.server.server, rnnstream.export.cli, rnnstream"],
        cwd=tmp_path,
        check=True,
        timeout=60,
    )


@pytest.mark.slow
def test_serve_help_ignores_a_users_service_module(fresh_venv: Path, tmp_path: Path) -> None:
    (tmp_path / "service.py").write_text("raise SystemExit('the user service.py was imported')\n")
    (tmp_path / "export.py").write_text("raise SystemExit('the user export.py was imported')\n")
    for command in (["serve", "--help"], ["train", "--help"]):
        result = subprocess.run(
            [str(fresh_venv / "bin" / "rnnstream"), *command],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "usage: rnnstream" in result.stdout


def test_a_folder_named_rnnstream_in_the_working_directory_does_not_shadow_the_sdk(
    tmp_path: Path,
) -> None:
    """A clone named ``rnnstream`` run from its parent: its folder has no __init__.py, so it
    is at most a namespace package, which every regular package on sys.path beats."""
    (tmp_path / "rnnstream" / "proto").mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-c", "import rnnstream; rnnstream.Client; rnnstream.AsyncClient"],
        cwd=tmp_path,
        check=True,
        timeout=60,
    )

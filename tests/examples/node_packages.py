"""The npm packages of examples/node, installed once per lock file into a cache outside the repo.

``npm ci`` runs in ``~/.cache/rnnstream-tests/node/<hash of package.json and
package-lock.json>`` (``RNNSTREAM_TEST_CACHE`` moves the root), so a rerun with the same
lock file reuses that folder's ``node_modules`` and needs no network. The example finds
the packages through ``NODE_PATH``; nothing is written into the repository.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

NODE_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node"
LOCKED_FILES = ("package.json", "package-lock.json")
MISSING_TOOLS = (
    "the Node.js client test needs node and npm on PATH (Debian/Ubuntu: "
    "`apt-get install nodejs npm`; `make test` installs them when run as root): missing {}"
)


def node_tools() -> tuple[str, str]:
    """The paths of ``node`` and ``npm``; AssertionError naming what is missing otherwise."""
    found = {tool: shutil.which(tool) for tool in ("node", "npm")}
    missing = [tool for tool, path in found.items() if path is None]
    if missing:
        raise AssertionError(MISSING_TOOLS.format(" and ".join(missing)))
    return str(found["node"]), str(found["npm"])


def cache_root() -> Path:
    """Where installs are kept: ``$RNNSTREAM_TEST_CACHE/node``, else under ``~/.cache``."""
    base = os.environ.get("RNNSTREAM_TEST_CACHE") or Path.home() / ".cache" / "rnnstream-tests"
    return Path(base) / "node"


def lock_key() -> str:
    """A hash of the files ``npm ci`` installs from: a new lock file gets a new folder."""
    digest = hashlib.sha256()
    for name in LOCKED_FILES:
        digest.update((NODE_EXAMPLE / name).read_bytes())
    return digest.hexdigest()[:16]


def installed_node_modules(npm: str) -> Path:
    """The ``node_modules`` folder for the current lock file, installing it if needed.

    The install happens in a temporary folder that is renamed into place when complete,
    so an interrupted ``npm ci`` never leaves a half-filled cache entry behind.
    """
    target = cache_root() / lock_key()
    modules = target / "node_modules"
    if modules.is_dir():
        return modules
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}-", dir=target.parent))
    try:
        for name in LOCKED_FILES:
            shutil.copy2(NODE_EXAMPLE / name, staging / name)
        # No install scripts: the packages are plain JavaScript (protobufjs' postinstall
        # only checks versions of its own command line tool, which is not used).
        command = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
        done = subprocess.run(command, cwd=staging, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise AssertionError(f"npm ci failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        try:
            staging.rename(target)
        except OSError:
            if not modules.is_dir():  # not another run that finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return modules


@functools.cache
def node_and_modules() -> tuple[str, Path]:
    """``node`` and the installed ``node_modules`` (once per test run); AssertionError when
    node or npm is missing or the install fails."""
    node, npm = node_tools()
    return node, installed_node_modules(npm)

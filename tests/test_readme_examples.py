"""Every ```python block of the README runs as written against a server with the bundled models.

The blocks talk to ``localhost:50051``; the test starts a real server on 127.0.0.1 and a
free port, serving ``models/`` (``seattle-temp`` and ``msft-vol``), and runs each block on
its own with that address put in place of ``localhost:50051``. Each block prints what it
got, so a block that runs to its end leaves output.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
README_ADDRESS = "localhost:50051"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def python_blocks(markdown: str) -> list[tuple[int, str]]:
    """(line number, code) of every ```python block."""
    return [
        (markdown.count("\n", 0, match.start()) + 1, match.group(1))
        for match in PYTHON_BLOCK.finditer(markdown)
    ]


BLOCKS = python_blocks(README)


@pytest.fixture(scope="module")
def bundled_server() -> Iterator[str]:
    """A real server on 127.0.0.1 and a free port, serving the bundled models; its address."""
    from rnnstream.server.server import BackgroundServer
    from rnnstream.server.settings import Settings

    settings = Settings.from_env(
        {}, models=ROOT / "models", host="127.0.0.1", port=0, grace_s=1.0, state_dir=""
    )
    with BackgroundServer(settings) as running:
        yield running.address


def test_the_readme_has_python_examples_that_use_the_readme_address() -> None:
    assert len(BLOCKS) >= 3
    assert all(README_ADDRESS in code for _, code in BLOCKS)


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_python_block_runs(
    line: int, code: str, bundled_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = "\n" * line + code.replace(README_ADDRESS, bundled_server)  # README line numbers
    exec(compile(source, "README.md", "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out, "every example prints what it got"

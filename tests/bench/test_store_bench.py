"""The session store benchmark runs and prints a row per store (tiny; timings not asserted)."""

from __future__ import annotations

import shutil

import pytest

from bench import store


def test_store_benchmark_prints_a_row_per_store(capsys: pytest.CaptureFixture[str]) -> None:
    stores = "local,redis" if shutil.which("redis-server") else "local"
    assert store.main(["--sessions", "50", "--repeats", "1", "--stores", stores]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("entry: ") and "checkpoint" in lines[1]
    assert [line.split()[:2] for line in lines[3:]] == [[s, "50"] for s in stores.split(",")]

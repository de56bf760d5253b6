"""The moves benchmark runs end to end and prints its two rows (tiny; timings not asserted)."""

from __future__ import annotations

import shutil

import pytest

from bench import moves


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_moves_benchmark_prints_create_and_move_rows(capsys: pytest.CaptureFixture[str]) -> None:
    assert moves.main(["--sessions", "3", "--rounds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("create Open p50 ") and lines[0].endswith("(3 sessions)")
    assert (
        lines[1].startswith("moving Open p50 ")
        and "(6 moves between 2 processes, redis store)" in lines[1]
    )

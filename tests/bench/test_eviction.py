"""The eviction benchmark runs and prints its table (sizes tiny; timings not asserted)."""

from __future__ import annotations

import pytest

from bench import eviction


def test_eviction_benchmark_prints_a_row_per_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert eviction.main(["--sizes", "50,100", "--opens", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "Open, evicting" in lines[0]
    assert [line.split()[0] for line in lines[2:]] == ["50", "100"]
    assert all(line.endswith("x") for line in lines[2:])

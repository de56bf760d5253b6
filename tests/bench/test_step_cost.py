"""``python -m bench.step_cost``: one row per model and batch size, relative to the first."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import step_cost

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_compares_the_bundled_versions(capsys):
    one, two = MODELS / "seattle-temp" / "1", MODELS / "seattle-temp" / "2"
    assert step_cost.main([str(one), str(two), "--batches", "1,8", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "state", "B", "us/call", "us/row", "x", "first"]
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("seattle-temp/1", "32", "1"),
        ("seattle-temp/1", "32", "8"),
        ("seattle-temp/2", "104", "1"),
        ("seattle-temp/2", "104", "8"),
    ]
    assert rows[0][5] == rows[1][5] == "1.00"  # the first model is the reference
    assert all(float(r[3]) > 0 for r in rows)


def test_bad_batches_are_refused():
    with pytest.raises(SystemExit) as exit_info:
        step_cost.main([str(MODELS / "msft-vol" / "1"), "--batches", "0"])
    assert exit_info.value.code == 2

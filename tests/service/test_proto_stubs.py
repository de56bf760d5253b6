"""The committed stubs (rnnstream/v1, rnnstream/kserve) are what `make proto` generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_fresh(tmp_path):
    subprocess.run(
        [sys.executable, str(REPO / "proto" / "generate.py"), "--out", str(tmp_path)],
        check=True,
        timeout=120,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(
        p.relative_to(REPO)
        for package in ("v1", "kserve")
        for p in (REPO / "rnnstream" / package).iterdir()
        if p.name.endswith((".py", ".pyi")) and "_pb2" in p.name
    )
    assert generated == committed
    stale = [str(p) for p in generated if (tmp_path / p).read_bytes() != (REPO / p).read_bytes()]
    assert not stale, f"stale generated code, run `make proto`: {stale}"

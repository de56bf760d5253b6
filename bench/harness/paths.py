"""Where the harness finds the checkout and the peers, and where it writes what it measured."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
PLOT = ROOT / "docs" / "img" / "bench_throughput.png"
PEERS = ROOT / "bench" / ".peers"

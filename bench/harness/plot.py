"""The figure: throughput and p50 latency against stream count, one line per system."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.harness.aggregate import Cell


def throughput(cells: Sequence[Cell], path: Path, title: str) -> None:
    """Throughput and p50 latency vs streams, one line per system (lock-step, k=1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for system in dict.fromkeys(c.system for c in cells):
        # A run that produced nothing (the system crashed) is a gap, not a zero.
        series = sorted(
            (c for c in cells if c.system == system and c.steps == 1 and c.msg_per_s > 0),
            key=lambda c: c.streams,
        )
        if not series:
            continue
        xs = [c.streams for c in series]
        ax1.plot(xs, [c.msg_per_s for c in series], marker="o", label=system)
        ax1.fill_between(
            xs, [c.msg_per_s_min for c in series], [c.msg_per_s_max for c in series], alpha=0.15
        )
        ax2.plot(xs, [c.p50_us / 1000 for c in series], marker="o", label=system)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams (lock-step, 1 step per message)")
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_ylabel("messages per second (median; band: min-max)")
    ax1.set_ylim(bottom=0)
    ax2.set_ylabel("p50 latency per message (ms)")
    ax2.set_yscale("log")
    ax1.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)

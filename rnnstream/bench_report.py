"""Reporting load results: a plain-text table and a JSON document.

What ``rnnstream bench`` (and the benchmark harness) print and save from the
:class:`rnnstream.loadgen.LoadResult` values the load generator returns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rnnstream.loadgen import LoadResult


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def format_table(results: Sequence[LoadResult]) -> str:
    """A plain-text table, one row per result."""
    header = (
        "system",
        "streams",
        "mode",
        "k",
        "msg/s",
        "steps/s",
        "p50 us",
        "p90 us",
        "p99 us",
        "srv cpu us/msg",
        "cli cpu us/msg",
        "errors",
    )
    rows = [header]
    for r in results:
        rows.append(
            (
                r.label,
                str(r.streams),
                "lock-step" if r.window == 1 else f"pipe({r.window})",
                str(r.steps_per_message),
                _fmt(r.msg_per_s),
                _fmt(r.timesteps_per_s),
                _fmt(r.latency_us["p50"]),
                _fmt(r.latency_us["p90"]),
                _fmt(r.latency_us["p99"]),
                _fmt(r.server_cpu_us_per_msg),
                _fmt(r.client_cpu_us_per_msg),
                str(r.errors),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(
    path: Path, results: Sequence[LoadResult], meta: dict[str, Any] | None = None
) -> None:
    """Write the results (and optional metadata) as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"meta": meta or {}, "results": [r.to_dict() for r in results]}
    path.write_text(json.dumps(_finite(document), indent=2, allow_nan=False) + "\n")


def _finite(value: Any) -> Any:
    """NaN and infinities become None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value

"""The harness end to end with tiny durations: echo and rnnstream on the tiny model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from bench import harness


@pytest.mark.slow
def test_harness_smoke(tiny_models: Path, tmp_path: Path) -> None:
    out, png = tmp_path / "r.json", tmp_path / "p.png"
    stdout = io.StringIO()
    code = harness.main(
        [
            "--systems",
            "echo,rnnstream,diy",
            "--streams",
            "1,2",
            "--duration",
            "0.3",
            "--warmup",
            "0.1",
            "--reps",
            "2",
            "--chunk-steps",
            "4",
            "--chunk-streams",
            "1,2",
            "--models",
            str(tiny_models),
            "--model",
            "tiny",
            "--out",
            str(out),
            "--plot",
            str(png),
            "--logs",
            str(tmp_path / "logs"),
        ],
        stdout=stdout,
    )
    text = stdout.getvalue()
    assert code == 0, text
    assert "/echo" in text and "/diy" in text
    document = json.loads(out.read_text())
    results = document["results"]
    # 2 reps x (2 stream counts + 2 chunked) x 3 systems
    assert len(results) == 24
    assert {(r["streams"], r["steps_per_message"]) for r in results} == {
        (1, 1),
        (2, 1),
        (1, 4),
        (2, 4),
    }
    assert all(r["errors"] == 0 for r in results)
    assert {r["label"] for r in results} == {"echo", "rnnstream", "diy"}
    assert all(r["server_cpu_us_per_msg"] is not None for r in results)
    assert {c["system"] for c in document["meta"]["summary"]} == {"echo", "rnnstream", "diy"}
    assert png.stat().st_size > 1000


def test_interleaved_plan_rotates_systems() -> None:
    settings = harness.parse(
        ["--streams", "1,16", "--reps", "2", "--chunk-steps", "8", "--chunk-streams", "1,4"]
    )
    systems = [harness.System(name, ["true"]) for name in ("a", "b")]
    order = [("ab"[i], streams, k) for i, streams, k, _ in harness.plan(settings, systems)]
    assert order == [
        ("a", 1, 1), ("b", 1, 1), ("a", 16, 1), ("b", 16, 1),
        ("a", 1, 8), ("b", 1, 8), ("a", 4, 8), ("b", 4, 8),
        ("b", 1, 1), ("a", 1, 1), ("b", 16, 1), ("a", 16, 1),
        ("b", 1, 8), ("a", 1, 8), ("b", 4, 8), ("a", 4, 8),
    ]  # fmt: skip


def test_quick_is_short() -> None:
    settings = harness.parse(["--quick"])
    assert settings.streams == [1, 16]
    assert settings.chunk_streams == [1]
    assert settings.reps == 1
    assert settings.duration_s <= 1.5


def test_stream_counts_must_be_positive() -> None:
    with pytest.raises(SystemExit):
        harness.parse(["--chunk-streams", "0"])

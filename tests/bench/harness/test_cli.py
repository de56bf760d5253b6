"""``python -m bench.harness`` end to end with tiny durations, and its flags."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import cli
from bench.harness.paths import ROOT


@pytest.mark.slow
def test_harness_smoke(tiny_models: Path, tmp_path: Path) -> None:
    out, png = tmp_path / "r.json", tmp_path / "p.png"
    stdout = io.StringIO()
    code = cli.main(
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
    assert "\nTargets:\n" in text
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


def test_module_runs_as_a_program() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.harness", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m bench.harness")
    assert "every system on the same machine" in done.stdout
    assert "--chunk-streams" in done.stdout


def test_quick_is_short() -> None:
    settings = cli.parse(["--quick"])
    assert settings.streams == [1, 16]
    assert settings.chunk_streams == [1]
    assert settings.reps == 1
    assert settings.duration_s <= 1.5


def test_stream_counts_must_be_positive() -> None:
    with pytest.raises(SystemExit):
        cli.parse(["--chunk-streams", "0"])


def test_each_worker_count_is_its_own_rnnstream_system_in_place() -> None:
    settings = cli.parse(["--systems", "echo,rnnstream,diy", "--workers", "1,2"])
    assert settings.systems == ["echo", "rnnstream", "rnnstream-w2", "diy"]
    assert settings.workers == [1, 2]
    assert cli.parse(["--systems", "rnnstream", "--workers", "4"]).systems == ["rnnstream-w4"]


def test_clients_and_channels_reach_the_settings() -> None:
    settings = cli.parse(["--clients", "3", "--channels", "2"])
    assert (settings.clients, settings.channels) == (3, 2)
    assert (cli.parse([]).clients, cli.parse([]).channels) == (1, 0)


@pytest.mark.parametrize(
    "argv",
    [
        ["--workers", "0"],
        ["--workers", "two"],
        ["--systems", "echo", "--workers", "1,2"],
        ["--server-args", "--workers 2"],
        ["--clients", "0"],
        ["--channels", "-1"],
    ],
)
def test_bad_worker_client_and_channel_counts_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parse(argv)


@pytest.mark.slow
def test_workers_and_clients_smoke(tiny_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    stdout = io.StringIO()
    code = cli.main(
        [
            "--quick",
            "--systems",
            "rnnstream",
            "--workers",
            "1,2",
            "--clients",
            "2",
            "--streams",
            "1,16",
            "--models",
            str(tiny_models),
            "--model",
            "tiny",
            "--out",
            str(out),
            "--no-plot",
            "--logs",
            str(tmp_path / "logs"),
        ],
        stdout=stdout,
    )
    assert code == 0, stdout.getvalue()
    document = json.loads(out.read_text())
    assert "--workers 2" in document["meta"]["commands"]["rnnstream-w2"]
    assert "--workers" not in document["meta"]["commands"]["rnnstream"]
    results = document["results"]
    # 1 rep x (2 stream counts + 1 chunked) x 2 systems
    assert len(results) == 6
    assert {r["label"] for r in results} == {"rnnstream", "rnnstream-w2"}
    assert all(r["errors"] == 0 and r["messages"] > 0 for r in results)
    assert all(r["server_cpu_us_per_msg"] is not None for r in results)
    split = [r for r in results if r["streams"] == 16]
    assert len(split) == 2
    for r in split:  # two client processes, 8 streams on 4 channels each
        assert r["extra"]["clients"] == 2
        assert r["extra"]["client_streams"] == [8, 8]
        assert r["channels"] == 8
        assert r["msg_per_s"] == pytest.approx(sum(r["extra"]["client_msg_per_s"]))
    assert all("clients" not in r["extra"] for r in results if r["streams"] == 1)
    w2_log = (tmp_path / "logs" / "rnnstream-w2.log").read_text()
    assert w2_log.count("[worker 1]") and w2_log.count("[worker 2]")

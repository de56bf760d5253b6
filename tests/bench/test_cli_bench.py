"""``rnnstream bench``: help, and a short run against the real server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rnnstream import cli, cli_bench


def test_bench_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--streams" in out
    assert "--server-pid" in out


def test_bench_sweep_writes_json(
    server: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bench.json"
    code = cli_bench.main(
        [
            "--address",
            server.address,  # type: ignore[attr-defined]
            "--model",
            "tiny",
            "--streams",
            "1,2",
            "--messages",
            "3",
            "--warmup",
            "0",
            "--json",
            str(path),
        ]
    )
    assert code == 0
    document = json.loads(path.read_text())
    assert [r["messages"] for r in document["results"]] == [3, 6]
    assert "msg/s" in capsys.readouterr().out


def test_bench_unreachable_server_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import free_port

    code = cli_bench.main(
        ["--address", f"127.0.0.1:{free_port()}", "--messages", "1", "--timeout", "0.5"]
    )
    assert code == 1
    assert "cannot reach" in capsys.readouterr().err


def test_bench_rejects_bad_streams(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_bench.main(["--streams", "0"])

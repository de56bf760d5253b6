"""``rnnstream models`` and ``rnnstream stream`` through ``rnnstream.cli.main``."""

from __future__ import annotations

import csv
import io
import socket

import numpy as np
import pytest

from rnnstream.cli import main
from tests.sdk.conftest import rand, reference

ATOL = 1e-5


def write_csv(path, header, rows) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def test_models_table(server, capsys):
    assert main(["models", "--address", server.address]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = ["NAME", "VERSION", "CELL", "F", "O", "S", "TASK", "MODE", "WARM-UP"]
    assert lines[0].split() == header
    assert any(
        line.split()[:8] == ["tiny", "*", "1", "rnn", "2", "3", "5", "forecast"] for line in lines
    )
    assert any(
        line.split() == ["tiny-m2o", "1", "rnn", "3", "1", "4", "forecast", "many-to-one", "0"]
        for line in lines
    )


def test_address_from_the_environment(server, capsys, monkeypatch):
    monkeypatch.setenv("RNNSTREAM_ADDRESS", server.address)
    assert main(["models"]) == 0
    assert "tiny-m2o" in capsys.readouterr().out


def test_stream_many_to_many(server, tmp_path, capsys):
    x = rand(30, 23)
    path = tmp_path / "in.csv"
    # extra columns, in another order: --column picks and orders them
    write_csv(path, ["time", "b", "a"], [[i, x[i, 1], x[i, 0]] for i in range(len(x))])
    args = ["stream", "--model", "tiny", "--csv", str(path), "--column", "a", "--column", "b"]
    assert main([*args, "--address", server.address, "--chunk", "5"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["step", "y0", "y1", "y2"]
    assert [int(r[0]) for r in rows[1:]] == list(range(23))
    y = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(y, reference(x)[0], atol=ATOL)


def test_stream_to_file_with_feature_named_columns(server, tmp_path, capsys):
    x = rand(31, 9)
    path, out = tmp_path / "in.csv", tmp_path / "out.csv"
    write_csv(path, ["f1", "f0"], [[x[i, 1], x[i, 0]] for i in range(len(x))])
    assert (
        main(
            [
                "stream",
                "--model",
                "tiny",
                "--csv",
                str(path),
                "--out",
                str(out),
                "--address",
                server.address,
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == ""
    rows = list(csv.reader(io.StringIO(out.read_text())))
    y = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(y, reference(x)[0], atol=ATOL)


def test_stream_many_to_one(server, tmp_path, capsys):
    x = rand(32, 14)
    path = tmp_path / "in.csv"
    write_csv(path, ["p", "q"], x.tolist())
    assert (
        main(
            [
                "stream",
                "--model",
                "tiny",
                "--csv",
                str(path),
                "--many-to-one",
                "--address",
                server.address,
            ]
        )
        == 0
    )
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["y0", "y1", "y2"] and len(rows) == 2
    np.testing.assert_allclose([float(v) for v in rows[1]], reference(x)[0][-1], atol=ATOL)


def test_stream_unknown_model(server, tmp_path, capsys):
    path = tmp_path / "in.csv"
    write_csv(path, ["a"], [[1.0]])
    assert main(["stream", "--model", "nope", "--csv", str(path), "--address", server.address]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rnnstream: error: NOT_FOUND") and "nope" in err


def test_stream_bad_input(server, tmp_path, capsys):
    path = tmp_path / "in.csv"
    write_csv(path, ["a", "b", "c"], [[1.0, 2.0, 3.0]])
    assert main(["stream", "--model", "tiny", "--csv", str(path), "--address", server.address]) == 1
    assert "pass --column" in capsys.readouterr().err
    write_csv(path, ["a", "b"], [[1.0, "x"]])
    assert main(["stream", "--model", "tiny", "--csv", str(path), "--address", server.address]) == 1
    assert "line 2" in capsys.readouterr().err
    assert main(["stream", "--model", "tiny", "--csv", str(tmp_path / "missing.csv")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_unreachable_server(tmp_path, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    assert main(["models", "--address", address]) == 1
    assert f"cannot reach an rnnstream server at {address}" in capsys.readouterr().err
    path = tmp_path / "in.csv"
    write_csv(path, ["a", "b"], [[1.0, 2.0]])
    assert main(["stream", "--model", "tiny", "--csv", str(path), "--address", address]) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_help_has_examples(capsys):
    for command in ("models", "stream"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        assert "examples:" in capsys.readouterr().out

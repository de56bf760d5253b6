"""What the server says at start: refusals in one line, warnings once, nothing secret."""

from __future__ import annotations

import subprocess
import sys

from tests.security.conftest import ALICE_TOKEN, REPO, write_tokens


def serve(*flags: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "rnnstream.cli", "serve", "--port", "0", *flags]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_a_short_token_refuses_start_in_one_line_naming_the_flag(tmp_path):
    tokens = write_tokens(tmp_path / "tokens", f"alice {ALICE_TOKEN}\nbob tooshort123\n")
    result = serve("--auth-tokens", str(tokens), "--state-dir", "")
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "--auth-tokens" in lines[0] and "line 2" in lines[0] and "at least 16" in lines[0]
    assert "tooshort123" not in lines[0] and ALICE_TOKEN not in lines[0]


def test_tls_flags_are_checked_together(tmp_path):
    result = serve("--tls-cert", str(tmp_path / "cert.pem"), "--state-dir", "")
    assert result.returncode == 2 and "tls_key" in result.stdout


def test_help_shows_no_secret(monkeypatch):
    monkeypatch.setenv("RNNSTREAM_TOKEN", ALICE_TOKEN)
    helps = {}
    for command in ("serve", "models", "stream"):
        result = subprocess.run(
            [sys.executable, "-m", "rnnstream.cli", command, "--help"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0 and ALICE_TOKEN not in result.stdout
        helps[command] = " ".join(result.stdout.split())
    assert "--no-reflection" in helps["serve"] and "--auth-tokens" in helps["serve"]
    assert "--token" in helps["models"] and "--tls-ca" in helps["stream"]


def test_an_exposed_token_file_and_an_open_server_warn_once(start_server, tmp_path):
    tokens = write_tokens(tmp_path / "tokens", f"alice {ALICE_TOKEN}\n", mode=0o644)
    server = start_server("--auth-tokens", str(tokens))
    assert server.stop() == 0
    log = server.log()
    assert log.count("readable by group or others") == 1 and "chmod 600" in log
    assert "unauthenticated" not in log and ALICE_TOKEN not in log

    open_server = start_server()
    assert open_server.stop() == 0
    assert open_server.log().count("this server is unauthenticated") == 1

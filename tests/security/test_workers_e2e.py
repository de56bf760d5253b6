"""With ``--workers N`` the supervisor passes SIGHUP on: every worker takes the new token."""

from __future__ import annotations

import signal

import pytest

import rnnstream
from tests.security.conftest import ALICE_TOKEN, BOB_TOKEN, write_tokens


def test_supervisor_forwards_sighup_to_every_worker(start_server, tmp_path):
    tokens = write_tokens(tmp_path / "tokens", f"alice {ALICE_TOKEN}\n")
    server = start_server("--workers", "2", "--auth-tokens", str(tokens))
    server.wait_for(r"serving .* on 127\.0\.0\.1:\d+", count=2)
    log = server.log()
    assert log.count("this server is unauthenticated") == 0

    write_tokens(tokens, f"bob {BOB_TOKEN}\n")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for(r"\[worker 1\] .*reloaded credentials: 1 tokens")
    server.wait_for(r"\[worker 2\] .*reloaded credentials: 1 tokens")
    # Each new client connects anew: whichever worker it reaches knows only the new token.
    for _ in range(4):
        with rnnstream.Client(server.address, token=BOB_TOKEN, timeout=10) as client:
            assert len(client.models()) == 2
        with (
            rnnstream.Client(server.address, token=ALICE_TOKEN, timeout=10) as client,
            pytest.raises(rnnstream.UnauthenticatedError),
        ):
            client.models()
    assert server.stop() == 0
    assert ALICE_TOKEN not in server.log() and BOB_TOKEN not in server.log()

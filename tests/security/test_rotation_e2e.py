"""SIGHUP re-reads tokens and certificates; a live stream goes on across the rotation."""

from __future__ import annotations

import shutil

import grpc
import pytest

import rnnstream
from tests.security.conftest import ALICE_TOKEN, write_tokens
from tests.security.test_transport_e2e import no_secrets_in

NEW_TOKEN = "alice-rotated-token-9876543210"


def test_sighup_rotates_token_and_certificate(start_server, pki, tmp_path):
    tokens = write_tokens(tmp_path / "tokens", f"alice {ALICE_TOKEN}\n")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    key.chmod(0o600)
    server = start_server(
        "--tls-cert", str(cert), "--tls-key", str(key), "--auth-tokens", str(tokens)
    )  # fmt: skip
    old_ca, new_ca = pki.ca.cert.read_bytes(), pki.other_ca.cert.read_bytes()

    live_client = rnnstream.Client(
        server.address, token=ALICE_TOKEN, root_certificates=old_ca, timeout=10, max_retries=0
    )
    live = live_client.session("tiny")
    live.step([0.1, 0.2])

    write_tokens(tokens, f"alice {NEW_TOKEN}\n")
    shutil.copy(pki.other_server.cert, cert)
    shutil.copy(pki.other_server.key, key)
    server.reload()

    # The live stream keeps stepping, on its old connection.
    for _ in range(3):
        live.step([0.3, 0.4])
    assert live.reconnects == 0 and live.next_step == 4
    live.close()
    live_client.close()

    # New connections see the new certificate; the old token is refused, the new one works.
    with (
        rnnstream.Client(
            server.address, token=NEW_TOKEN, root_certificates=old_ca, timeout=5, max_retries=0
        ) as client,
        pytest.raises(rnnstream.UnavailableError),
    ):
        client.models()
    with rnnstream.Client(
        server.address, token=ALICE_TOKEN, root_certificates=new_ca, timeout=10
    ) as client:
        with pytest.raises(rnnstream.UnauthenticatedError) as refused:
            client.models()
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    with rnnstream.Client(
        server.address, token=NEW_TOKEN, root_certificates=new_ca, timeout=10
    ) as client:
        assert len(client.models()) == 2

    # A token file that is no longer valid is refused; the tokens in force stay.
    write_tokens(tokens, "alice s3cr3tZ\n")
    server.reload()
    assert "reload refused" in server.log() and "--auth-tokens" in server.log()
    with rnnstream.Client(
        server.address, token=NEW_TOKEN, root_certificates=new_ca, timeout=10
    ) as client:
        assert len(client.models()) == 2

    assert server.stop() == 0
    no_secrets_in(
        server.log(), ALICE_TOKEN, NEW_TOKEN, "s3cr3tZ",
        pki.server.key.read_bytes(), pki.other_server.key.read_bytes(),
    )  # fmt: skip

"""A real server with TLS and tokens, and one with mutual TLS: who gets in, who does not."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import rnnstream
from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc
from tests.conftest import free_port
from tests.security.conftest import ALICE_TOKEN, BOB_TOKEN, write_tokens


def tls_channel(address: str, ca: bytes, client: tuple[bytes, bytes] | None = None):
    chain, key = client if client else (None, None)
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(ca, key, chain))


def list_models_code(channel, metadata=()) -> tuple[grpc.StatusCode, str]:
    try:
        pb_grpc.PredictorStub(channel).ListModels(
            pb.ListModelsRequest(), timeout=10, metadata=metadata
        )
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def no_secrets_in(log: str, *secrets: bytes | str) -> None:
    for secret in secrets:
        text = secret.decode() if isinstance(secret, bytes) else secret
        if "-----BEGIN" in text:  # a PEM key: its base64 body, line by line
            for line in text.splitlines():
                if line and not line.startswith("-----"):
                    assert line not in log
        else:
            assert text not in log


def test_tls_and_tokens(start_server, pki, tmp_path):
    tokens = write_tokens(
        tmp_path / "tokens", f"# who may call\nalice {ALICE_TOKEN}\nbob   {BOB_TOKEN}  # ops\n"
    )
    metrics_port = free_port()
    server = start_server(
        "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
        "--auth-tokens", str(tokens), "--no-reflection", "--metrics-port", str(metrics_port),
    )  # fmt: skip
    ca = pki.ca.cert.read_bytes()

    # Plaintext against the TLS port, and a client that trusts another CA: no handshake.
    with grpc.insecure_channel(server.address) as channel:
        assert list_models_code(channel, (("authorization", f"Bearer {ALICE_TOKEN}"),))[0] == (
            grpc.StatusCode.UNAVAILABLE
        )
    with tls_channel(server.address, pki.other_ca.cert.read_bytes()) as channel:
        code, _ = list_models_code(channel, (("authorization", f"Bearer {ALICE_TOKEN}"),))
        assert code == grpc.StatusCode.UNAVAILABLE

    with tls_channel(server.address, ca) as channel:
        # No token, a wrong one, malformed ones: UNAUTHENTICATED, saying what to send.
        code, details = list_models_code(channel)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer TOKEN" in details
        code, details = list_models_code(channel, (("authorization", "Bearer " + "x" * 20),))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "not one this server knows" in details
        for bad in (f"Basic {ALICE_TOKEN}", ALICE_TOKEN, f"Bearer {ALICE_TOKEN} extra"):
            code, details = list_models_code(channel, (("authorization", bad),))
            assert code == grpc.StatusCode.UNAUTHENTICATED and "malformed" in details
        # The right token works, for every method the SDK calls.
        assert list_models_code(channel, (("authorization", f"bearer {BOB_TOKEN}"),))[0] == (
            grpc.StatusCode.OK
        )
        # Health asks no token; reflection is off.
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        with pytest.raises(grpc.RpcError) as refused:
            next(answers)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED

    # The SDK: a session under TLS + token, and its automatic resume after a drop.
    with rnnstream.Client(
        server.address, token=ALICE_TOKEN, root_certificates=ca, timeout=10, backoff=0.01
    ) as client:
        assert [m.name for m in client.models()] == ["tiny", "tiny-m2o"]
        x = np.random.default_rng(0).standard_normal((20, 2)).astype(np.float32)
        with client.session("tiny") as session:
            first = session.steps(x[:10])
            assert session._stream is not None
            session._stream.call.cancel()
            rest = session.steps(x[10:])
            assert session.reconnects == 1 and session.next_step == 20
            assert client.get_session(session.id).next_step == 20
        assert np.vstack([first, rest]).shape == (20, 3)
    with (
        rnnstream.Client(server.address, tls=True, root_certificates=ca, timeout=10) as client,
        pytest.raises(rnnstream.UnauthenticatedError, match="Bearer TOKEN"),
    ):
        client.models()

    async def async_models() -> list[str]:
        async with rnnstream.AsyncClient(
            server.address, token=BOB_TOKEN, root_certificates=ca, timeout=10
        ) as client:
            async with client.session("tiny") as session:
                await session.step([0.5, -0.5])
            return [m.name for m in await client.models()]

    assert asyncio.run(async_models()) == ["tiny", "tiny-m2o"]

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    for reason, at_least in (("missing_token", 2), ("unknown_token", 1), ("malformed_token", 3)):
        found = re.search(rf'rnnstream_auth_failures_total{{reason="{reason}"}} (\S+)', metrics)
        assert found is not None and float(found.group(1)) >= at_least, reason

    assert server.stop() == 0
    log = server.log()
    assert "unauthenticated" not in log
    no_secrets_in(log, ALICE_TOKEN, BOB_TOKEN, pki.server.key.read_bytes())


def test_mutual_tls(start_server, pki):
    server = start_server(
        "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
        "--tls-client-ca", str(pki.ca.cert),
    )  # fmt: skip
    ca = pki.ca.cert.read_bytes()
    with tls_channel(server.address, ca) as channel:  # no client certificate
        assert list_models_code(channel)[0] == grpc.StatusCode.UNAVAILABLE
    with tls_channel(server.address, ca, pki.mallory.pem()) as channel:  # another CA's
        assert list_models_code(channel)[0] == grpc.StatusCode.UNAVAILABLE
    chain, key = pki.alice.pem()
    with rnnstream.Client(
        server.address, root_certificates=ca, certificate_chain=chain, private_key=key, timeout=10
    ) as client:
        assert len(client.models()) == 2
        with client.session("tiny") as session:
            assert session.step([0.1, 0.2]).shape == (3,)
    assert server.stop() == 0
    assert "unauthenticated" not in server.log()
    no_secrets_in(server.log(), pki.server.key.read_bytes())

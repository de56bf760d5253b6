"""The shipped HAProxy config: HAProxy accepts it, as shipped and rendered, and its health
check is a well-formed gRPC health call."""

from __future__ import annotations

import os
import re

import pytest
from grpc_health.v1 import health_pb2

from deploy.haproxy.render import SHIPPED, render
from tests.deploy.haproxy import check_config


def test_shipped_config_is_valid():
    env = {**os.environ, "RNNSTREAM_REPLICAS_DOMAIN": "rnnstream.invalid"}
    result = check_config(SHIPPED, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout


def test_rendered_config_is_valid_and_keeps_everything_but_bind_and_servers(tmp_path):
    text = render(["127.0.0.1:50101", "127.0.0.1:50102"], "127.0.0.1:50100")
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    result = check_config(config)
    assert result.returncode == 0, result.stdout + result.stderr
    servers = re.findall(r"^\s+server (\S+) (\S+)$", text, re.MULTILINE)
    assert servers == [("rnnstream-0", "127.0.0.1:50101"), ("rnnstream-1", "127.0.0.1:50102")]
    assert re.findall(r"^\s+bind (.*)$", text, re.MULTILINE) == ["127.0.0.1:50100 proto h2"]
    shipped = SHIPPED.read_text().splitlines()
    kept = [line for line in shipped if not re.match(r"\s+(server|bind) ", line)]
    assert [line for line in text.splitlines() if line in kept] == kept


def test_render_refuses_a_config_without_the_expected_sections():
    with pytest.raises(ValueError, match="bind line"):
        render(["127.0.0.1:1"], ":1", config="frontend other\n    bind :1\n")
    with pytest.raises(ValueError, match="at least one replica"):
        render([], ":1")


def _frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """Split HTTP/2 frames: (type, flags, stream, payload)."""
    frames = []
    while data:
        length = int.from_bytes(data[:3], "big")
        kind, flags, stream = data[3], data[4], int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        frames.append((kind, flags, stream, data[9 : 9 + length]))
        data = data[9 + length :]
    return frames


STATIC = {1: ":authority", 4: ":path", 31: "content-type"}


def _headers(block: bytes) -> list[tuple[str, str]]:
    """Decode the HPACK forms the check uses: indexed (0x83, 0x86) and literals without
    indexing and without Huffman coding."""
    indexed = {0x83: (":method", "POST"), 0x86: (":scheme", "http")}
    out = []
    while block:
        first = block[0]
        if first in indexed:
            out.append(indexed[first])
            block = block[1:]
            continue
        assert first & 0xF0 == 0, f"not a literal without indexing: {first:#x}"
        index, block = first & 0x0F, block[1:]
        if index == 15:
            index, block = 15 + block[0], block[1:]
        if index:
            name = STATIC[index]
        else:
            size, block = block[0], block[1:]
            assert size < 0x80, "Huffman-coded or long name"
            name, block = block[:size].decode(), block[size:]
        size, block = block[0], block[1:]
        assert size < 0x80, "Huffman-coded or long value"
        out.append((name, block[:size].decode()))
        block = block[size:]
    return out


def test_health_check_bytes_are_one_grpc_health_call():
    text = SHIPPED.read_text()
    sent = b"".join(
        bytes.fromhex(h) for h in re.findall(r"^\s+tcp-check send-binary (\S+)$", text, re.M)
    )
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    assert sent.startswith(preface)
    settings, headers, data = _frames(sent[len(preface) :])
    assert settings == (0x4, 0, 0, b"")
    kind, flags, stream, block = headers
    assert (kind, flags, stream) == (0x1, 0x4, 1)  # HEADERS, END_HEADERS
    assert _headers(block) == [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/grpc.health.v1.Health/Check"),
        (":authority", "rnnstream"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    # DATA, END_STREAM: an uncompressed gRPC message of length 0 (HealthCheckRequest()).
    assert data == (0x0, 0x1, 1, b"\x00" * 5)
    (expected,) = re.findall(r"^\s+tcp-check expect binary (\S+)$", text, re.M)
    serving = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
    message = serving.SerializeToString()
    assert bytes.fromhex(expected) == b"\x00" + len(message).to_bytes(4, "big") + message

"""The SDK's credentials: TLS from PEM arguments, the token as metadata, never echoed."""

from __future__ import annotations

import grpc
import pytest

import rnnstream
from rnnstream._client_base import bearer_metadata, channel_credentials
from tests.security.conftest import ALICE_TOKEN


def test_plaintext_unless_tls_or_a_pem_is_given():
    assert channel_credentials(False, None, None, None, None) is None
    assert isinstance(channel_credentials(True, None, None, None, None), grpc.ChannelCredentials)
    assert channel_credentials(False, b"ca", None, None, None) is not None
    with pytest.raises(ValueError, match="go together"):
        channel_credentials(True, None, b"chain", None, None)
    own = grpc.ssl_channel_credentials()
    assert channel_credentials(False, None, None, None, own) is own
    with pytest.raises(ValueError, match="either credentials"):
        channel_credentials(False, b"ca", None, None, own)


def test_the_token_travels_as_bearer_metadata_and_bad_ones_are_not_echoed():
    assert bearer_metadata(None) == ()
    assert bearer_metadata(ALICE_TOKEN) == (("authorization", f"Bearer {ALICE_TOKEN}"),)
    for bad in ("", "with space", "new\nline", "naïve-token-0123456789"):
        with pytest.raises(ValueError) as refused:
            bearer_metadata(bad)
        assert bad not in str(refused.value) or not bad


def test_every_call_carries_the_token_before_its_own_metadata():
    with rnnstream.Client("127.0.0.1:1", token=ALICE_TOKEN) as client:
        assert client._metadata((("x-rnnstream-session", "s"),)) == (
            ("authorization", f"Bearer {ALICE_TOKEN}"),
            ("x-rnnstream-session", "s"),
        )

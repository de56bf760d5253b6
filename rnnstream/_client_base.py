"""What the blocking and the asyncio client share without I/O.

Their defaults, the reconnect backoff, the retry rule of unary calls, the cached model
list, and how they prove who they are: TLS channel credentials and the bearer token every
call and stream carries as ``authorization`` metadata. ``rnnstream.client`` and
``rnnstream.aio`` both build on :class:`ClientBase`; neither
imports the other.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import grpc

from rnnstream._resend import DEFAULT_RESEND_BUFFER_STEPS
from rnnstream._session_id import Metadata
from rnnstream.errors import UnavailableError, from_rpc_error
from rnnstream.info import ModelInfo
from rnnstream.v1 import rnnstream_pb2 as pb

DEFAULT_ADDRESS = "localhost:50051"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_CHUNK_SIZE = 64
MAX_BACKOFF_S = 5.0
AUTHORIZATION_KEY = "authorization"


def backoff_delay(backoff: float, attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): full jitter.

    Uniform between 0 and ``backoff * 2 ** (attempt - 1)``, capped at ``MAX_BACKOFF_S``;
    the randomness spreads thousands of clients refused at once over the whole window
    instead of bringing them back together.
    """
    return random.uniform(0.0, min(backoff * 2 ** (attempt - 1), MAX_BACKOFF_S))


def find_n_features(models: Iterable[ModelInfo], name: str, version: str) -> int | None:
    """``n_features`` of ``name`` (``version``, or every version if they agree), else None."""
    widths = {m.n_features for m in models if m.name == name and version in ("", m.version)}
    return widths.pop() if len(widths) == 1 else None


def channel_credentials(
    tls: bool,
    root_certificates: bytes | None,
    certificate_chain: bytes | None,
    private_key: bytes | None,
    credentials: grpc.ChannelCredentials | None,
) -> grpc.ChannelCredentials | None:
    """The channel's credentials: TLS when asked or when any PEM is given; None: plaintext.

    ``root_certificates`` None trusts the system's roots; ``certificate_chain`` and
    ``private_key`` (both or neither) are the client's certificate for mutual TLS.
    ``credentials`` (grpc's own) stands alone: not with the PEM arguments.
    """
    pems = (root_certificates, certificate_chain, private_key)
    if credentials is not None:
        if any(pem is not None for pem in pems):
            raise ValueError(
                "pass either credentials or root_certificates/certificate_chain/private_key"
            )
        return credentials
    if (certificate_chain is None) != (private_key is None):
        raise ValueError("certificate_chain and private_key go together: pass both or neither")
    if not tls and all(pem is None for pem in pems):
        return None
    return grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)


def bearer_metadata(token: str | None) -> Metadata:
    """The ``authorization: Bearer TOKEN`` metadata (none without a token).

    ValueError for a token no gRPC header can carry; the message never repeats the token.
    """
    if token is None:
        return ()
    if (
        not token
        or not token.isascii()
        or not token.isprintable()
        or any(c.isspace() for c in token)
    ):
        raise ValueError("token must be non-empty printable ASCII without spaces")
    return ((AUTHORIZATION_KEY, f"Bearer {token}"),)


class ClientBase:
    """What ``Client`` and ``AsyncClient`` share without I/O.

    Their settings, the retry rule of unary calls and the cached model list.
    ``resend_buffer_steps`` bounds the acknowledged steps each session keeps to resend
    should a server with a session store crash and restore it from an older step.
    """

    def __init__(
        self,
        address: str,
        timeout: float | None,
        max_retries: int,
        backoff: float,
        resend_buffer_steps: int = DEFAULT_RESEND_BUFFER_STEPS,
        token: str | None = None,
    ):
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {max_retries}")
        if resend_buffer_steps < 0:
            raise ValueError(f"resend_buffer_steps must be 0 or more, got {resend_buffer_steps}")
        self.address = address
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.resend_buffer_steps = resend_buffer_steps
        self._auth_metadata = bearer_metadata(token)
        self._models: dict[tuple[str, str], ModelInfo] = {}
        self._default_model = ""

    def _metadata(self, extra: Metadata | None = None) -> Metadata:
        """What a call or stream sends: the token (if any), then ``extra``."""
        return self._auth_metadata + (extra or ())

    def _retry_delay(self, err: grpc.RpcError, failures: int, retry: bool) -> float:
        """Seconds to wait before retrying a unary call that failed after ``failures`` retries.

        Raises the SDK error instead when it is not retried: not UNAVAILABLE, ``retry``
        off, or retries spent.
        """
        error = from_rpc_error(err)
        if not retry or not isinstance(error, UnavailableError) or failures >= self.max_retries:
            raise error from err
        return backoff_delay(self.backoff, failures + 1)

    def _remember_models(self, response: pb.ListModelsResponse) -> list[ModelInfo]:
        """Cache a ListModels answer; its models."""
        infos = [ModelInfo.from_proto(m) for m in response.models]
        self._default_model = response.default_model
        self._models = {(m.name, m.version): m for m in infos}
        return infos

    def _cached_n_features(self, model: str, version: str) -> int | None:
        """The model's width if the cached model list pins it down, for client-side checks."""
        return find_n_features(self._models.values(), model or self._default_model, version)

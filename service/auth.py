"""Who is calling: ``Authenticator`` turns a call's metadata and TLS peer into its principal.

The principal is a name for the caller, a ``str``:

- with ``--auth-tokens FILE``: the principal the token file pairs with the token the call
  sends as ``authorization: Bearer TOKEN``;
- with ``--tls-client-ca FILE`` (mutual TLS): the subject common name (CN) of the client's
  certificate. Subject alternative names are not used: a certificate may carry several, of
  several kinds, where it has one CN; grpc reports it as ``x509_common_name``;
- with both, the call needs a token, and the token's principal must be the certificate's
  CN: a stolen token is no use without its owner's key, nor a certificate without its token;
- with neither, every caller is ``""``: the server is unauthenticated.

A missing, malformed or unknown token, a certificate without a CN, or a token and a
certificate that name different principals raise ``Unauthenticated``, whose message says
what to send and never repeats what was sent. Tokens are compared in constant time: each
known token's SHA-256 digest against the sent one's, all of them, every call.

The token file has one ``PRINCIPAL TOKEN`` pair a line, whitespace-separated; ``#`` starts
a comment (at the start of a line or after whitespace). A principal may have several tokens
(to rotate one without a gap); a token belongs to one principal and has at least
``MIN_TOKEN_CHARS`` printable ASCII characters. ``reload()`` re-reads the file (SIGHUP); a
file that is no longer valid is refused and the tokens read before stay in force.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from rnnstream.server.errors import Unauthenticated
from rnnstream.server.secret_files import SecretFileError, read_secret_file
from rnnstream.server.settings import MIN_TOKEN_CHARS, Settings

TOKENS_FLAG = "--auth-tokens"
AUTHORIZATION_KEY = "authorization"
BEARER = "bearer"
#: ``auth_context()`` key of the peer certificate's subject common name (grpc's name).
COMMON_NAME_KEY = "x509_common_name"

#: Every ``reason`` an ``Unauthenticated`` can carry (the metrics' label values).
FAILURE_REASONS = (
    "missing_token",
    "malformed_token",
    "unknown_token",
    "certificate_without_cn",
    "certificate_mismatch",
)

#: gRPC metadata as the servicer context gives it: (key, value) pairs.
CallMetadata = Iterable[tuple[str, str | bytes]]
#: ``ServicerContext.auth_context()``: property name to its values.
PeerIdentity = Mapping[str, Iterable[bytes]]


@dataclass(frozen=True)
class TokenTable:
    """The tokens of a token file, as SHA-256 digests, each with its principal."""

    entries: tuple[tuple[bytes, str], ...]

    @classmethod
    def parse(cls, text: str, path: str) -> TokenTable:
        """The tokens in ``text`` (the file at ``path``); SecretFileError naming a bad line.

        The errors name the flag, the file and the line, never a token.
        """
        entries: list[tuple[bytes, str]] = []
        lines_by_digest: dict[bytes, int] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            where = f"{TOKENS_FLAG} {path} line {number}"
            fields = _without_comment(line.split())
            if not fields:
                continue
            if len(fields) != 2:
                raise SecretFileError(
                    f"{where}: expected PRINCIPAL TOKEN (two fields), found {len(fields)}"
                )
            principal, token = fields
            if len(token) < MIN_TOKEN_CHARS:
                raise SecretFileError(
                    f"{where}: the token of {principal} has {len(token)} characters; "
                    f"tokens need at least {MIN_TOKEN_CHARS} (make one with "
                    "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
                )
            if not (token.isascii() and token.isprintable()):
                raise SecretFileError(
                    f"{where}: the token of {principal} has characters that are not "
                    "printable ASCII (a gRPC header cannot carry them)"
                )
            digest = _digest(token)
            if digest in lines_by_digest:
                raise SecretFileError(
                    f"{where}: the same token as line {lines_by_digest[digest]}; "
                    "a token belongs to one principal"
                )
            lines_by_digest[digest] = number
            entries.append((digest, principal))
        if not entries:
            raise SecretFileError(f"{TOKENS_FLAG} {path}: no PRINCIPAL TOKEN line in it")
        return cls(tuple(entries))

    @classmethod
    def read(cls, path: str) -> TokenTable:
        """The tokens of the file at ``path``."""
        data = read_secret_file(path, TOKENS_FLAG)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretFileError(f"{TOKENS_FLAG} {path}: not UTF-8 text") from None
        return cls.parse(text, path)

    def principal(self, token: str) -> str | None:
        """The principal of ``token``, or None; the time taken does not depend on the token."""
        digest = _digest(token)
        found: str | None = None
        for known, principal in self.entries:  # no early exit: every entry, every time
            if hmac.compare_digest(digest, known):
                found = principal
        return found

    def __len__(self) -> int:
        return len(self.entries)


class Authenticator:
    """The principal of each call, from its token and its client certificate.

    Example::

        authenticator = Authenticator.from_settings(settings)
        principal = authenticator.principal(context.invocation_metadata(),
                                            context.auth_context())
    """

    def __init__(self, tokens_path: str = "", client_certificates: bool = False) -> None:
        """``tokens_path`` "": no tokens; ``client_certificates``: mutual TLS names callers."""
        self.tokens_path = tokens_path
        self.client_certificates = client_certificates
        self._tokens = TokenTable.read(tokens_path) if tokens_path else None

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        """The authenticator ``--auth-tokens`` and ``--tls-client-ca`` ask for."""
        return cls(settings.auth_tokens, bool(settings.tls_client_ca))

    @property
    def enabled(self) -> bool:
        """Whether callers must prove who they are (False: every principal is "")."""
        return self._tokens is not None or self.client_certificates

    @property
    def token_count(self) -> int:
        """How many tokens are in force."""
        return len(self._tokens) if self._tokens is not None else 0

    def reload(self) -> None:
        """Re-read the token file; SecretFileError (the old tokens stay) if it is not valid."""
        if self.tokens_path:
            self._tokens = TokenTable.read(self.tokens_path)

    def principal(self, metadata: CallMetadata | None, peer: PeerIdentity) -> str:
        """The caller's principal ("" when unauthenticated); Unauthenticated if it is refused."""
        if self._tokens is None:
            return self._certificate_name(peer) if self.client_certificates else ""
        principal = self._tokens.principal(_bearer_token(metadata))
        if principal is None:
            raise Unauthenticated(
                "the token is not one this server knows (revoked or rotated?): "
                "ask the server's operator for a current one",
                "unknown_token",
            )
        if self.client_certificates and principal != self._certificate_name(peer):
            raise Unauthenticated(
                "the token belongs to another principal than the client certificate's "
                "common name: send the token of the certificate's owner",
                "certificate_mismatch",
            )
        return principal

    @staticmethod
    def _certificate_name(peer: PeerIdentity) -> str:
        """The common name of the client certificate the TLS handshake verified."""
        names = [bytes(name).decode("utf-8", "replace") for name in peer.get(COMMON_NAME_KEY, ())]
        if len(names) != 1 or not names[0]:
            raise Unauthenticated(
                "the client certificate has no subject common name (CN): this server names "
                "callers by it; use a certificate with one (openssl ... -subj /CN=NAME)",
                "certificate_without_cn",
            )
        return names[0]


def _bearer_token(metadata: CallMetadata | None) -> str:
    """The token of the call's one ``authorization: Bearer TOKEN``; Unauthenticated if not."""
    values = [value for key, value in metadata or () if key.lower() == AUTHORIZATION_KEY]
    if not values:
        raise Unauthenticated(
            "this server needs a token: send the metadata 'authorization: Bearer TOKEN' "
            "(rnnstream.Client(token=...), or --token / RNNSTREAM_TOKEN on the command line)",
            "missing_token",
        )
    parts = values[0].split() if len(values) == 1 and isinstance(values[0], str) else []
    if len(parts) != 2 or parts[0].lower() != BEARER:
        raise Unauthenticated(
            "malformed authorization metadata: send exactly one, of the form 'Bearer TOKEN'",
            "malformed_token",
        )
    return parts[1]


def _without_comment(fields: list[str]) -> list[str]:
    """The fields of a token file line before the first one that starts a ``#`` comment."""
    for index, text in enumerate(fields):
        if text.startswith("#"):
            return fields[:index]
    return fields


def _digest(token: str) -> bytes:
    """What tokens are compared by: a fixed-length digest, so lengths leak nothing either."""
    return hashlib.sha256(token.encode("utf-8")).digest()

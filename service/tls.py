"""The server's TLS credentials, re-read on ``reload()`` without dropping a connection.

``ServerTls`` reads ``--tls-cert`` (the certificate chain, PEM), ``--tls-key`` (its private
key, PEM) and, for mutual TLS, ``--tls-client-ca`` (the CA certificates a client's
certificate must be signed by; a client without one fails the handshake). Its
``credentials()`` are grpc's dynamic SSL credentials: grpc asks for the configuration at
each new handshake, and gets the one ``reload()`` read last. Connections made before keep
their session (and their live streams); new ones see the new certificate.
"""

from __future__ import annotations

import threading

import grpc

from rnnstream.server.secret_files import SecretFileError, read_secret_file
from rnnstream.server.settings import Settings

CERT_FLAG = "--tls-cert"
KEY_FLAG = "--tls-key"
CLIENT_CA_FLAG = "--tls-client-ca"


class ServerTls:
    """The certificate, key and client CA of a TLS port; see the module docstring.

    Example::

        tls = ServerTls.from_settings(settings)   # None without --tls-cert
        server.add_secure_port(address, tls.credentials())
        tls.reload()                              # on SIGHUP
    """

    def __init__(self, cert_path: str, key_path: str, client_ca_path: str = "") -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.client_ca_path = client_ca_path
        self._lock = threading.Lock()
        self._initial = self._read()
        self._fresh: grpc.ServerCertificateConfiguration | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerTls | None:
        """The TLS ``--tls-cert``/``--tls-key``/``--tls-client-ca`` ask for; None: plaintext."""
        if not settings.tls_cert:
            return None
        return cls(settings.tls_cert, settings.tls_key, settings.tls_client_ca)

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate signed by the client CA."""
        return bool(self.client_ca_path)

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that take what ``reload()`` read at the next handshake."""
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            self._fetch,  # type: ignore[arg-type]  # grpc-stubs: None (no change) is allowed
            require_client_authentication=self.mutual,
        )

    def reload(self) -> None:
        """Re-read the files; SecretFileError (the ones in use stay) if one is not valid."""
        configuration = self._read()
        with self._lock:
            self._fresh = configuration

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """For grpc, at each handshake: a configuration read since the last call, or None."""
        with self._lock:
            fresh, self._fresh = self._fresh, None
        return fresh

    def _read(self) -> grpc.ServerCertificateConfiguration:
        """A certificate configuration from the files as they are now."""
        chain = _pem(self.cert_path, CERT_FLAG, b"CERTIFICATE")
        key = _pem(self.key_path, KEY_FLAG, b"PRIVATE KEY")
        client_ca = (
            _pem(self.client_ca_path, CLIENT_CA_FLAG, b"CERTIFICATE")
            if self.client_ca_path
            else None
        )
        return grpc.ssl_server_certificate_configuration([(key, chain)], client_ca)


def _pem(path: str, flag: str, kind: bytes) -> bytes:
    """The PEM file at ``path``, checked to hold a ``kind`` block (never quoted when not)."""
    data = read_secret_file(path, flag)
    # "PRIVATE KEY" also matches "RSA PRIVATE KEY" and "EC PRIVATE KEY" blocks.
    if b"-----BEGIN " not in data or kind + b"-----" not in data:
        raise SecretFileError(f"{flag} {path}: no PEM {kind.decode()} block in it")
    return data

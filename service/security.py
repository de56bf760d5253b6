"""The server's security, built from settings in one step and re-read in one: ``Security``.

It holds the ``Authenticator`` (tokens, client certificates) and the ``ServerTls`` (None on
a plaintext port). ``Security.from_settings`` reads every file, so a server (or a
supervisor, before it starts workers) with an unusable token, certificate or key file
refuses to start with one line naming the flag. ``reload()`` is what SIGHUP does.
``start_warnings`` says what an operator should hear at start: an unauthenticated server,
secret files that others may read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from rnnstream.server.auth import TOKENS_FLAG, Authenticator
from rnnstream.server.secret_files import SecretFileError, exposure_warning
from rnnstream.server.settings import Settings
from rnnstream.server.tls import KEY_FLAG, ServerTls

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Security:
    """Who may call (``authenticator``) and the port's TLS (``tls``, None: plaintext)."""

    authenticator: Authenticator
    tls: ServerTls | None

    @classmethod
    def from_settings(cls, settings: Settings) -> Security:
        """Read the token, certificate and key files; SecretFileError naming a bad one."""
        return cls(Authenticator.from_settings(settings), ServerTls.from_settings(settings))

    def reload(self) -> bool:
        """Re-read the token file and the TLS files; whether all were valid.

        A file that is no longer valid is logged (naming its flag) and what was read
        before stays in force; the others are still taken.
        """
        ok = True
        for part in (self.authenticator, self.tls):
            if part is None:
                continue
            try:
                part.reload()
            except SecretFileError as exc:
                log.error("reload refused, the previous files stay in force: %s", exc)
                ok = False
        log.info(
            "reloaded credentials: %d tokens%s",
            self.authenticator.token_count,
            ", TLS certificate and key" if self.tls is not None else "",
        )
        return ok


def start_warnings(settings: Settings) -> list[str]:
    """What to warn about at start: no authentication, secret files others may read."""
    warnings = []
    if not (settings.auth_tokens or settings.tls_client_ca):
        warnings.append(
            "this server is unauthenticated: anyone who reaches the port can use it and "
            "every session; pass --auth-tokens FILE or --tls-client-ca FILE"
        )
    for path, flag in ((settings.auth_tokens, TOKENS_FLAG), (settings.tls_key, KEY_FLAG)):
        warning = exposure_warning(path, flag) if path else None
        if warning is not None:
            warnings.append(warning)
    return warnings

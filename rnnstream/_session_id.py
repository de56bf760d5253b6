"""Session ids: the ones this client makes, the rule every id follows, and routing by id.

A new session gets its id from the client (128 random bits) rather than from the server,
so its very first Open already names it, and every stream and call about a session
carries the id as gRPC metadata: a load balancer hashing on it sends them all to the
server that holds the session.
"""

from __future__ import annotations

import re
import secrets

#: What a session id may be, as said in ValueErrors.
SESSION_ID_RULE = "16 to 128 characters of [A-Za-z0-9_-]"
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{16,128}")

#: gRPC metadata, as the stubs take it.
Metadata = tuple[tuple[str, str], ...]

#: The gRPC metadata key that carries the session id of a stream or call.
ROUTING_KEY = "x-rnnstream-session"


def new_session_id() -> str:
    """A fresh, unguessable id: 128 random bits, 22 characters of [A-Za-z0-9_-]."""
    return secrets.token_urlsafe(16)


def is_session_id(session_id: object) -> bool:
    """Whether ``session_id`` follows the rule (the server checks ids with this too)."""
    return isinstance(session_id, str) and _SESSION_ID.fullmatch(session_id) is not None


def check_session_id(session_id: str) -> str:
    """``session_id`` if it follows the rule; ValueError naming the rule otherwise."""
    if not is_session_id(session_id):
        raise ValueError(f"session_id must be {SESSION_ID_RULE}, got {session_id!r}")
    return session_id


def routing_metadata(session_id: str) -> Metadata:
    """The metadata to send with every stream and call about ``session_id``."""
    return ((ROUTING_KEY, session_id),)

"""Session ids: the rule a client-chosen id must follow, and the ids the server makes.

The rule itself is the SDK's (``rnnstream._session_id``): client and server check one rule.
"""

from __future__ import annotations

import secrets

from rnnstream._session_id import SESSION_ID_RULE as ID_RULE
from rnnstream._session_id import is_session_id
from rnnstream.server.errors import InvalidArgument


def new_session_id() -> str:
    """A fresh, unguessable id (144 random bits, 24 URL-safe characters: within the rule)."""
    return secrets.token_urlsafe(18)


def check_session_id(session_id: str, field: str) -> None:
    """Refuse an id outside the rule with InvalidArgument naming ``field`` and the rule."""
    if not is_session_id(session_id):
        shown = session_id if len(session_id) <= 40 else session_id[:40] + "..."
        raise InvalidArgument(
            f"{field} {shown!r} is not a session id: ids are {ID_RULE} "
            "(the SDK makes 128 random bits)"
        )

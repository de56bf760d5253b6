"""Session ids: the rule a client-chosen id must follow, and the ids the server makes."""

from __future__ import annotations

import re
import secrets

from rnnstream.server.errors import InvalidArgument

ID_RULE = "16 to 128 characters of [A-Za-z0-9_-]"
_VALID = re.compile(r"[A-Za-z0-9_-]{16,128}")


def new_session_id() -> str:
    """A fresh, unguessable id (144 random bits, 24 URL-safe characters: within the rule)."""
    return secrets.token_urlsafe(18)


def check_session_id(session_id: str, field: str) -> None:
    """Refuse an id outside the rule with InvalidArgument naming ``field`` and the rule."""
    if _VALID.fullmatch(session_id) is None:
        shown = session_id if len(session_id) <= 40 else session_id[:40] + "..."
        raise InvalidArgument(
            f"{field} {shown!r} is not a session id: ids are {ID_RULE} "
            "(the SDK makes 128 random bits)"
        )

"""Why a session ends: the reasons (numbered as on the wire) and what each tells the client."""

from __future__ import annotations

import enum


class EndReason(enum.Enum):
    """Why a session ended; the values are the wire enum's numbers."""

    CLIENT_END = 1
    IDLE_TTL = 2
    DELETED = 3
    EVICTED = 4
    DRAINING = 5
    SUPERSEDED = 6


END_MESSAGES = {
    EndReason.CLIENT_END: "the client ended the session",
    EndReason.IDLE_TTL: "the session was idle longer than its idle TTL",
    EndReason.DELETED: "the session was deleted (DeleteSession)",
    EndReason.EVICTED: "the session was evicted to make room at capacity",
    EndReason.DRAINING: "the server is shutting down; resume the session on a new connection",
    EndReason.SUPERSEDED: "another stream resumed this session",
}

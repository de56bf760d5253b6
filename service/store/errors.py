"""The session store's errors: what a caller catches and how it maps them."""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error the session store raises."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or did not answer; the caller maps it to gRPC UNAVAILABLE."""


class StoreEntryError(StoreError):
    """A stored entry could not be decoded (corrupt, truncated or of a foreign format)."""


class LeaseLost(StoreError):
    """The writer's lease is no longer the live one: its write changed nothing."""

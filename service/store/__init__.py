"""The session store: where sessions live between steps, so they can move between processes.

Imported as ``rnnstream.server.store``. ``open_store(url, state_dir)`` gives a
``SessionStore`` for a ``--store`` value: ``redis://HOST:PORT/DB`` (``RedisStore``, shared by
replicas) or ``local`` / empty (``LocalStore``: SQLite in ``<state_dir>/sessions.sqlite3``,
shared by the worker processes of one machine). Both keep the contract below; every
method is a coroutine that never blocks the event loop.

What is stored. A ``StoredSession`` is a session's ``SessionRecord`` plus the
``GraphIdentity`` of the graph its state belongs to (model, version, onnx sha256,
n_outputs, state_size). Its ``durable_step`` is the record's ``next_step``: every step
below it is in the stored state. Entries are a compact, versioned, checksummed binary
form (``entry``), never pickle; decoding a corrupt or foreign entry raises
``StoreEntryError`` with the reason. Applying a state to a graph is the caller's
decision: ``stored.graph.mismatch(served)`` says why it must not, or None.

Ownership is a lease with a fencing token, alive while its owner is. Each process beats
``heartbeat(owner, ttl_s)`` every third of its TTL: one call however many sessions it
holds, and every lease it holds lives as long as that. A heartbeat that finds the owner had
lapsed (paused, partitioned past its TTL) says so, and the process then checks its leases
with ``renew``. ``acquire(session_id, owner, ttl_s)`` takes the session when no other live
owner holds it (no lease, or its owner lapsed; an owner re-acquiring its own gets a fresh
token), with a token greater than every token ever issued for it, and returns a ``Lease``;
otherwise it returns the ``Holder``. A lease's record is kept ``ttl_s`` (long: it only
bounds how long a dead owner's records stay); ``renew(leases, ttl_s)`` checks many in one
round trip, keeps their records longer and reports those lost. ``release(lease)`` gives
it up if its token is still the live one; ``release_many(leases)`` gives many up (a drain).

Every write is conditional on the writer's token. ``checkpoint(lease, stored)`` and
``checkpoint_many([(lease, stored), ...])`` compare each lease with the live one and
write only on a match, atomically per entry; a writer whose lease was taken over (it
lapsed: paused, partitioned) gets ``LeaseLost`` / its lease back as lost, and its write
changes nothing. ``delete(lease)`` removes the entry and the lease, on the same
condition. ``load(session_id)`` reads without a lease. An entry expires its record's
``idle_ttl_s`` after its last checkpoint: the store, not a process, is the session's home.

Hand-over. Each process reads its inbox: ``async with store.inbox(owner) as messages:
async for message in messages``. A process that wants a session another live process
owns calls ``acquire(session_id, owner, ttl_s, ask=True)``: refused, it has asked the
holder in the same atomic step (a ``HandoverRequest`` in the holder's inbox). The holder
finishes its in-flight steps and calls ``hand_over(lease, stored, to_owner, ttl_s)``: one
atomic step writes the entry, gives the lease to the asker under a new token and puts a
``HandoverGrant`` with the entry in its inbox, so the move costs no further round trip.
A holder that lets the session go otherwise (``release``, ``delete``) sends the asker
``Released``; a holder that died sends nothing, and its leases end with its liveness.

Errors: ``StoreUnavailable`` (the store cannot be reached: map it to gRPC UNAVAILABLE),
``StoreEntryError`` (a corrupt or foreign entry), ``LeaseLost``.
"""

from rnnstream.server.store.base import SessionStore
from rnnstream.server.store.entry import GraphIdentity, StoredSession
from rnnstream.server.store.errors import LeaseLost, StoreEntryError, StoreError, StoreUnavailable
from rnnstream.server.store.lease import (
    HandoverGrant,
    HandoverRequest,
    Holder,
    InboxMessage,
    Lease,
    Released,
    Renewal,
)
from rnnstream.server.store.url import open_store

__all__ = [
    "GraphIdentity",
    "HandoverGrant",
    "HandoverRequest",
    "Holder",
    "InboxMessage",
    "Lease",
    "LeaseLost",
    "Released",
    "Renewal",
    "SessionStore",
    "StoreEntryError",
    "StoreError",
    "StoreUnavailable",
    "StoredSession",
    "open_store",
]

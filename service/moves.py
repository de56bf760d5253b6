"""Sessions that move between processes through the session store.

``SessionMover`` is what a ``SessionManager`` with a store calls on:

- ``create_here``: a new session under a server-made id takes its lease first.
- ``bring``: an Open of a session this process does not hold takes its lease
  (``Ownership.take``: the live owner hands it over with its entry, or its lease
  expires and the entry is loaded) and restores it here from the entry's step
  (``restored_step``, ``durable_step``).
  An entry of another graph, or a corrupt one, is refused with the reason (NOT_FOUND,
  like a snapshot session that could not be restored); with ``create`` an absent entry
  makes a new session under the id.
- ``hand_over``: the owner side of a move. The session's live stream ends (superseded:
  "the session moved to another server process"), its step in flight finishes, and one
  store call writes its entry and gives its lease to the asking process, which is told
  (with the entry); it is forgotten here (not counted as ended).
- ``checkpoint``: sessions changed since their last checkpoint (the manager keeps them
  apart: the cost follows what changed, not what is held), or all of them at drain, in
  ``checkpoint_many`` calls of a chunk each; a chunk's records are taken on the event
  loop just before its call, so each is consistent with its ``next_step``, and steps run
  between chunks. A written session's ``durable_step`` moves on.

Ownership travels with the entry: it names the session's principal. A session of a
principal (an authenticated server) is written to the store as soon as it is created, so
its principal is there before any other process can ask for it; ``bring`` for a caller
with a principal reads the entry first and answers another principal's session NOT_FOUND
(exactly as a missing one) without asking its holder: nothing moves. The entry a move
brings is checked again: one of another principal (an entry that expired while its
session stayed live, a fleet mixing servers with and without authentication) gives the
lease back and is refused the same way, the entry left as the holder wrote it. Without
authentication every caller is principal "": nothing is written at creation nor read
first, and the store traffic is as before. A principal at --max-sessions-per-principal
here is refused before anything moves.

``run`` is the background work of a process with a store: its inbox (hand-over requests
to serve, grants and releases for ``Ownership``), the heartbeat that keeps the process and
so all its leases alive, every third of the TTL (a lease found lost drops its session),
and checkpoints every ``--snapshot-interval-s``.
"""

from __future__ import annotations

import asyncio
import logging

from rnnstream.server import session_snapshot
from rnnstream.server.errors import NotFound, Unavailable
from rnnstream.server.ownership import RECORD_TTL_S, Ownership, unreachable
from rnnstream.server.session_ids import new_session_id
from rnnstream.server.sessions import Session, SessionManager
from rnnstream.server.store import (
    HandoverRequest,
    Lease,
    LeaseLost,
    StoredSession,
    StoreEntryError,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

# After the store could not be reached, wait this long before listening again.
RETRY_S = 0.25
# Sessions per checkpoint store call: their records, encoding and reply hold the event
# loop for a few milliseconds, then steps run again (a drain of 100k sessions no longer
# holds it for seconds).
CHECKPOINT_CHUNK = 256


class SessionMover:
    """Brings sessions here, hands them over, checkpoints them; see the module docstring."""

    def __init__(self, sessions: SessionManager, ownership: Ownership) -> None:
        self.sessions = sessions
        self.ownership = ownership
        self.store = ownership.store
        ownership.on_lost = self._moved_away
        # One arrival per session id at a time: a second Open waits for the first.
        self._arrivals: dict[str, asyncio.Lock] = {}
        # Set while the inbox is being read (grants to this process arrive there).
        self.listening = asyncio.Event()

    async def bring(
        self,
        session_id: str,
        create: bool,
        model: str,
        version: str,
        return_sequences: bool | None,
        return_state: bool | None,
        idle_ttl_s: float,
        principal: str = "",
    ) -> Session | None:
        """The session ``session_id`` taken over and restored here, or None if nobody has it.

        With ``create`` a session nobody has is created here under the id instead, for
        ``principal``. A session found here is returned whoever it belongs to (the caller
        checks); one held elsewhere by another principal is NotFound and stays there.
        """
        lock = self._arrivals.setdefault(session_id, asyncio.Lock())
        try:
            async with lock:
                session = self.sessions.find(session_id)
                if session is not None:  # an Open that waited for the lock
                    return session
                if principal:
                    await self._check_owner(session_id, principal)
                self.sessions.check_session_room(principal)
                taken = await self.ownership.take(session_id)
                lease = taken.lease
                try:
                    stored = await self._checked(session_id, taken.stored, principal)
                    if stored is not None:
                        return self._restore(stored)
                    if not create:
                        await self.ownership.give_up(lease)
                        return None
                    return await self._create(
                        lease, model, version, return_sequences, return_state, idle_ttl_s, principal
                    )
                except BaseException:
                    await self.ownership.give_up(lease)
                    raise
        finally:
            if not lock.locked():
                self._arrivals.pop(session_id, None)

    async def create_here(
        self,
        model: str,
        version: str,
        return_sequences: bool | None,
        return_state: bool | None,
        idle_ttl_s: float,
        principal: str = "",
    ) -> Session:
        """A new session of ``principal`` under a server-made id, with its lease.

        Nobody else can hold the lease of a new id.
        """
        lease = (await self.ownership.take(new_session_id())).lease
        try:
            return await self._create(
                lease, model, version, return_sequences, return_state, idle_ttl_s, principal
            )
        except BaseException:
            await self.ownership.give_up(lease)
            raise

    async def _create(
        self,
        lease: Lease,
        model: str,
        version: str,
        return_sequences: bool | None,
        return_state: bool | None,
        idle_ttl_s: float,
        principal: str,
    ) -> Session:
        """A new session under ``lease`` (its id), durable at step 0.

        A session with a principal is written to the store now, so its principal is there
        before another process can ask for it; when that fails it is dropped here again
        (the caller gives the lease back) and the Open refused.
        """
        session = self.sessions.create(
            model,
            version,
            return_sequences,
            return_state,
            idle_ttl_s,
            lease.session_id,
            principal,
        )
        session.durable_step = 0  # a create elsewhere starts from step 0 too
        if not session.principal:
            return session
        try:
            await self.store.checkpoint(
                lease, session_snapshot.stored(session, self.sessions.clock())
            )
        except (StoreUnavailable, LeaseLost) as exc:
            self.sessions.forget(session)
            if isinstance(exc, StoreUnavailable):
                raise unreachable(exc) from exc
            raise Unavailable(
                f"session {session.id} was taken over as it was created: retry"
            ) from exc
        return session

    async def _check_owner(self, session_id: str, principal: str) -> None:
        """NotFound, as for a missing session, when the stored entry is another principal's."""
        try:
            stored = await self.store.load(session_id)
        except StoreUnavailable as exc:
            raise unreachable(exc) from exc
        except StoreEntryError:
            return  # the take that follows says why it cannot be used
        if stored is not None and stored.record.principal != principal:
            raise self.sessions.not_found(session_id, principal)

    async def _checked(
        self, session_id: str, handed: StoredSession | None, principal: str
    ) -> StoredSession | None:
        """The session's entry, ``handed`` over or else loaded.

        Raises NotFound with the reason when it cannot be used here, and exactly as for a
        missing session when it is another principal's.
        """
        try:
            stored = handed or await self.store.load(session_id)
        except StoreUnavailable as exc:
            raise unreachable(exc) from exc
        except StoreEntryError as exc:
            raise NotFound(f"session {session_id!r} was not restored: {exc}") from exc
        if stored is None:
            return None
        if stored.record.principal != principal:
            raise self.sessions.not_found(session_id, principal)
        try:
            loaded = self.sessions.repository.get(stored.graph.model, stored.graph.version)
        except NotFound:
            g = stored.graph
            raise NotFound(
                f"session {session_id!r} was not restored: its model {g.model}/{g.version} "
                "is not served here"
            ) from None
        reason = stored.graph.mismatch(session_snapshot.graph_identity(loaded))
        if reason is not None:
            raise NotFound(f"session {session_id!r} was not restored: {reason}")
        return stored

    def _restore(self, stored: StoredSession) -> Session:
        """A session from its entry, in a row of its (checked) graph's table."""
        g = stored.graph
        loaded = self.sessions.repository.get(g.model, g.version)
        self.sessions.make_room(loaded)
        session = session_snapshot.from_record(loaded, stored.record, self.sessions.clock())
        session.durable_step = stored.durable_step
        self.sessions.add(session)
        log.debug(
            "session taken over at step %d",
            session.next_step,
            extra={"session_id": session.id, "model": loaded.key, "event": "arrive"},
        )
        return session

    async def hand_over(self, request: HandoverRequest) -> None:
        """Give the session to the process that asked for it (see the module docstring).

        When the store cannot be reached the hand-over is undone: the session stays here
        under its lease, and the asking process is refused rather than given a stale entry.
        """
        session_id = request.session_id
        lease = self.ownership.forget(session_id)  # from here on no step applies
        if lease is None:
            return
        session = self.sessions.find(session_id)
        if session is None:  # gone meanwhile (ended): nothing to hand over
            await self.ownership.release(lease)
            return
        self.sessions.end_stream_for_move(session)
        await self.sessions.settle(session)
        stored = session_snapshot.stored(session, self.sessions.clock())
        try:
            await self.store.hand_over(lease, stored, request.to_owner, RECORD_TTL_S)
        except StoreUnavailable as exc:
            log.warning("hand-over of session %s undone: %s", session_id, exc)
            self.ownership.keep_unconfirmed(lease)
            return
        # Handed over, or the lease was lost: another process owns the session either way.
        self.sessions.forget(session)
        log.debug(
            "session handed over to %s",
            request.to_owner,
            extra={"session_id": session_id, "event": "handover"},
        )

    async def checkpoint(self, everything: bool = False) -> int:
        """Write changed sessions (``everything``: all) under their leases; how many.

        A chunk at a time: each chunk's records are taken just before its store call, so
        the event loop serves steps between chunks, however many sessions there are.
        Sessions whose write did not happen (the store unreachable) count as changed again.
        """
        changed = self.sessions.take_changed()
        todo = list(self.sessions) if everything else changed
        written = 0
        for start in range(0, len(todo), CHECKPOINT_CHUNK):
            try:
                written += await self._checkpoint_chunk(todo[start : start + CHECKPOINT_CHUNK])
            except StoreUnavailable as exc:
                self.sessions.mark_changed(todo[start:])
                log.warning("checkpoint of %d sessions failed: %s", len(todo) - start, exc)
                break
        return written

    async def _checkpoint_chunk(self, chunk: list[Session]) -> int:
        """Write the sessions of ``chunk`` still held here; how many were written."""
        writes = []
        now = self.sessions.clock()
        for session in chunk:
            lease = self.ownership.lease(session.id)
            if lease is not None and session.ended is None:
                writes.append((session, lease, session_snapshot.stored(session, now)))
        if not writes:
            return 0
        lost = await self.store.checkpoint_many([(lease, st) for _, lease, st in writes])
        lost_ids = {lease.session_id for lease in lost}
        for session, _, st in writes:
            if session.id in lost_ids:
                self.sessions.forget(session)
            elif session.durable_step is None or st.durable_step > session.durable_step:
                session.durable_step = st.durable_step
        return len(writes) - len(lost)

    async def drain(self) -> None:
        """At shutdown: checkpoint every session and release every lease."""
        written = await self.checkpoint(everything=True)
        released = await self.ownership.release_all()
        log.info("drain: %d sessions checkpointed, %d leases released", written, released)

    async def run(self, checkpoint_interval_s: float) -> None:
        """The background work (hand-overs, renewal, checkpoints) until cancelled."""
        tasks = [
            asyncio.create_task(self._serve_inbox(), name="inbox"),
            asyncio.create_task(self._keep_alive(), name="heartbeat"),
        ]
        if checkpoint_interval_s > 0:
            tasks.append(
                asyncio.create_task(self._checkpoints(checkpoint_interval_s), name="checkpoints")
            )
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve_inbox(self) -> None:
        """Hand over each session asked for; pass grants and releases to ``Ownership``."""
        handing: set[asyncio.Task[None]] = set()
        while True:
            try:
                async with self.store.inbox(self.ownership.owner) as messages:
                    self.listening.set()
                    async for message in messages:
                        if not isinstance(message, HandoverRequest):
                            self.ownership.deliver(message)
                            continue
                        task = asyncio.create_task(self.hand_over(message))
                        handing.add(task)
                        task.add_done_callback(handing.discard)
            except StoreUnavailable as exc:
                self.listening.clear()
                log.warning("not listening to the inbox: %s", exc)
                await asyncio.sleep(RETRY_S)

    async def _keep_alive(self) -> None:
        """Keep this process (and so every lease it holds) alive: a beat every third of the TTL."""
        while True:
            try:
                await self.ownership.keep_alive()
            except StoreUnavailable as exc:
                log.warning("heartbeat to the session store failed: %s", exc)
            await asyncio.sleep(self.ownership.ttl_s / 3)

    def _moved_away(self, session_ids: list[str]) -> None:
        """Drop the sessions whose leases were found lost: another process took them."""
        for session_id in session_ids:
            session = self.sessions.find(session_id)
            if session is not None:
                self.sessions.forget(session)
        log.warning("%d leases lost: their sessions moved away", len(session_ids))

    async def _checkpoints(self, interval_s: float) -> None:
        """Checkpoint changed sessions every ``interval_s``."""
        while True:
            await asyncio.sleep(interval_s)
            await self.checkpoint()

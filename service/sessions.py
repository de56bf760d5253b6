"""Sessions: per-client recurrent state that outlives any one stream, and its lifecycle.

A session holds a row of its model's state table, the index of the next step it expects,
and the last few outputs (``ReplayCache``, to answer retransmissions). Steps are numbered
per session: a step below ``next_step`` is a retransmission and is not applied again; a
step above it is a gap and is refused. So a client that reconnects and resends everything
it has not seen acknowledged loses nothing and double-counts nothing. A session's steps
run in its model's engine, which writes the row back when they all succeeded; the step
counters move in the same event-loop callback, so the row and ``next_step`` always agree.

A session has at most one live stream (``StreamHandle``); an Open that resumes it takes it
over and the old stream ends as superseded. A session without a stream waits ``idle_ttl_s``
to be resumed; at capacity the least recently used idle session is evicted.

A session belongs to the principal that created it (the authenticated client; "" for
every caller of a server without authentication). Every call that names a session takes
the caller's principal: to another principal the session is answered exactly as one that
does not exist (the same NotFound message) and nothing changes. A principal holds at most
``--max-sessions-per-principal`` sessions and ``--max-streams-per-principal`` live streams
here (0: unlimited); past either it is refused before anything else happens, so eviction
at capacity never makes room for it with another principal's session. Refusals at every
limit are counted by the limit's setting name (``limit_refusals``).

Plain asyncio: the servicer translates protobuf to these calls. Snapshots of sessions are
taken and restored by ``session_snapshot``. With a session store (``--store``) sessions
also move between processes: every session held here has a lease (``ownership``), a step
applies only under a fresh one, an Open of a session held elsewhere brings it here and a
session another process asks for is handed over (``moves``), and ending a session deletes
its store entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rnnstream.server.end_reasons import END_MESSAGES, EndReason
from rnnstream.server.engine import StepResult
from rnnstream.server.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from rnnstream.server.expiry import ExpiryQueue
from rnnstream.server.ownership import MOVED, MOVED_AWAY, Ownership, unreachable
from rnnstream.server.replay import ReplayCache
from rnnstream.server.repository import LoadedModel, ModelRepository
from rnnstream.server.session_ids import ID_RULE, check_session_id, new_session_id
from rnnstream.server.settings import Settings
from rnnstream.server.store import Lease, LeaseLost, StoreUnavailable
from rnnstream.server.stream_handle import StreamHandle
from rnnstream.server.tracing import OFF, Tracing

if TYPE_CHECKING:
    from rnnstream.server.moves import SessionMover

log = logging.getLogger(__name__)

# The settings whose limit a session or stream can be refused at (``limit_refusals``).
LIMITS = ("max_sessions", "max_streams", "max_sessions_per_principal", "max_streams_per_principal")


@dataclass
class StepsOutcome:
    """Outputs for one Steps message: ``y [n, O]`` from session step ``start`` on."""

    start: int
    y: np.ndarray
    states: np.ndarray | None
    applied: int


@dataclass
class FinalOutcome:
    """The end of a sequence: its length, last y and state, and the session's next step."""

    steps: int
    y: np.ndarray | None
    state: np.ndarray | None
    next_step: int


class Session:
    """One client's recurrent state and step bookkeeping (see the module docstring)."""

    __slots__ = (
        "created",
        "durable_step",
        "durable_told",
        "ended",
        "id",
        "idle_ttl_s",
        "inflight",
        "last_active",
        "model",
        "next_step",
        "owner",
        "principal",
        "replay",
        "restored_step",
        "return_sequences",
        "return_state",
        "row",
        "sequence_steps",
    )

    def __init__(
        self,
        session_id: str,
        model: LoadedModel,
        row: int,
        return_sequences: bool,
        return_state: bool,
        idle_ttl_s: float,
        now: float,
        principal: str = "",
    ) -> None:
        self.id = session_id
        self.principal = principal
        self.model = model
        self.row = row
        self.return_sequences = return_sequences
        self.return_state = return_state
        self.idle_ttl_s = idle_ttl_s
        self.next_step = 0
        self.sequence_steps = 0
        self.created = now
        self.last_active = now
        # The engine's future while a request runs on the engine thread or waits for the
        # end of a loop iteration; cleared (``_steps_done``) before the future resolves.
        self.inflight: asyncio.Future[StepResult] | None = None
        self.restored_step: int | None = None
        self.owner: StreamHandle | None = None
        self.ended: EndReason | None = None
        self.replay = ReplayCache()
        # With a session store: the step its last checkpoint holds the session at (None
        # without a store) and the value its client was last told.
        self.durable_step: int | None = None
        self.durable_told: int | None = None

    def durable_news(self) -> int | None:
        """``durable_step`` if it moved since the client was last told (now told), else None."""
        if self.durable_step == self.durable_told:
            return None
        self.durable_told = self.durable_step
        return self.durable_step

    @property
    def live(self) -> bool:
        """Whether a stream is attached."""
        return self.owner is not None

    @property
    def expires_at(self) -> float:
        """When the session ends if nothing happens (live sessions are postponed)."""
        return self.last_active + self.idle_ttl_s

    @property
    def last_y(self) -> np.ndarray | None:
        """``[O]`` of the sequence's last step (kept in the replay cache), or None."""
        return None if self.sequence_steps == 0 else self.replay.last_y

    def state_row(self) -> np.ndarray:
        """A copy of the state consistent with ``next_step``: ``[S]``.

        That is the table row: a request in flight writes it only when it ends, and
        ``next_step`` moves in the same event-loop callback.
        """
        return self.model.table.rows[self.row].copy()


class SessionManager:
    """Creates, resumes, steps, ends and expires sessions across every model.

    Example (inside a coroutine)::

        sessions = SessionManager(repository, settings)
        s = await sessions.open("seattle-temp", "", "", True, False, principal="alice")
        out = await sessions.steps(s, start=0, x=np.array([[51.0]], np.float32))
        out.y   # [1, 1]: next hour's temperature
    """

    def __init__(
        self,
        repository: ModelRepository,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
        ownership: Ownership | None = None,
        tracer: Tracing = OFF,
    ) -> None:
        self.repository = repository
        self.tracer = tracer  # a span per run of a session's steps (--otel)
        self.settings = settings
        self.clock = clock
        # With a session store: this process's leases, and what brings sessions held
        # elsewhere here (set by the server; see ``moves``).
        self.ownership = ownership
        self.mover: SessionMover | None = None
        self.draining = False
        # Per model version, least recently active first (a touch re-inserts): the order
        # eviction walks, without passing other models' sessions.
        self._by_model: dict[str, dict[str, Session]] = {}
        self._expiry: ExpiryQueue[Session] = ExpiryQueue(
            deadline=lambda s: s.expires_at, gone=lambda s: s.ended is not None
        )
        self.live_streams = 0
        # Sessions held and live streams, per principal (none kept at 0): the fair limits.
        self._sessions_of: Counter[str] = Counter()
        self._streams_of: Counter[str] = Counter()
        self.ended_counts: dict[EndReason, int] = dict.fromkeys(EndReason, 0)
        self.limit_refusals: dict[str, int] = dict.fromkeys(LIMITS, 0)
        # Sessions a snapshot held but that could not be restored, with the reason, and
        # the principal each belonged to (only that principal is told the reason).
        self.refused: dict[str, str] = {}
        self._refused_principals: dict[str, str] = {}
        self._background: set[asyncio.Task[None]] = set()
        # Sessions changed since they were last taken for a checkpoint (with a store): kept
        # apart so that a checkpoint costs what changed, not every session held.
        self._changed: dict[str, Session] = {}

    def __len__(self) -> int:
        """How many sessions are held."""
        return sum(len(sessions) for sessions in self._by_model.values())

    def __iter__(self) -> Iterator[Session]:
        """Every session (a copy of the list), each model's least recently active first."""
        return iter([s for sessions in self._by_model.values() for s in sessions.values()])

    def take_changed(self) -> list[Session]:
        """The sessions changed since the last call, in the order they first changed."""
        changed = list(self._changed.values())
        self._changed.clear()
        return changed

    def mark_changed(self, sessions: Iterable[Session]) -> None:
        """Count ``sessions`` as changed again (a checkpoint of them did not happen)."""
        for session in sessions:
            self._note_change(session)

    def _note_change(self, session: Session) -> None:
        """Keep a live session for the next checkpoint (only with a store: none reads it else)."""
        if self.ownership is not None and session.ended is None:
            self._changed.setdefault(session.id, session)

    def find(self, session_id: str) -> Session | None:
        """The session with this id, if any (one lookup per served model version)."""
        for sessions in self._by_model.values():
            session = sessions.get(session_id)
            if session is not None:
                return session
        return None

    def get(self, session_id: str, principal: str = "") -> Session:
        """The session with this id if it belongs to ``principal``, or NotFound saying what to do.

        Another principal's session is answered as one that does not exist. An id outside
        the rule (``session_ids``) is InvalidArgument.
        """
        check_session_id(session_id, "session_id")
        session = self.find(session_id)
        if session is None or session.principal != principal:
            raise self.not_found(session_id, principal)
        return session

    def not_found(self, session_id: str, principal: str) -> NotFound:
        """The NotFound for a session ``principal`` has none of here, saying what to do.

        One wording whether the session never existed, ended, or belongs to another
        principal; only a session of ``principal`` that a snapshot could not restore says so.
        """
        reason = self.refused.get(session_id)
        if reason is not None and self._refused_principals.get(session_id) == principal:
            return NotFound(f"session {session_id!r} was not restored: {reason}")
        return NotFound(
            f"session {session_id!r} does not exist: it ended, expired after "
            f"{self.settings.idle_ttl_s:g}s idle, or was never created; open a new session "
            "with an empty Open.session_id"
        )

    def refuse(self, session_id: str, principal: str, reason: str) -> None:
        """Remember why a snapshot session of ``principal`` could not be restored."""
        self.refused[session_id] = reason
        self._refused_principals[session_id] = principal

    async def open(
        self,
        model: str,
        version: str,
        session_id: str,
        return_sequences: bool | None,
        return_state: bool | None,
        idle_ttl_s: float = 0.0,
        create: bool = False,
        principal: str = "",
    ) -> Session:
        """A new session (empty ``session_id``), or the session ``session_id`` to resume.

        With ``create`` the session is created under ``session_id`` when none exists, and
        resumed when it does (a retried create never makes two). ``return_sequences`` None
        means the model's default mode (new session) or the session's current mode
        (resume); ``return_state`` None means off (new) or unchanged (resume);
        ``idle_ttl_s`` 0 the server's default (new) or the session's current TTL (resume).
        A new session belongs to ``principal``; another principal's session is NotFound
        (with ``create`` too: its id is not free) and is left as it was.
        """
        if self.draining:
            raise Unavailable("the server is draining: open the session on another server")
        ttl = self._check_ttl(idle_ttl_s)
        if not session_id:
            if create:
                raise InvalidArgument(
                    "Open.create is set without Open.session_id: name the session to create "
                    f"({ID_RULE}), or leave create unset for a server-generated id"
                )
            if self.mover is not None:
                return await self.mover.create_here(
                    model, version, return_sequences, return_state, ttl, principal
                )
            return self.create(
                model, version, return_sequences, return_state, ttl, principal=principal
            )
        check_session_id(session_id, "Open.session_id")
        existing = self.find(session_id)
        if existing is None and self.mover is not None:
            existing = await self.mover.bring(
                session_id, create, model, version, return_sequences, return_state, ttl, principal
            )
        elif existing is None and create and session_id not in self.refused:
            return self.create(
                model, version, return_sequences, return_state, ttl, session_id, principal
            )
        if existing is None or existing.principal != principal:
            raise self.not_found(session_id, principal)
        if existing.owner is None:  # a takeover adds no stream; a resume does
            self._check_stream_room(principal)
        session = self._resume(model, version, existing, return_sequences, return_state)
        if ttl and ttl != session.idle_ttl_s:
            session.idle_ttl_s = ttl
            self._expiry.push(session)  # a shorter TTL must not wait for the old deadline
        return session

    def create(
        self,
        model: str,
        version: str,
        return_sequences: bool | None,
        return_state: bool | None,
        idle_ttl_s: float = 0.0,
        session_id: str = "",
        principal: str = "",
    ) -> Session:
        """A new session of ``principal`` in this process, under ``session_id`` or a new id.

        The arguments mean what they mean for a new session in ``open``. A principal at
        its limits is refused before any session is evicted to make room.
        """
        if self.draining:
            raise Unavailable("the server is draining: open the session on another server")
        ttl = self._check_ttl(idle_ttl_s)
        self._check_stream_room(principal)
        self.check_session_room(principal)
        loaded = self.repository.get(model, version)
        self.make_room(loaded)
        now = self.clock()
        session = Session(
            session_id=session_id or new_session_id(),
            model=loaded,
            row=loaded.table.allocate(),
            return_sequences=(
                loaded.manifest.return_sequences if return_sequences is None else return_sequences
            ),
            return_state=bool(return_state),
            idle_ttl_s=ttl or self.settings.idle_ttl_s,
            now=now,
            principal=principal,
        )
        self.add(session)
        log.debug(
            "session opened",
            extra={"session_id": session.id, "model": loaded.key, "event": "open"},
        )
        return session

    def _check_stream_room(self, principal: str) -> None:
        """Refuse another live stream at --max-streams, or of ``principal`` at its limit."""
        if self.live_streams >= self.settings.max_streams:
            raise self.refusal(
                "max_streams",
                f"the server already carries {self.live_streams} live streams (--max-streams): "
                "close idle streams or retry later",
            )
        limit = self.settings.max_streams_per_principal
        if limit and self._streams_of[principal] >= limit:
            raise self.refusal(
                "max_streams_per_principal",
                f"{_who(principal)} already holds {limit} live streams here, its limit "
                "(--max-streams-per-principal): close idle streams or retry later",
            )

    def check_session_room(self, principal: str) -> None:
        """Refuse one more session of ``principal`` here at --max-sessions-per-principal."""
        limit = self.settings.max_sessions_per_principal
        if limit and self._sessions_of[principal] >= limit:
            raise self.refusal(
                "max_sessions_per_principal",
                f"{_who(principal)} already holds {limit} sessions here, its limit "
                "(--max-sessions-per-principal): end or delete sessions, or retry later",
            )

    def make_room(self, loaded: LoadedModel) -> None:
        """Free a row of ``loaded``'s full table by eviction, or refuse at --max-sessions."""
        if loaded.table.free == 0 and not self.evict_one(loaded):
            raise self.refusal(
                "max_sessions",
                f"model {loaded.key} already holds {loaded.table.capacity} sessions, all with "
                "live streams or steps in flight: end or delete sessions, retry later, or raise "
                "--max-sessions",
            )

    def refusal(self, limit: str, message: str) -> ResourceExhausted:
        """The ResourceExhausted for a refusal at the setting ``limit``, counted."""
        self.limit_refusals[limit] += 1
        return ResourceExhausted(message)

    def add(self, session: Session) -> None:
        """Track a new or restored session."""
        self._by_model.setdefault(session.model.key, {})[session.id] = session
        self._sessions_of[session.principal] += 1
        self._expiry.push(session)

    def _untrack(self, session: Session) -> None:
        """Stop tracking an ended or moved session (not ``ended`` yet: it was tracked)."""
        self._by_model.get(session.model.key, {}).pop(session.id, None)
        self._changed.pop(session.id, None)
        _decrement(self._sessions_of, session.principal)

    def _check_ttl(self, idle_ttl_s: float) -> float:
        """A client's idle TTL request, checked against the server's maximum (0: none)."""
        if idle_ttl_s < 0 or idle_ttl_s > self.settings.max_idle_ttl_s or idle_ttl_s != idle_ttl_s:
            raise InvalidArgument(
                f"Open.idle_ttl_s is {idle_ttl_s:g}: ask for 0 (the server's default, "
                f"{self.settings.idle_ttl_s:g}s) up to {self.settings.max_idle_ttl_s:g}s"
            )
        return idle_ttl_s

    def _resume(
        self,
        model: str,
        version: str,
        session: Session,
        return_sequences: bool | None,
        return_state: bool | None,
    ) -> Session:
        """Resume a session of the caller's, checking the Open's model against the session's."""
        manifest = session.model.manifest
        if (model and model != manifest.name) or (version and version != manifest.version):
            raise InvalidArgument(
                f"session {session.id!r} belongs to model {session.model.key}, but Open asks "
                f"for {model or '(default)'}/{version or '(latest)'}: leave Open.model and "
                "Open.version empty when resuming, or open a new session"
            )
        if return_sequences is not None:
            session.return_sequences = return_sequences
        if return_state is not None:
            session.return_state = return_state
        self._touch(session)
        log.debug(
            "session resumed at step %d",
            session.next_step,
            extra={"session_id": session.id, "model": session.model.key, "event": "resume"},
        )
        return session

    def attach(self, session: Session, handle: StreamHandle) -> None:
        """Make ``handle`` the session's live stream; an older stream is superseded."""
        old = session.owner
        session.owner = handle
        if old is None:
            self.live_streams += 1
            self._streams_of[session.principal] += 1
        elif old is not handle:
            old.end(EndReason.SUPERSEDED)

    def detach(self, session: Session, handle: StreamHandle) -> None:
        """The stream ``handle`` is gone; the session waits to be resumed."""
        if session.owner is handle:
            self._drop_owner(session)
            self._touch(session)

    def _drop_owner(self, session: Session) -> StreamHandle | None:
        """Detach the session's stream, if any, and return it."""
        owner, session.owner = session.owner, None
        if owner is not None:
            self.live_streams -= 1
            _decrement(self._streams_of, session.principal)
        return owner

    async def settle(self, session: Session) -> None:
        """Wait until the session has no step in flight (a stream it moved from may have one)."""
        # Looped: another stream's step may start as soon as this one ends.
        while session.inflight is not None and not session.inflight.done():
            with contextlib.suppress(Exception):  # its failure was its own caller's to report
                await asyncio.shield(session.inflight)

    async def steps(self, session: Session, start: int, x: np.ndarray) -> StepsOutcome:
        """Apply ``x [n, F]`` as steps ``start..start+n-1``; retransmissions are not re-applied."""
        await self._ready(session)
        n = len(x)
        if start > session.next_step:
            raise FailedPrecondition(
                f"Steps.start is {start}, but session {session.id} expects step "
                f"{session.next_step} next: steps {session.next_step}..{start - 1} are missing; "
                f"resend from step {session.next_step}"
            )
        skip = min(session.next_step - start, n)
        new_x = x[skip:] if skip else x
        manifest = session.model.manifest
        if skip or len(new_x) == 0:  # (most messages are new steps only: no replay lookup)
            replayed_from, replayed_y, replayed_states = session.replay.replayed(
                start, skip, session.return_state, manifest.n_outputs, manifest.state_size
            )
            if len(new_x) == 0:
                self._touch(session)
                return StepsOutcome(replayed_from, replayed_y, replayed_states, applied=0)
        # The bookkeeping (_steps_done) runs when the engine writes the row back, even if
        # this coroutine is cancelled meanwhile (its stream superseded): the row moves on
        # together with next_step.
        with self.tracer.step_batch(
            manifest.name, manifest.version, session.id, start + skip, len(new_x)
        ):
            ran = session.model.engine.submit(
                new_x[None],
                rows=(session.row,),
                want_states=session.return_state,
                on_done=functools.partial(self._steps_done, session),
            )
            if isinstance(ran, StepResult):  # ran at once on the event loop
                result = ran
            else:
                session.inflight = ran
                result = await asyncio.shield(ran)
        y = result.y[0]  # [n_new, O]
        states = result.states[0] if result.states is not None else None  # [n_new, S]
        if skip == 0:
            return StepsOutcome(start, y, states, applied=len(new_x))
        return StepsOutcome(
            replayed_from,
            np.concatenate([replayed_y, y]),
            None
            if states is None or replayed_states is None
            else np.concatenate([replayed_states, states]),
            applied=len(new_x),
        )

    async def _ready(self, session: Session) -> None:
        """Wait for the session's step in flight; refuse an ended session, or one moved away.

        With a store a step applies only under a fresh lease (``ownership``): past the
        process's local deadline it is confirmed first, and a lost one means the session moved.
        """
        ownership = self.ownership
        while True:  # every await below lets another stream's step start
            if session.inflight is not None:
                await self.settle(session)
            self._check_alive(session)
            if ownership is None or ownership.fresh(session.id):
                if session.inflight is None:
                    return
                continue
            try:
                held = await ownership.confirm(session.id)
            except StoreUnavailable as exc:
                raise unreachable(exc) from exc
            if not held:
                self.forget(session)
                raise Unavailable(MOVED)

    def _steps_done(self, session: Session, result: StepResult | None) -> None:
        """The engine ended the session's request: on success, move the step counters.

        Called on the event loop right after the engine wrote the row back (or left it as
        it was, on failure, with None): the row and ``next_step`` move together.
        """
        session.inflight = None
        if result is not None:
            y = result.y[0]  # [n, O]
            n = len(y)
            session.next_step += n
            session.sequence_steps += n
            states = result.states[0] if result.states is not None else None
            session.replay.remember(session.next_step, y, states, self.settings.replay_steps)
            self._note_change(session)
            self._touch(session)
        if session.ended is not None:
            self._release_row(session)

    async def end(self, session: Session, reset: bool) -> FinalOutcome:
        """End the current sequence and report it.

        With ``reset`` the next sequence starts from the initial state; the session's step
        numbering continues either way.
        """
        await self._ready(session)
        state = session.state_row() if session.return_state else None
        outcome = FinalOutcome(
            steps=session.sequence_steps,
            y=session.last_y,
            state=state,
            next_step=session.next_step,
        )
        session.sequence_steps = 0
        self._note_change(session)
        if reset:
            session.model.table.reset(session.row)
        self._touch(session)
        return outcome

    def close(self, session: Session, reason: EndReason) -> None:
        """End the session now and free its row (after any step in flight)."""
        if session.ended is not None:
            return
        session.ended = reason
        self._untrack(session)
        self.ended_counts[reason] += 1
        log.debug(
            "session ended: %s",
            END_MESSAGES[reason],
            extra={
                "session_id": session.id,
                "model": session.model.key,
                "event": "end",
                "reason": reason.name.lower(),
                "next_step": session.next_step,
            },
        )
        owner = self._drop_owner(session)
        if owner is not None and reason is not EndReason.CLIENT_END:
            owner.end(reason)
        if session.inflight is None:
            self._release_row(session)
        if self.ownership is not None:
            lease = self.ownership.forget(session.id)
            if lease is not None:
                self._in_background(self._delete_entry(lease))

    async def _delete_entry(self, lease: Lease) -> None:
        """Delete an ended session's store entry (it is not resumed anywhere)."""
        assert self.ownership is not None
        try:
            await self.ownership.store.delete(lease)
        except (LeaseLost, StoreUnavailable) as exc:  # then it expires by its idle TTL
            log.warning("store entry of ended session %s kept: %s", lease.session_id, exc)

    def _in_background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` as a task held until it ends (awaited by ``settle_all``)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def end_stream_for_move(self, session: Session) -> None:
        """End the session's live stream, if any, because the session moves away."""
        owner = self._drop_owner(session)
        if owner is not None:
            owner.end(EndReason.SUPERSEDED, MOVED_AWAY)

    def forget(self, session: Session, message: str = MOVED_AWAY) -> None:
        """Drop a session that moved to another process: not ended, not counted, kept stored.

        Its live stream ends as superseded, told ``message``; its row is freed after any
        step in flight.
        """
        if self.ownership is not None:
            self.ownership.forget(session.id)
        if session.ended is not None:
            return
        session.ended = EndReason.SUPERSEDED
        self._untrack(session)
        owner = self._drop_owner(session)
        if owner is not None:
            owner.end(EndReason.SUPERSEDED, message)
        if session.inflight is None:
            self._release_row(session)
        log.debug(
            "session moved away",
            extra={"session_id": session.id, "model": session.model.key, "event": "moved"},
        )

    def delete(self, session_id: str, principal: str = "") -> bool:
        """DeleteSession: end it now; False when ``principal`` has no such session here."""
        check_session_id(session_id, "session_id")
        session = self.find(session_id)
        if session is None or session.principal != principal:
            return False
        self.close(session, EndReason.DELETED)
        return True

    def expire_idle(self) -> list[Session]:
        """End every session without a stream that has been idle longer than its TTL."""
        now = self.clock()
        expired: list[Session] = []
        busy: list[Session] = []
        for session in self._expiry.due(now):
            (busy if session.live or session.inflight is not None else expired).append(session)
        for session in busy:  # a live stream keeps its session; look again a TTL later
            self._expiry.push(session, at=now + session.idle_ttl_s)
        for session in expired:
            self.close(session, EndReason.IDLE_TTL)
        return expired

    def drain(self) -> None:
        """Refuse new sessions and end every live stream with the DRAINING reason.

        The sessions themselves stay (a restored server can resume them).
        """
        self.draining = True
        for session in self:
            owner = self._drop_owner(session)
            if owner is not None:
                owner.end(EndReason.DRAINING)

    async def settle_all(self) -> None:
        """Wait until no session has a step in flight, nor a store entry being deleted."""
        for session in self:
            await self.settle(session)
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def evict_one(self, loaded: LoadedModel) -> bool:
        """Evict the least recently used idle session of ``loaded``; False if none can go.

        Walks only that model's sessions, from the least recently active; the live ones it
        passes are bounded by --max-streams.
        """
        for session in self._by_model.get(loaded.key, {}).values():
            if not session.live and session.inflight is None:
                self.close(session, EndReason.EVICTED)
                return True
        return False

    def _touch(self, session: Session) -> None:
        """Mark activity: the session moves to the back of the expiry order."""
        session.last_active = self.clock()
        if session.ended is None:
            sessions = self._by_model[session.model.key]
            sessions[session.id] = sessions.pop(session.id)

    def _release_row(self, session: Session) -> None:
        """Give an ended session's state row back.

        Called once: by ``close`` when no request is in flight, else when that request
        ends (no request starts on an ended session).
        """
        session.model.table.release(session.row)

    def _check_alive(self, session: Session) -> None:
        """Refuse work on a session that has ended or moved to another process."""
        if session.ended is EndReason.SUPERSEDED:  # only ``forget`` ends a session so
            raise Unavailable(MOVED)
        if session.ended is not None:
            raise NotFound(
                f"session {session.id} has ended: {END_MESSAGES[session.ended]}; open a new one"
            )


def _who(principal: str) -> str:
    """The principal a limit refusal speaks of."""
    if principal:
        return f"principal {principal!r}"
    return "principal '' (every caller of a server without authentication)"


def _decrement(counts: Counter[str], key: str) -> None:
    """One less of ``key``, keeping no zero counts (principals come and go)."""
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]

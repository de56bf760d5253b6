"""Sessions into records and back: what a snapshot or the session store holds, and restores.

``snapshot`` writes and reads the file; this module takes every session's record from a
``SessionManager`` and brings records back as sessions, refusing (with a reason a resuming
client of the session's principal is told) those whose model version is gone or whose
graph changed. A record carries the session's principal, so a session belongs to the
same principal wherever and whenever it is restored.
"""

from __future__ import annotations

from rnnstream.server.errors import NotFound
from rnnstream.server.replay import ReplayCache
from rnnstream.server.repository import LoadedModel, ModelRepository
from rnnstream.server.sessions import Session, SessionManager
from rnnstream.server.snapshot import ModelSessions, SessionRecord
from rnnstream.server.store.entry import GraphIdentity, StoredSession


def take(sessions: SessionManager) -> list[ModelSessions]:
    """Every session as snapshot records, grouped by model version.

    Taken on the event loop: a session with a request in flight is recorded as it was
    before the request (its table row and ``next_step`` move together when it ends).
    """
    groups: dict[str, ModelSessions] = {}
    now = sessions.clock()
    for session in sessions:
        loaded = session.model
        group = groups.get(loaded.key)
        if group is None:
            m = loaded.manifest
            group = groups[loaded.key] = ModelSessions(
                m.name, m.version, loaded.sha256, m.n_outputs, m.state_size
            )
        group.records.append(record(session, now))
    return list(groups.values())


def restore(sessions: SessionManager, groups: list[ModelSessions]) -> int:
    """Bring back snapshot sessions whose model version and graph are still served.

    Sessions of a model that is gone or whose graph changed are refused, each with a reason
    (kept in ``sessions.refused``) a resuming client is told; their state is never applied
    to another graph. Returns how many sessions were restored.
    """
    now = sessions.clock()
    restored = 0
    for group in groups:
        reason = _refusal(sessions.repository, group)
        if reason is not None:
            for rec in group.records:
                sessions.refuse(rec.session_id, rec.principal, reason)
            continue
        loaded = sessions.repository.get(group.model, group.version)
        for rec in group.records:
            if loaded.table.free == 0 or sessions.find(rec.session_id) is not None:
                sessions.refuse(
                    rec.session_id, rec.principal, "the restored server had no room for it"
                )
                continue
            sessions.add(from_record(loaded, rec, now))
            restored += 1
    return restored


def record(session: Session, now: float) -> SessionRecord:
    """The session's record, consistent with ``next_step`` (taken on the event loop)."""
    replay = session.replay
    return SessionRecord(
        session_id=session.id,
        state=session.state_row(),
        next_step=session.next_step,
        sequence_steps=session.sequence_steps,
        return_sequences=session.return_sequences,
        return_state=session.return_state,
        idle_ttl_s=session.idle_ttl_s,
        age_s=now - session.created,
        replay_start=replay.start,
        replay_y=replay.y,
        replay_states=replay.states,
        principal=session.principal,
    )


def from_record(loaded: LoadedModel, rec: SessionRecord, now: float) -> Session:
    """A session of ``loaded`` brought back from ``rec`` in a newly allocated row.

    The caller checked that the record belongs to this graph and that a row is free.
    """
    session = Session(
        rec.session_id,
        loaded,
        loaded.table.allocate(rec.state),
        rec.return_sequences,
        rec.return_state,
        rec.idle_ttl_s,
        now,
        rec.principal,
    )
    session.created = now - rec.age_s
    session.next_step = session.restored_step = rec.next_step
    session.sequence_steps = rec.sequence_steps
    session.replay = ReplayCache(rec.replay_start, rec.replay_y, rec.replay_states)
    return session


def graph_identity(loaded: LoadedModel) -> GraphIdentity:
    """The identity of the graph ``loaded`` serves (what a stored state must match)."""
    m = loaded.manifest
    return GraphIdentity(m.name, m.version, loaded.sha256, m.n_outputs, m.state_size)


def stored(session: Session, now: float) -> StoredSession:
    """The session as the session store holds it."""
    return StoredSession(record(session, now), graph_identity(session.model))


def _refusal(repository: ModelRepository, group: ModelSessions) -> str | None:
    """Why a snapshot group cannot be restored, or None when it can."""
    try:
        loaded = repository.get(group.model, group.version)
    except NotFound:
        return f"its model {group.model}/{group.version} is not served any more"
    if loaded.sha256 != group.onnx_sha256:
        return (
            f"its state belongs to another graph of {group.model}/{group.version} "
            f"(sha256 {group.onnx_sha256[:12]}..., now {loaded.sha256[:12]}...)"
        )
    m = loaded.manifest
    if (m.n_outputs, m.state_size) != (group.n_outputs, group.state_size):
        return f"its shapes differ from the served {group.model}/{group.version}"
    return None

"""Sessions into snapshot records and back: what a snapshot holds, and what a restart restores.

``snapshot`` writes and reads the file; this module takes every session's record from a
``SessionManager`` and brings records back as sessions, refusing (with a reason a resuming
client is told) those whose model version is gone or whose graph changed.
"""

from __future__ import annotations

from rnnstream.server.errors import NotFound
from rnnstream.server.replay import ReplayCache
from rnnstream.server.repository import ModelRepository
from rnnstream.server.sessions import Session, SessionManager
from rnnstream.server.snapshot import ModelSessions, SessionRecord


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
        replay = session.replay
        group.records.append(
            SessionRecord(
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
            )
        )
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
            sessions.refused.update(dict.fromkeys((r.session_id for r in group.records), reason))
            continue
        loaded = sessions.repository.get(group.model, group.version)
        for record in group.records:
            if loaded.table.free == 0 or sessions.find(record.session_id) is not None:
                sessions.refused[record.session_id] = "the restored server had no room for it"
                continue
            session = Session(
                record.session_id,
                loaded,
                loaded.table.allocate(record.state),
                record.return_sequences,
                record.return_state,
                record.idle_ttl_s,
                now,
            )
            session.created = now - record.age_s
            session.next_step = session.restored_step = record.next_step
            session.sequence_steps = record.sequence_steps
            session.replay = ReplayCache(record.replay_start, record.replay_y, record.replay_states)
            sessions.add(session)
            restored += 1
    return restored


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

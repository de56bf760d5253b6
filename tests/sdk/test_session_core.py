"""The session protocol without a network: chunking, acks, resume arithmetic, lost Ends."""

from __future__ import annotations

import numpy as np
import pytest

import rnnstream
from rnnstream._session import HALF_CLOSE, SessionCore
from rnnstream.v1 import rnnstream_pb2 as pb

INFO = pb.ModelInfo(name="m", version="1", n_features=2, n_outputs=1, state_size=3)


def opened_core(many: bool, next_step: int = 0, chunk_size: int = 4) -> SessionCore:
    core = SessionCore(
        model="m",
        version="",
        return_sequences=many,
        return_state=False,
        session_id=None,
        chunk_size=chunk_size,
        window=2,
    )
    assert core.open_request().open.return_sequences is many
    core.on_opened(
        pb.Opened(session_id="s", model=INFO, next_step=next_step, return_sequences=many)
    )
    return core


def kinds(requests) -> list[str | None]:
    return [None if r is HALF_CLOSE else r.WhichOneof("kind") for r in requests]


def starts(requests) -> list[int]:
    return [r.steps.start for r in requests if r is not HALF_CLOSE and r.HasField("steps")]


def test_chunks_numbering_and_window():
    core = opened_core(many=True, next_step=10)
    core.enqueue(np.zeros((10, 2), np.float32))
    assert [(c.start, len(c.x)) for c in core.pending] == [(10, 4), (14, 4), (18, 2)]
    assert starts(core.sendable()) == [10, 14]  # window=2
    core.on_outputs(pb.Outputs(start=10, y=[1, 2, 3, 4]))
    assert starts(core.sendable()) == [18]
    assert core.next_step == 20 and core.delivered == 14


def test_resume_many_to_one_trims_what_the_server_applied():
    core = opened_core(many=False)
    core.enqueue(np.arange(20, dtype=np.float32).reshape(10, 2))
    core.sendable()
    assert core.on_opened(pb.Opened(session_id="s", model=INFO, next_step=6)) is False
    requests = core.sendable()
    assert starts(requests) == [6, 8]
    assert list(requests[0].steps.x) == [12, 13, 14, 15]  # steps 6 and 7


def test_resume_many_to_many_resends_unacknowledged_for_their_outputs():
    core = opened_core(many=True)
    core.enqueue(np.zeros((8, 2), np.float32))
    core.sendable()
    core.on_opened(pb.Opened(session_id="s", model=INFO, next_step=8))
    assert starts(core.sendable()) == [0, 4]


def test_resume_refuses_a_session_that_moved_on_or_back():
    core = opened_core(many=True, next_step=5)
    core.enqueue(np.zeros((2, 2), np.float32))
    with pytest.raises(rnnstream.FailedPreconditionError, match="another client"):
        core.on_opened(pb.Opened(session_id="s", model=INFO, next_step=9))
    with pytest.raises(rnnstream.DataLossError, match=r"steps 4\.\.4 of session .* were lost"):
        core.on_opened(pb.Opened(session_id="s", model=INFO, next_step=4))


def lost_end_core(many: bool) -> SessionCore:
    core = opened_core(many=many)
    core.enqueue(np.zeros((3, 2), np.float32))
    core.sendable()
    if many:
        core.on_outputs(pb.Outputs(start=0, y=[1, 2, 3]))
    core.end_request = pb.End(reset=True)
    assert kinds(core.sendable()) == ["end"]
    return core


def test_an_end_the_server_did_not_act_on_is_sent_again():
    core = lost_end_core(many=False)
    assert core.on_opened(pb.Opened(session_id="s", model=INFO, next_step=3)) is True
    core.resolve_end(server_sequence_steps=3)
    assert kinds(core.sendable()) == ["end"]


def test_an_end_the_server_acted_on_is_not_sent_again():
    core = lost_end_core(many=True)
    assert core.on_opened(pb.Opened(session_id="s", model=INFO, next_step=3)) is True
    core.resolve_end(server_sequence_steps=0)
    assert core.final is not None and list(core.final.y) == [3.0] and core.final.steps == 3
    assert core.sendable() == []
    lost = lost_end_core(many=False)
    lost.on_opened(pb.Opened(session_id="s", model=INFO, next_step=3))
    with pytest.raises(rnnstream.DataLossError):
        lost.resolve_end(server_sequence_steps=0)


def test_half_close_after_everything_is_sent():
    core = opened_core(many=False)
    core.enqueue(np.zeros((5, 2), np.float32))
    core.close()
    assert core.sendable()[-1] is HALF_CLOSE
    core.on_final(pb.Final(steps=5, y=[0.5], next_step=5))
    assert not core.pending and core.final_y().tolist() == [0.5]


def test_a_new_stream_half_closes_again_after_a_drop():
    core = opened_core(many=True)
    core.enqueue(np.zeros((2, 2), np.float32))
    core.close()
    assert kinds(core.sendable()) == ["steps", None]
    core.on_opened(pb.Opened(session_id="s", model=INFO, next_step=2))  # resumed
    assert kinds(core.sendable()) == ["steps", None]


def test_a_session_that_failed_while_closing_stays_closed():
    core = opened_core(many=True)
    core.close()
    core.after_error(rnnstream.UnavailableError("gone"))
    with pytest.raises(RuntimeError, match="closed"):
        core.begin_call()


def test_a_failed_call_resyncs_from_the_next_opened():
    core = opened_core(many=True)
    core.enqueue(np.zeros((2, 2), np.float32))
    core.sendable()
    core.after_error(rnnstream.UnavailableError("gone"))
    core.begin_call()  # not closed: the call may go on once the session is resynced
    core.on_opened(pb.Opened(session_id="s", model=INFO, next_step=7, return_sequences=True))
    assert core.next_step == 7 and not core.pending and core.seq_steps is None

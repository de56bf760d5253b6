"""Ids, create-until-opened, the resend log across a server crash, and retries at Open.

All on ``SessionCore`` without a network: feed it the server's answers, check what it
sends and what it delivers.
"""

from __future__ import annotations

import re

import grpc
import numpy as np
import pytest

import rnnstream
from rnnstream._client_base import MAX_BACKOFF_S, backoff_delay
from rnnstream._session import SessionCore
from rnnstream.errors import is_retryable
from rnnstream.v1 import rnnstream_pb2 as pb
from tests.sdk.test_session_core import INFO, kinds, starts


def new_core(
    many: bool = True,
    session_id: str | None = None,
    resend_buffer_steps: int = 1000,
    chunk_size: int = 4,
) -> SessionCore:
    return SessionCore(
        model="m",
        version="",
        return_sequences=many,
        return_state=False,
        session_id=session_id,
        chunk_size=chunk_size,
        window=2,
        resend_buffer_steps=resend_buffer_steps,
    )


def opened(core: SessionCore, next_step: int, durable_step: int | None = None) -> pb.Opened:
    msg = pb.Opened(
        session_id=core.id,
        model=INFO,
        next_step=next_step,
        return_sequences=core.requested_return_sequences is not False,
    )
    if durable_step is not None:
        msg.durable_step = durable_step
    return msg


def outputs(start: int, n: int, durable_step: int | None = None) -> pb.Outputs:
    """Outputs whose y is the step index: which rows were delivered is visible."""
    msg = pb.Outputs(start=start, y=[float(t) for t in range(start, start + n)])
    if durable_step is not None:
        msg.durable_step = durable_step
    return msg


def answer_all(
    core: SessionCore, sent: list | None = None, durable_step: int | None = None
) -> None:
    """Answer ``sent`` and every chunk the core sends (many-to-many) until it sends none."""
    requests = sent or []
    while requests := requests or [r for r in core.sendable() if r and r.HasField("steps")]:
        for request in requests:
            n = len(request.steps.x) // 2
            core.on_outputs(outputs(request.steps.start, n, durable_step))
        requests = []


def delivered_steps(core: SessionCore) -> list[int]:
    return [int(v) for y in core.collected_y for v in y[:, 0]]


X = np.arange(24, dtype=np.float32).reshape(12, 2)  # step t is [2t, 2t+1]


# -- ids ---------------------------------------------------------------------------------


def test_a_new_session_is_created_under_an_id_made_here_until_it_opened():
    core, other = new_core(), new_core()
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", core.id) and core.id != other.id
    first = core.open_request().open
    assert first.session_id == core.id and first.create
    core.on_opened(opened(core, 0))
    again = core.open_request().open  # a reconnect: resume, never re-create an ended session
    assert again.session_id == core.id and not again.create


def test_a_callers_id_resumes_without_create_and_is_checked():
    core = new_core(session_id="A" * 16)
    assert core.open_request().open.session_id == "A" * 16
    assert not core.open_request().open.create
    for bad in ["short", "x" * 129, "has space in it!!", "ümlautümlautümlaut"]:
        with pytest.raises(ValueError, match=re.escape("16 to 128 characters of [A-Za-z0-9_-]")):
            new_core(session_id=bad)


# -- restore after a crash ----------------------------------------------------------------


def test_a_restore_resends_from_next_step_and_delivers_nothing_twice():
    core = new_core()
    core.on_opened(opened(core, 0, durable_step=0))
    core.enqueue(X)
    answer_all(core, durable_step=5)  # the store reached step 5 meanwhile
    assert delivered_steps(core) == list(range(12))
    assert [(c.start, c.end) for c in core.resend_log.chunks] == [(5, 8), (8, 12)]

    core.begin_call()
    core.on_opened(opened(core, 5, durable_step=5))  # another server restored step 5
    requests = core.sendable()
    assert starts(requests) == [5, 8]
    np.testing.assert_array_equal(np.reshape(requests[0].steps.x, (-1, 2)), X[5:8])
    answer_all(core, requests)
    assert delivered_steps(core) == []  # recomputed outputs of delivered steps are dropped
    assert core.delivered == core.next_step == 12 and not core.pending

    core.enqueue(X[:2])
    answer_all(core)
    assert delivered_steps(core) == [12, 13]


def test_kept_steps_do_not_change_when_the_caller_reuses_its_array():
    core = new_core()
    core.on_opened(opened(core, 0, durable_step=0))
    buffer = X[:4].copy()
    core.enqueue(buffer)
    answer_all(core)
    buffer[:] = -1.0
    core.on_opened(opened(core, 0, durable_step=0))
    np.testing.assert_array_equal(np.reshape(core.sendable()[0].steps.x, (-1, 2)), X[:4])


def test_a_restore_resends_kept_steps_before_the_unacknowledged_ones():
    core = new_core()
    core.on_opened(opened(core, 0, durable_step=0))
    core.enqueue(X[:8])
    answer_all(core)
    core.begin_call()
    core.enqueue(X[8:])  # steps 8..11 sent, not answered: the server crashed
    assert starts(core.sendable()) == [8]
    core.on_opened(opened(core, 4, durable_step=4))
    requests = core.sendable()
    assert starts(requests) == [4, 8]  # window 2: step 8's chunk follows
    answer_all(core, requests)
    assert delivered_steps(core) == [8, 9, 10, 11]


def test_many_to_one_restore_resends_what_the_store_lacks():
    core = new_core(many=False)
    core.on_opened(opened(core, 0, durable_step=0))
    core.enqueue(X[:10])
    assert starts(core.sendable()) == [0, 4, 8]
    core.on_opened(opened(core, 10, durable_step=2))  # a reconnect acknowledges 0..9
    assert not core.pending and core.resend_log.steps == 8
    core.on_opened(opened(core, 2, durable_step=2))  # then a crash: restored at step 2
    requests = core.sendable()
    assert starts(requests) == [2, 4, 8]
    np.testing.assert_array_equal(np.reshape(requests[0].steps.x, (-1, 2)), X[2:4])


def test_a_restore_older_than_the_buffer_is_data_loss_naming_the_steps():
    core = new_core(resend_buffer_steps=6, session_id="S" * 16)
    core.on_opened(opened(core, 0, durable_step=0))
    core.enqueue(X)
    answer_all(core)
    assert core.resend_log.steps == 6
    with pytest.raises(rnnstream.DataLossError) as err:
        core.on_opened(opened(core, 3, durable_step=3))
    assert err.value.details == (
        f"steps 3..11 of session {'S' * 16} were lost: the server restored its state from "
        "step 3 and this client keeps only steps from 6 on (resend_buffer_steps=6); the "
        "session continues from step 3"
    )


def test_without_a_durable_step_nothing_is_kept_and_a_restore_is_data_loss():
    core = new_core()
    core.on_opened(opened(core, 0))
    core.enqueue(X)
    answer_all(core)
    assert core.resend_log.steps == 0
    with pytest.raises(rnnstream.DataLossError, match="reports no durable_step"):
        core.on_opened(opened(core, 4))


def test_a_restore_from_before_the_end_of_a_sequence_is_data_loss_until_it_is_durable():
    core = new_core()
    core.on_opened(opened(core, 0, durable_step=0))
    core.enqueue(X[:4])
    answer_all(core)
    core.end_request = pb.End(reset=True)
    assert kinds(core.sendable()) == ["end"]
    core.on_final(pb.Final(steps=4, y=[3.0], next_step=4))
    core.enqueue(X[4:8])
    answer_all(core)
    with pytest.raises(rnnstream.DataLossError, match="before the end of a sequence at step 4"):
        core.on_opened(opened(core, 2, durable_step=2))

    durable = new_core()
    durable.on_opened(opened(durable, 0, durable_step=0))
    durable.enqueue(X[:4])
    answer_all(durable)
    durable.end_request = pb.End(reset=True)
    durable.sendable()
    durable.on_final(pb.Final(steps=4, y=[3.0], next_step=4))
    durable.enqueue(X[4:8])
    durable.sendable()
    durable.on_outputs(outputs(4, 4, durable_step=6))  # the store is past the End
    assert not durable.resend_log.ends
    durable.on_opened(opened(durable, 6, durable_step=6))
    assert starts(durable.sendable()) == [6]


# -- retries at Open ----------------------------------------------------------------------


def test_resource_exhausted_is_retried_only_before_opened():
    shed = rnnstream.ResourceExhaustedError("too many pending requests")
    assert is_retryable(shed, at_open=True) and not is_retryable(shed)
    core = new_core()
    core.open_request()
    assert core.on_stream_error(shed, failures=0, max_retries=3) is False  # reconnect
    core.on_opened(opened(core, 0))
    core.enqueue(X)
    core.sendable()
    too_big = rnnstream.ResourceExhaustedError("message larger than --max-message-bytes")
    with pytest.raises(rnnstream.ResourceExhaustedError):
        core.on_stream_error(too_big, failures=0, max_retries=3)
    assert is_retryable(rnnstream.UnavailableError("gone"), at_open=True)
    assert not is_retryable(
        rnnstream.InvalidArgumentError("bad id", grpc.StatusCode.INVALID_ARGUMENT), at_open=True
    )


def test_backoff_is_full_jitter_within_the_exponential_bound():
    for attempt in range(1, 10):
        ceiling = min(0.1 * 2 ** (attempt - 1), MAX_BACKOFF_S)
        delays = [backoff_delay(0.1, attempt) for _ in range(500)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert min(delays) < ceiling / 4 and max(delays) > ceiling * 3 / 4  # spread out

"""The session protocol without I/O: step numbering, the resend buffer, acks and resume.

``SessionCore`` is shared by the blocking ``Session`` and the asyncio ``AsyncSession``;
they only move its messages over a gRPC stream. The rules it implements:

- Every step gets a session-wide index. Steps are cut into chunks of ``chunk_size``
  (one ``Steps`` message each) and kept in ``pending`` until acknowledged.
- Many-to-many: each ``Steps`` gets exactly one ``Outputs``, which acknowledges its
  chunk. Outputs reach the caller exactly once and in order.
- Many-to-one: no ``Outputs``; chunks are acknowledged by ``Final.next_step`` and, on
  resume, by ``Opened.next_step``.
- Ids: a new session gets an id made here and is opened with ``Open{session_id,
  create}``; once an Opened arrived, every later Open is a plain resume by id (a session
  that ended is not created again behind the caller's back).
- Resume: a new stream sends ``Open{session_id}``; from ``Opened.next_step`` the core
  works out what the server applied and resends the rest (many-to-many resends every
  unacknowledged chunk: the server does not re-apply steps below ``next_step`` and
  answers them from its replay cache).
- Restore after a crash: acknowledged chunks from the server's ``durable_step`` on stay
  in a :class:`ResendLog`. An ``Opened.next_step`` below the acknowledged steps resends
  them from there; the outputs of steps already delivered are not delivered again.
- An ``End`` lost in flight is resent only if the server did not act on it (the driver
  asks ``GetSession.sequence_steps``; see ``resolve_end``).
- A session goes through the :class:`Phase` values: new, open, and after a failed call
  resync (the next ``Opened`` says where it stands); once the caller closes it, closing
  and then half-closed while a stream has written its half-close.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable

import grpc
import numpy as np

from rnnstream import _codec
from rnnstream._resend import DEFAULT_RESEND_BUFFER_STEPS, Chunk, ResendLog
from rnnstream._session_id import check_session_id, new_session_id
from rnnstream.errors import (
    DataLossError,
    FailedPreconditionError,
    RnnstreamError,
    SessionEndedError,
    UnavailableError,
    is_retryable,
)
from rnnstream.info import ModelInfo
from rnnstream.v1 import rnnstream_pb2 as pb

#: What ``sendable`` yields for "half-close the request stream now".
HALF_CLOSE = None


class Phase(enum.Enum):
    """Where a client session stands in its life (``SessionCore.phase``)."""

    NEW = "new"  # no Opened yet
    OPEN = "open"  # opened; this client knows where the session stands
    RESYNC = "resync"  # a call failed: take where the session stands from the next Opened
    CLOSING = "closing"  # closed by the caller: half-close once everything is sent
    HALF_CLOSED = "half-closed"  # closing, and this stream has written its half-close


def _protocol_error(message: str) -> RnnstreamError:
    return RnnstreamError(f"unexpected answer from the server: {message}", grpc.StatusCode.INTERNAL)


END_OF_STREAM = object()  # queued by a stream's reader after the last response


def ended_unexpectedly() -> UnavailableError:
    """The error of a stream the server closed while answers were still due."""
    return UnavailableError("the server ended the stream unexpectedly", grpc.StatusCode.CANCELLED)


def unwrap(item: object) -> pb.StreamResponse | None:
    """A queued stream item as a response (None: the stream ended); a queued error is raised."""
    if item is END_OF_STREAM:
        return None
    if isinstance(item, RnnstreamError):
        raise item
    assert isinstance(item, pb.StreamResponse)
    return item


class SessionCore:
    """Bookkeeping of one client session (see the module docstring); no I/O."""

    def __init__(
        self,
        *,
        model: str,
        version: str,
        return_sequences: bool | None,
        return_state: bool,
        session_id: str | None,
        chunk_size: int,
        window: int,
        resend_buffer_steps: int = DEFAULT_RESEND_BUFFER_STEPS,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.requested_model = model
        self.requested_version = version
        self.requested_return_sequences = return_sequences
        self.return_state = return_state
        self.chunk_size = chunk_size
        self.window = window
        # A caller's id resumes that session; a new one is created under an id made here.
        self.create = session_id is None
        self.id = new_session_id() if session_id is None else check_session_id(session_id)
        self.awaiting_opened = False  # an Open is written on the current stream, no answer yet
        self.resend_log = ResendLog(resend_buffer_steps)
        self.info: ModelInfo | None = None
        self.return_sequences = True
        self.phase = Phase.NEW
        self.next_step = 0  # the index the next enqueued step gets
        self.delivered = 0  # many-to-many: outputs handed to the caller up to here
        self.pending: deque[Chunk] = deque()
        self.sent = 0  # chunks of `pending` written on the current stream
        self.inflight = 0  # many-to-many: Steps on the current stream not answered yet
        self.seq_steps: int | None = 0  # steps in the current sequence (None: unknown)
        self.end_request: pb.End | None = None  # End to send, until its Final arrives
        self.end_sent = False  # end_request is written on the current stream
        self.final: pb.Final | None = None  # the Final answering end_request
        self.last_y: np.ndarray | None = None  # [O] of the last step delivered
        self.state: np.ndarray | None = None  # [S] after the last step (return_state)
        self.collected_y: list[np.ndarray] = []
        self.collected_states: list[np.ndarray] = []
        self.ended: SessionEndedError | None = None

    @property
    def opened(self) -> bool:
        """Whether an Opened has arrived: the session exists and its model is known."""
        return self.info is not None

    @property
    def closing(self) -> bool:
        """Whether the caller closed the session (its calls are refused from now on)."""
        return self.phase in (Phase.CLOSING, Phase.HALF_CLOSED)

    # -- messages out ---------------------------------------------------------------------

    @property
    def model(self) -> ModelInfo:
        """The session's model (after the first Opened)."""
        if self.info is None:
            raise RuntimeError("the session is not open yet")
        return self.info

    def open_request(self) -> pb.StreamRequest:
        """The Open for a new stream: create the session under its id, or resume it."""
        open_ = pb.Open(
            model=self.requested_model,
            version=self.requested_version,
            session_id=self.id,
            return_state=self.return_state,
            create=self.create and not self.opened,
        )
        self.awaiting_opened = True
        if self.opened:
            open_.return_sequences = self.return_sequences  # keep the mode we run in
        elif self.requested_return_sequences is not None:
            open_.return_sequences = self.requested_return_sequences
        return pb.StreamRequest(open=open_)

    def enqueue(self, x: np.ndarray) -> None:
        """Number ``x [T, F]`` from ``next_step`` on and queue it in chunks."""
        if self.resend_log.durable_step is not None:
            x = x.copy()  # kept past this call to resend: the caller may reuse its array
        for i in range(0, len(x), self.chunk_size):
            chunk = Chunk(self.next_step, x[i : i + self.chunk_size])
            self.pending.append(chunk)
            self.next_step = chunk.end
        if self.seq_steps is not None:
            self.seq_steps += len(x)

    def sendable(self) -> list[pb.StreamRequest | None]:
        """Messages to write now: unsent chunks (within ``window``), then End or half-close."""
        out: list[pb.StreamRequest | None] = []
        many = self.return_sequences
        while self.sent < len(self.pending) and (not many or self.inflight < self.window):
            chunk = self.pending[self.sent]
            out.append(_codec.steps_request(chunk.start, chunk.x))
            self.sent += 1
            if many:
                self.inflight += 1
        if self.sent == len(self.pending):
            if self.end_request is not None and not self.end_sent:
                out.append(pb.StreamRequest(end=self.end_request))
                self.end_sent = True
            elif self.phase is Phase.CLOSING and self.end_request is None:
                out.append(HALF_CLOSE)
                self.phase = Phase.HALF_CLOSED
        return out

    # -- messages in ----------------------------------------------------------------------

    def on_opened(self, msg: pb.Opened) -> bool:
        """Take in the answer to Open; True when an End may have been lost in flight.

        On resume, chunks the server applied are dropped (many-to-one) or kept to be
        resent for their outputs (many-to-many), and everything is unsent again. A
        restore from before the acknowledged steps takes them back from the resend log.
        """
        self.awaiting_opened = False
        n = msg.next_step
        durable = msg.durable_step if msg.HasField("durable_step") else None
        if not self.opened or self.phase is Phase.RESYNC:
            self.id = msg.session_id
            self.info = ModelInfo.from_proto(msg.model)
            self.return_sequences = msg.return_sequences
            self.next_step = self.delivered = n
            self.pending.clear()
            self.resend_log.clear()
            self.resend_log.durable(durable)
            if self.phase is Phase.RESYNC:
                self.seq_steps = None
            if self.phase in (Phase.NEW, Phase.RESYNC):
                self.phase = Phase.OPEN
            self._reset_stream()
            return False
        acked = self.pending[0].start if self.pending else self.next_step
        if n > self.next_step:
            raise FailedPreconditionError(
                f"session {self.id} is at step {n}, but this client only sent steps up to "
                f"{self.next_step - 1}: another client streamed to it meanwhile; open it "
                "again by id to continue from where it stands"
            )
        # Raises DataLossError when a restore went back further than the log reaches.
        self.pending.extendleft(reversed(self.resend_log.take_back(n, acked, self.id)))
        self.resend_log.durable(durable)
        if not self.return_sequences:
            while self.pending and self.pending[0].end <= n:
                self.resend_log.acknowledged(self.pending.popleft())
            if self.pending and self.pending[0].start < n:
                first = self.pending[0]
                self.resend_log.acknowledged(first.before(n))
                self.pending[0] = first.since(n)
        self._reset_stream()
        uncertain = (
            self.end_sent
            and n == self.next_step
            and self.seq_steps is not None
            and self.seq_steps > 0
        )
        self.end_sent = False  # resend it, unless resolve_end finds it was acted on
        return uncertain

    def on_open_answer(self, response: pb.StreamResponse | None) -> bool:
        """Take the first answer on a new stream (None: it closed) as the answer to Open.

        True if an End that may have been lost must be resolved (ask ``GetSession``, then
        call ``resolve_end``).
        """
        if response is None:
            raise UnavailableError("the server closed the stream before answering Open")
        kind = response.WhichOneof("kind")
        if kind == "ended":
            raise self.on_ended(response.ended)
        if kind != "opened":
            raise RnnstreamError(f"expected Opened, got {kind}", grpc.StatusCode.INTERNAL)
        return self.on_opened(response.opened)

    def take_ready(self, poll: Callable[[], object]) -> None:
        """Process answers that already arrived, so that errors surface now.

        ``poll`` returns an arrived response, ``END_OF_STREAM``, or None when none is there.
        """
        while (response := poll()) is not None:
            if response is END_OF_STREAM:
                raise ended_unexpectedly()
            assert isinstance(response, pb.StreamResponse)
            self.on_response(response)

    def on_stream_error(self, error: RnnstreamError, failures: int, max_retries: int) -> bool:
        """The stream failed with ``error`` after ``failures`` reconnects in a row.

        True: stop quietly (closing, nothing left to flush; the session stays resumable).
        False: reconnect after a backoff. Raises ``error`` when it must not be retried.
        """
        if self.closing and not self.pending:
            return True
        if not is_retryable(error, at_open=self.awaiting_opened) or failures >= max_retries:
            self.after_error(error)
            raise error
        return False

    def resolve_end(self, server_sequence_steps: int) -> None:
        """After a resume with an End in flight, find out whether the server acted on it."""
        if self.end_request is None or server_sequence_steps == self.seq_steps:
            return  # not acted on: it is sent again
        if server_sequence_steps != 0:
            raise _protocol_error(
                f"session {self.id} has {server_sequence_steps} steps in its current sequence, "
                f"this client counted {self.seq_steps}"
            )
        if self.return_sequences and self.last_y is not None:
            # The server ended the sequence but its Final was lost; many-to-many already
            # delivered the last y (and state), which is what Final carries.
            state = self.state if self.return_state and self.state is not None else None
            self.on_final(
                pb.Final(
                    steps=self.seq_steps or 0,
                    y=self.last_y.tolist(),
                    state=[] if state is None else state.tolist(),
                    next_step=self.next_step,
                )
            )
            return
        self.end_request = None
        self.seq_steps = 0
        self.pending.clear()
        raise DataLossError(
            f"the server ended the sequence of session {self.id} (End), but its Final was "
            "lost with the connection; the session continues from its next step"
        )

    def on_response(self, msg: pb.StreamResponse) -> None:
        """Take in one message of the stream after Opened."""
        kind = msg.WhichOneof("kind")
        if kind == "outputs":
            self.on_outputs(msg.outputs)
        elif kind == "final":
            self.on_final(msg.final)
        elif kind == "ended":
            raise self.on_ended(msg.ended)
        else:
            raise _protocol_error(f"{kind or 'an empty message'} in the middle of a stream")

    def on_outputs(self, msg: pb.Outputs) -> None:
        """The Outputs of the oldest chunk in flight: deliver its new rows, acknowledge it."""
        if not self.return_sequences or not self.pending or self.inflight == 0:
            raise _protocol_error(f"Outputs at step {msg.start} with no Steps waiting for them")
        model = self.model
        chunk = self.pending[0]
        try:
            y = _codec.rows(msg.y, model.n_outputs)  # [n, O]
            states = (
                _codec.rows(msg.state, model.state_size)  # [n, S]
                if self.return_state and len(msg.state)
                else None
            )
        except ValueError as exc:  # a malformed answer is the server's fault, not the caller's
            raise _protocol_error(str(exc)) from exc
        if msg.start + len(y) != chunk.end or msg.start < chunk.start:
            raise _protocol_error(
                f"Outputs for steps {msg.start}..{msg.start + len(y) - 1}, expected "
                f"{chunk.start}..{chunk.end - 1}"
            )
        if msg.start > chunk.start:
            # Applied before the drop, and no longer in the server's replay cache.
            self._lose_sync()
            raise DataLossError(
                f"the outputs of steps {chunk.start}..{msg.start - 1} of session {self.id} were "
                "lost with the connection and the server no longer caches them: keep "
                "chunk_size * window at or below the server's --replay-steps; the session "
                f"continues from step {chunk.end}"
            )
        if msg.HasField("durable_step"):
            self.resend_log.durable(msg.durable_step)
        self.resend_log.acknowledged(self.pending.popleft())
        self.sent -= 1
        self.inflight -= 1
        if chunk.end <= self.delivered:
            return  # resent after a restore: its outputs were delivered before the crash
        if states is not None:
            self.collected_states.append(states)
            self.state = states[-1]
        self.collected_y.append(y)
        self.last_y = y[-1]
        self.delivered = chunk.end

    def on_final(self, msg: pb.Final) -> None:
        """The end of a sequence: everything before ``next_step`` is acknowledged."""
        if self.end_request is None and not self.closing:
            raise _protocol_error("Final without an End")
        if msg.next_step != self.next_step:
            raise _protocol_error(
                f"Final says the session is at step {msg.next_step}, this client sent steps up "
                f"to {self.next_step - 1}"
            )
        if msg.HasField("durable_step"):
            self.resend_log.durable(msg.durable_step)
        while self.pending:
            self.resend_log.acknowledged(self.pending.popleft())
        self.resend_log.sequence_ended(msg.next_step)
        self.sent = self.inflight = 0
        self.delivered = msg.next_step
        if len(msg.state):
            self.state = np.asarray(msg.state, dtype=np.float32)
        self.final = msg
        self.end_request = None
        self.end_sent = False
        self.seq_steps = 0
        self.last_y = None

    def on_ended(self, msg: pb.SessionEnded) -> SessionEndedError:
        """The server ended this stream; remember it unless it may be resumed elsewhere."""
        reason = pb.EndReason.Name(msg.reason).removeprefix("END_REASON_")
        error = SessionEndedError(msg.message or reason.lower(), reason=reason)
        if reason != "DRAINING":
            self.ended = error
        return error

    # -- driver helpers -------------------------------------------------------------------

    def close(self) -> None:
        """The caller closed the session: half-close once everything is sent."""
        if not self.closing:
            self.phase = Phase.CLOSING

    def begin_call(self) -> None:
        """Before a step/steps/end call: refuse if the session can no longer be used."""
        if self.ended is not None:
            raise self.ended
        if self.closing:
            raise RuntimeError(f"session {self.id} is closed: open it again by id to continue")
        self.collected_y.clear()
        self.collected_states.clear()
        self.final = None

    def after_error(self, error: RnnstreamError) -> None:
        """A call failed for good: forget what was in flight; the next call resyncs."""
        if isinstance(error, SessionEndedError) and error.reason != "DRAINING":
            self.ended = error
        self.pending.clear()
        self.end_request = None
        self.end_sent = False
        self._lose_sync()
        self._reset_stream()

    def drained(self) -> bool:
        """Every step sent, and (many-to-many) every output delivered."""
        if self.return_sequences:
            return not self.pending
        return self.sent == len(self.pending)

    def take_outputs(self, n_steps: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The ``n_steps`` outputs (and states) delivered during the current call."""
        model = self.model
        if not self.return_sequences:
            empty = np.empty((0, model.n_outputs), dtype=np.float32)
            return empty, None
        y = np.concatenate(self.collected_y) if self.collected_y else np.empty((0, model.n_outputs))
        if len(y) != n_steps:
            raise _protocol_error(f"{len(y)} outputs for {n_steps} steps")
        states = np.concatenate(self.collected_states) if self.collected_states else None
        return y.astype(np.float32, copy=False), states

    def final_y(self) -> np.ndarray:
        """Final's ``y [O]`` (empty when the sequence had no steps)."""
        assert self.final is not None
        return np.asarray(self.final.y, dtype=np.float32)

    def _lose_sync(self) -> None:
        """Where the session stands is unknown until the next Opened (unless it is closed)."""
        if not self.closing:
            self.phase = Phase.RESYNC

    def _reset_stream(self) -> None:
        """A new stream: nothing is written on it yet."""
        self.sent = 0
        self.inflight = 0
        if self.phase is Phase.HALF_CLOSED:
            self.phase = Phase.CLOSING


class SessionView:
    """What a session shows its caller; the sync and async sessions share it over ``_core``."""

    _core: SessionCore

    @property
    def id(self) -> str:
        """The session's id (a new one's is made here): resume with ``session(session_id=...)``."""
        return self._core.id

    @property
    def model(self) -> ModelInfo:
        """The model this session runs."""
        return self._core.model

    @property
    def next_step(self) -> int:
        """The session-wide index of the next step sent."""
        return self._core.next_step

    @property
    def return_sequences(self) -> bool:
        """True: many-to-many (y every step); False: many-to-one (y at ``end``)."""
        return self._core.return_sequences

    @property
    def return_state(self) -> bool:
        """Whether the server returns the recurrent state (see ``state`` and ``states``)."""
        return self._core.return_state

    @property
    def state(self) -> np.ndarray | None:
        """``[state_size]`` after the last step or end (only with ``return_state``)."""
        return self._core.state

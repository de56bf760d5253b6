"""What a session keeps to resend after a server crash: acknowledged inputs not yet durable.

A server with a session store reports ``durable_step``: the step the store holds the
session's state at. Were that server to die, the session comes back elsewhere at
``Opened.next_step == durable_step`` (or later), possibly below steps the client had
already seen acknowledged. :class:`ResendLog` keeps the acknowledged inputs from
``durable_step`` on, at most ``resend_buffer_steps`` of them, so that they can be sent
again, and where sequences ended among them. Ends are not replayed: a restore from before
the end of a sequence is data loss, as is a restore from before the oldest step kept.
Without a ``durable_step`` from the server nothing is kept.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from rnnstream.errors import DataLossError

DEFAULT_RESEND_BUFFER_STEPS = 65_536


@dataclass
class Chunk:
    """Steps ``start..start+len(x)-1`` of the session: ``x [n, F]``."""

    start: int
    x: np.ndarray

    @property
    def end(self) -> int:
        """One past the last step."""
        return self.start + len(self.x)

    def since(self, step: int) -> Chunk:
        """The part of this chunk from ``step`` on (``step`` within the chunk)."""
        return self if step <= self.start else Chunk(step, self.x[step - self.start :])

    def before(self, step: int) -> Chunk:
        """The part of this chunk below ``step`` (``step`` within the chunk)."""
        return self if step >= self.end else Chunk(self.start, self.x[: step - self.start])


class ResendLog:
    """Acknowledged chunks from ``durable_step`` on, and the steps where sequences ended."""

    def __init__(self, limit: int = DEFAULT_RESEND_BUFFER_STEPS) -> None:
        if limit < 0:
            raise ValueError(f"resend_buffer_steps must be 0 or more, got {limit}")
        self.limit = limit
        self.durable_step: int | None = None  # None: the server reported none
        self.chunks: deque[Chunk] = deque()  # contiguous, oldest first
        self.ends: deque[int] = deque()  # session steps at which a sequence ended

    @property
    def steps(self) -> int:
        """How many steps are kept."""
        return sum(len(chunk.x) for chunk in self.chunks)

    def durable(self, step: int | None) -> None:
        """The server says its store holds the state at ``step`` (None: it said nothing)."""
        if step is None:
            return
        self.durable_step = step
        self._forget_before(step)

    def acknowledged(self, chunk: Chunk) -> None:
        """The server acknowledged ``chunk``: keep what of it is not durable yet."""
        if self.durable_step is None or chunk.end <= self.durable_step:
            return
        self.chunks.append(chunk.since(self.durable_step))
        excess = self.steps - self.limit
        if excess > 0:
            self._forget_before(self.chunks[0].start + excess)

    def sequence_ended(self, step: int) -> None:
        """A sequence ended at ``step`` (its Final arrived)."""
        if self.durable_step is not None:
            self.ends.append(step)

    def take_back(self, restored: int, acknowledged: int, session_id: str) -> list[Chunk]:
        """The chunks to resend after a restore at step ``restored`` (none if not below).

        ``acknowledged``: the steps below it were acknowledged before. Raises DataLossError
        when they are not all kept, or a sequence ended among them.
        """
        if restored >= acknowledged:
            return []
        lost = (
            f"steps {restored}..{acknowledged - 1} of session {session_id} were lost: the "
            f"server restored its state from step {restored}"
        )
        carry_on = f"; the session continues from step {restored}"
        if self.durable_step is None:
            raise DataLossError(
                f"{lost}, and this client kept no acknowledged steps to resend because the "
                f"server reports no durable_step (it keeps no session store){carry_on}"
            )
        first = self.chunks[0].start if self.chunks else acknowledged
        if restored < first:
            raise DataLossError(
                f"{lost} and this client keeps only steps from {first} on "
                f"(resend_buffer_steps={self.limit}){carry_on}"
            )
        ended = [step for step in self.ends if step >= restored]
        if ended:
            raise DataLossError(
                f"{lost}, before the end of a sequence at step {ended[0]}, which this client "
                f"does not replay{carry_on}"
            )
        resend = [chunk.since(restored) for chunk in self.chunks if chunk.end > restored]
        self.chunks = deque(
            chunk.before(restored) for chunk in self.chunks if chunk.start < restored
        )
        return resend

    def clear(self) -> None:
        """Forget everything kept (where the session stands is unknown)."""
        self.chunks.clear()
        self.ends.clear()

    def _forget_before(self, step: int) -> None:
        while self.chunks and self.chunks[0].end <= step:
            self.chunks.popleft()
        if self.chunks:
            self.chunks[0] = self.chunks[0].since(step)
        while self.ends and self.ends[0] < step:
            self.ends.popleft()

"""The live stream a session is attached to, as the session manager sees it: a handle to end it."""

from __future__ import annotations

import asyncio

from rnnstream.server.end_reasons import END_MESSAGES, EndReason


class StreamHandle:
    """The live stream a session is attached to; ``end`` stops it with a reason.

    The servicer creates one per stream around its own task; ending it cancels that task,
    which then tells its client why and returns. While the servicer is writing a reply
    (``writing``) the task is not cancelled: a write cut short leaves grpc's send in
    flight, and the reply saying why the stream ended could not be sent after it. The
    servicer looks at ``reason`` once the write is done instead; a stream still not done
    ``write_grace_s`` (--write-grace-s) later (a client that stopped reading) is cut off:
    cancelled after all, with nothing more written.
    """

    __slots__ = ("cut_off", "message", "reason", "task", "timer", "write_grace_s", "writing")

    def __init__(self, task: asyncio.Task[object] | None, write_grace_s: float = 5.0) -> None:
        self.task = task
        self.write_grace_s = write_grace_s
        self.reason: EndReason | None = None
        self.message = ""
        self.writing = False
        self.cut_off = False
        self.timer: asyncio.TimerHandle | None = None

    def end(self, reason: EndReason, message: str | None = None) -> None:
        """Stop the stream (once) because its session ended or moved.

        ``message`` is what the client is told (default: the reason's ``END_MESSAGES``).
        """
        if self.reason is None:
            self.reason = reason
            self.message = END_MESSAGES[reason] if message is None else message
            if self.task is None:
                return
            if self.writing:
                self.timer = self.task.get_loop().call_later(self.write_grace_s, self._cut_off)
            else:
                self.task.cancel()

    def write_done(self) -> None:
        """The write in flight when the stream was ended finished in time."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _cut_off(self) -> None:
        """The stream did not finish its write in time: cancel it (see the servicer)."""
        self.timer = None
        if self.task is not None and not self.task.done():
            self.cut_off = True
            self.task.cancel()

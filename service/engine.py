"""Continuous batching over one model's step graph, on a thread of its own.

Every request is ``k`` sequences of ``T`` steps each: a session's Steps message is one
sequence backed by its row of the state table; a Predict call is many sequences with
private state. The engine thread takes everything queued, runs one time step for every
active request in one ``run()`` (at most one step per sequence per batch, at most
``max_batch`` sequences), scatters the new state back, and goes round again; requests
that arrive meanwhile join at the next step (iteration-level scheduling). There is no
timer: at low load a step runs at once, at high load batches grow by themselves.

A message of many steps for one session (a chunk) runs through the model's sequence graph
when it has one: one call for all T steps (equal-length chunks of several sessions share
it), instead of T calls of the step graph.

The asyncio side only submits and awaits futures, so the event loop keeps doing I/O while
onnxruntime computes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rnnstream.server.graph import StepGraph
from rnnstream.server.state_table import StateTable

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    """Outputs of a request: ``y [k, T, O]``, and ``states [k, T, S]`` when asked for."""

    y: np.ndarray
    states: np.ndarray | None


@dataclass(eq=False)
class _Request:
    """A queued or running request; ``t`` is how many of its T steps have run."""

    x: np.ndarray  # [k, T, F]
    rows: np.ndarray | None  # [k] rows of the state table, or None: private ``state``
    state: np.ndarray | None  # [k, S] private state when rows is None
    future: asyncio.Future[StepResult]
    y: np.ndarray  # [k, T, O]
    states: np.ndarray | None  # [k, T, S] when the caller wants every state
    k: int  # number of sequences
    steps: int  # number of time steps T
    t: int = 0
    error: BaseException | None = field(default=None)


class EngineClosed(RuntimeError):
    """The engine was closed; no more requests are taken."""


class Engine:
    """Owns one model's onnxruntime session and state table; batches steps across sessions.

    Example (inside a coroutine)::

        engine = Engine(graph, table, max_batch=512)
        row = table.allocate()
        result = await engine.submit(x[None], rows=np.array([row]))  # x: [T, F]
        result.y[0]   # [T, O]
    """

    def __init__(
        self,
        graph: StepGraph,
        table: StateTable,
        max_batch: int,
        name: str,
        sequence: StepGraph | None = None,
        inline_max_steps: int = 0,
    ) -> None:
        self.graph = graph
        self.sequence = sequence
        self.inline_max_steps = inline_max_steps
        self.table = table
        self.max_batch = max_batch
        self.name = name
        self.batches = 0
        self.sequence_steps = 0
        # Called with each batch's size (metrics), from the engine thread or the event loop.
        self.on_batch: Callable[[int], None] | None = None
        self._pending: list[_Request] = []
        self._inline: list[_Request] = []
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name=f"engine-{name}", daemon=True)
        self._thread.start()

    def submit(
        self,
        x: np.ndarray,
        rows: np.ndarray | None = None,
        state: np.ndarray | None = None,
        want_states: bool = False,
    ) -> asyncio.Future[StepResult]:
        """Queue ``x [k, T, F]`` for table ``rows [k]`` or private ``state [k, S]``.

        Returns a future on the running loop; the table rows are updated as each step
        runs, and the future resolves once all T steps have run. A request of at most
        ``inline_max_steps`` session-steps runs on the event loop itself, at the end of the
        loop's current iteration, together with every other small request submitted in it:
        for small work, handing over to the engine thread and back costs more than the
        compute. (``try_run_now`` runs a lone one at once.) Larger requests go to the
        engine thread, so I/O goes on meanwhile.
        """
        if self._closing:
            raise EngineClosed(f"engine of {self.name} is closed")
        k, steps = x.shape[0], x.shape[1]
        if (rows is None) == (state is None):
            raise ValueError("pass exactly one of rows and state")
        loop = asyncio.get_running_loop()
        request = _Request(
            x=x,
            rows=rows,
            state=None if state is None else np.array(state, dtype=np.float32),
            future=loop.create_future(),
            y=np.empty((k, steps, self.graph.n_outputs), dtype=np.float32),
            states=(
                np.empty((k, steps, self.graph.state_size), dtype=np.float32)
                if want_states
                else None
            ),
            k=k,
            steps=steps,
        )
        if k * steps <= self.inline_max_steps:
            if not self._inline:
                loop.call_soon(self._run_inline)
            self._inline.append(request)
            return request.future
        with self._cond:
            self._pending.append(request)
            self._cond.notify()
        return request.future

    def try_run_now(self, x: np.ndarray, row: int, want_states: bool) -> StepResult | None:
        """Run ``x [T, F]`` for table ``row`` at once, on the calling thread; None if it may not.

        The lean path for the common case of one session's small message arriving alone:
        it runs when ``T <= inline_max_steps`` and nothing else is queued in the event
        loop's current iteration (so there is nothing to batch with), without a request
        object, a future or a hand-over. Otherwise it returns None and the caller submits.
        The row is written once, after every step succeeded: an error leaves it as it was
        (and is raised). Returns ``y [T, O]`` and, with ``want_states``, ``states [T, S]``.
        """
        steps = x.shape[0]
        if not 0 < steps <= self.inline_max_steps or self._inline or self._closing:
            return None
        if _has_ready_work(asyncio.get_running_loop()):
            return None
        state = self.table.rows[row : row + 1]  # [1, S], a view: run() reads it first
        states: np.ndarray | None = None
        calls = 1
        if steps == 1:
            y, state = self.graph.run(x, state)  # [1, O], [1, S]
            if want_states:
                states = state
        elif self.sequence is not None and not want_states:
            y, state = self.sequence.run(x[None], state)
            y = y[0]  # [T, O]
        else:
            y = np.empty((steps, self.graph.n_outputs), dtype=np.float32)
            if want_states:
                states = np.empty((steps, self.graph.state_size), dtype=np.float32)
            for t in range(steps):
                y[t : t + 1], state = self.graph.run(x[t : t + 1], state)
                if states is not None:
                    states[t] = state[0]
            calls = steps
        self.batches += calls
        self.sequence_steps += steps
        if self.on_batch is not None:
            for _ in range(calls):
                self.on_batch(1)
        self.table.rows[row] = state[0]  # last: nothing after it can fail
        return StepResult(y=y, states=states)

    def close(self, timeout: float | None = None) -> None:
        """Finish what is queued, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    def _loop(self) -> None:
        """The engine thread: take queued requests, run batches, resolve futures."""
        active: list[_Request] = []
        while True:
            with self._cond:
                while not self._pending and not active and not self._closing:
                    self._cond.wait()
                if self._pending:
                    active.extend(self._pending)
                    self._pending.clear()
                elif not active:
                    return  # closing and drained
            active = self._advance_safely(active, self._resolve)

    def _run_inline(self) -> None:
        """On the event loop: run the small requests submitted during this iteration."""
        active, self._inline = self._inline, []
        while active:
            active = self._advance_safely(active, _set_results)

    def _advance_safely(
        self, active: list[_Request], resolve: Callable[[list[_Request]], None]
    ) -> list[_Request]:
        """``_advance``, but an unexpected error fails the requests at hand, not the engine.

        Without this, one exception outside ``run()`` (a metrics hook, a scatter) would end
        the engine thread silently and every later step would wait forever.
        """
        try:
            return self._advance(active, resolve)
        except Exception as exc:
            log.exception("%s: engine error; failing %d requests", self.name, len(active))
            for request in active:
                request.error = request.error or exc
            with contextlib.suppress(Exception):
                resolve(active)
            return []

    def _advance(
        self, active: list[_Request], resolve: Callable[[list[_Request]], None]
    ) -> list[_Request]:
        """Run fresh chunks whole, then one time step of a batch; return what is left."""
        if self.sequence is not None:
            active = self._run_chunks(active, resolve)
            if not active:
                return active
        batch, waiting = self._take_batch(active)
        self._run(batch)
        finished = [r for r in batch if r.t == r.steps or r.error is not None]
        if finished:
            resolve(finished)
        # Requests left out of this batch go first next time, so none starves.
        return waiting + [r for r in batch if r.t < r.steps and r.error is None]

    def _run_chunks(
        self, active: list[_Request], resolve: Callable[[list[_Request]], None]
    ) -> list[_Request]:
        """Run every fresh multi-step request through the sequence graph; return the rest.

        Requests of equal length share calls (up to ``max_batch`` sequences each); a
        request that wants every intermediate state, or one already under way, stays on
        the step graph.
        """
        by_length: dict[int, list[_Request]] = {}
        rest: list[_Request] = []
        for request in active:
            if request.t == 0 and request.steps > 1 and request.states is None:
                by_length.setdefault(request.steps, []).append(request)
            else:
                rest.append(request)
        for group in by_length.values():
            while group:
                batch, group = self._take_batch(group)
                self._run(batch, chunked=True)
                resolve(batch)
        return rest

    def _take_batch(self, active: list[_Request]) -> tuple[list[_Request], list[_Request]]:
        """Split active requests into this step's batch (<= max_batch sequences) and the rest."""
        batch: list[_Request] = []
        size = 0
        for i, request in enumerate(active):
            if batch and size + request.k > self.max_batch:
                return batch, active[i:]
            batch.append(request)
            size += request.k
        return batch, []

    def _run(self, batch: list[_Request], chunked: bool = False) -> None:
        """One time step (``chunked``: all T steps) for every request: gather, run, scatter."""
        table = self.table.rows
        rows: np.ndarray | None = None  # every request's rows, when all are sessions'
        if len(batch) == 1:
            request = batch[0]
            x = request.x if chunked else request.x[:, request.t]  # [k, T, F] or [k, F]
            state = self._state_of(request, table)
        else:
            x = np.concatenate([r.x if chunked else r.x[:, r.t] for r in batch])
            if all(r.rows is not None for r in batch):  # one gather, not one per request
                rows = np.concatenate([r.rows for r in batch])
                state = table[rows]  # [sum k, S]
            else:
                state = np.concatenate([self._state_of(r, table) for r in batch])
        graph = self.sequence if chunked and self.sequence is not None else self.graph
        try:
            y, state_out = graph.run(x, state)
        except Exception as exc:  # this step scattered nothing; earlier steps are undone by
            # the session's bookkeeping, which restores the row it saved before the request
            log.exception("%s: onnxruntime run failed for a batch of %d", self.name, len(x))
            for request in batch:
                request.error = exc
            return
        steps = x.shape[1] if chunked else 1
        self.batches += 1
        self.sequence_steps += len(x) * steps
        if self.on_batch is not None:
            self.on_batch(len(x))
        if rows is not None:
            table[rows] = state_out  # a session has one request in flight: rows are distinct
        offset = 0
        for request in batch:
            part = slice(offset, offset + request.k)
            offset += request.k
            if request.rows is None:
                request.state = state_out[part]
            elif rows is None:
                table[request.rows] = state_out[part]
            if chunked:
                request.y = y[part]  # [k, T, O]
                request.t = steps
                continue
            request.y[:, request.t] = y[part]
            if request.states is not None:
                request.states[:, request.t] = state_out[part]
            request.t += 1

    @staticmethod
    def _state_of(request: _Request, table: np.ndarray) -> np.ndarray:
        """The request's current state ``[k, S]``: its table rows or its private state."""
        if request.rows is not None:
            return table[request.rows]
        assert request.state is not None
        return request.state

    def _resolve(self, finished: list[_Request]) -> None:
        """Hand finished requests back to their event loop (one wake-up per loop)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Request]] = {}
        for request in finished:
            by_loop.setdefault(request.future.get_loop(), []).append(request)
        for loop, requests in by_loop.items():
            # A closed loop raises RuntimeError: nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_set_results, requests)


def _has_ready_work(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether other callbacks are queued to run in this loop iteration (unknown: True).

    Other streams' messages arriving together show up here; then a small request waits
    for the end of the iteration to share a batch with theirs.
    """
    ready = getattr(loop, "_ready", None)  # asyncio's own loops; others: always batch
    return ready is None or len(ready) > 0


def _set_results(requests: list[_Request]) -> None:
    """Resolve futures on their loop; a future cancelled by its waiter is skipped."""
    for request in requests:
        if request.future.done():
            continue
        if request.error is not None:
            request.future.set_exception(request.error)
        else:
            request.future.set_result(StepResult(y=request.y, states=request.states))

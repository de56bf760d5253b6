"""Continuous batching over one model's step graph: one step loop, on the event loop or a thread.

Every request is ``k`` sequences of ``T`` steps each: a session's Steps message is one
sequence backed by its row of the state table; a Predict call is many sequences with
private state. The step loop takes the active requests, runs one time step for each in one
``run()`` (at most one step per sequence per batch, at most ``max_batch`` sequences),
carries each request's new state, and goes round again; requests that arrive meanwhile
join at the next step (iteration-level scheduling). There is no timer: at low load a step
runs at once, at high load batches grow by themselves.

The engine is the only writer of the state table while a request runs. A session request
works on its own state: its rows are gathered from the table when its first step runs (one
gather for the fresh requests of a batch), carried by the request from step to step, and
scattered back once, on the event loop, when every step succeeded. Until then the table
holds the state from before the request, consistent with the session's step count; a
request that fails leaves its rows exactly as they were.

A message of many steps for one session (a chunk) runs through the model's sequence graph
when it has one: one call for all T steps (equal-length chunks of several sessions share
it), instead of T calls of the step graph.

Small requests run on the event loop itself (handing over to a thread costs more than
their compute); larger ones on the engine thread, so the event loop keeps doing I/O while
onnxruntime computes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rnnstream.server.graph import StepGraph
from rnnstream.server.state_table import StateTable

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    """Outputs of a request: ``y [k, T, O]``, and ``states [k, T, S]`` when asked for."""

    y: np.ndarray
    states: np.ndarray | None


# Called on the event loop when a request ends: with its result after its rows were written
# back, or with None when it failed (its rows untouched).
OnDone = Callable[[StepResult | None], None]


@dataclass(eq=False, slots=True)
class _Request:
    """A queued or running request; ``t`` is how many of its T steps have run."""

    x: np.ndarray  # [k, T, F]
    rows: np.ndarray | None  # [k] rows of the state table, or None: private state only
    # [k, S] the request's working state: private from the start, or gathered from ``rows``
    # when its first step runs (None until then) and written back to them at the end.
    state: np.ndarray | None
    y: np.ndarray  # [k, T, O]
    states: np.ndarray | None  # [k, T, S] when the caller wants every state
    k: int  # number of sequences
    steps: int  # number of time steps T
    on_done: OnDone | None
    future: asyncio.Future[StepResult] | None = None  # None: run at once, nobody waits
    t: int = 0
    error: BaseException | None = None

    def working_state(self, table: np.ndarray) -> np.ndarray:
        """``[k, S]``: the state the next step starts from (the table rows, before the first).

        Gathered with ``take``: a copy, like a fancy index, but several times cheaper.
        """
        if self.state is not None:
            return self.state
        assert self.rows is not None
        return table.take(self.rows, 0)


class EngineClosed(RuntimeError):
    """The engine was closed; no more requests are taken."""


class Engine:
    """Owns one model's onnxruntime session and state table; batches steps across sessions.

    Example (inside a coroutine)::

        engine = Engine(graph, table, max_batch=512, name="seattle-temp/1")
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
        self.steps_run = 0  # session-steps computed (one sequence, one time step)
        # Called with each batch's size (metrics), from the engine thread or the event loop.
        self.on_batch: Callable[[int], None] | None = None
        self._pending: list[_Request] = []
        self._cond = threading.Condition()
        self._closing = False
        # Small requests of the event loop's current iteration: how many came, the ones
        # queued to run together at its end, and whether the last iteration had several.
        self._inline_count = 0
        self._inline: list[_Request] = []
        self._inline_busy = False
        self._thread = threading.Thread(target=self._loop, name=f"engine-{name}", daemon=True)
        self._thread.start()

    def submit(
        self,
        x: np.ndarray,
        rows: np.ndarray | None = None,
        state: np.ndarray | None = None,
        want_states: bool = False,
        on_done: OnDone | None = None,
    ) -> StepResult | asyncio.Future[StepResult]:
        """Run ``x [k, T, F]`` for table ``rows [k]`` or from private ``state [k, S]``.

        The table rows are written once, when all T steps succeeded; ``on_done`` is called
        on the event loop right after that write (with the result) or when the request
        failed (with None), before the future resolves: bookkeeping that must move
        together with the rows goes there.

        Returns a future, or the result itself when the request ran at once (an error is
        then raised). A request of more than ``inline_max_steps`` session-steps goes to the
        engine thread, so I/O goes on meanwhile. Smaller ones run on the event loop, where
        a hand-over would cost more than the compute: the first of a loop iteration runs
        at once, and the others submitted in that iteration share batches at its end. After
        an iteration that had several, the first waits for the end too: under load every
        small request shares a batch.
        """
        if self._closing:
            raise EngineClosed(f"engine of {self.name} is closed")
        if (rows is None) == (state is None):
            raise ValueError("pass exactly one of rows and state")
        k, steps = x.shape[0], x.shape[1]
        request = _Request(
            x=x,
            rows=rows,
            state=None if state is None else np.array(state, dtype=np.float32),
            y=np.empty((k, steps, self.graph.n_outputs), dtype=np.float32),
            states=(
                np.empty((k, steps, self.graph.state_size), dtype=np.float32)
                if want_states
                else None
            ),
            k=k,
            steps=steps,
            on_done=on_done,
        )
        loop = asyncio.get_running_loop()
        if k * steps > self.inline_max_steps:
            future = request.future = loop.create_future()
            with self._cond:
                self._pending.append(request)
                self._cond.notify()
            return future
        self._inline_count += 1
        if self._inline_count == 1:
            loop.call_soon(self._end_iteration)
            if not self._inline_busy:
                self._run_on_loop([request])
                if request.error is not None:
                    raise request.error
                return StepResult(y=request.y, states=request.states)
        future = request.future = loop.create_future()
        self._inline.append(request)
        return future

    def close(self, timeout: float | None = None) -> None:
        """Finish what is queued, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    def _end_iteration(self) -> None:
        """At the end of a loop iteration: run the small requests queued during it, together."""
        queued, self._inline = self._inline, []
        self._inline_busy = self._inline_count > 1
        self._inline_count = 0
        self._run_on_loop(queued)

    def _run_on_loop(self, active: list[_Request]) -> None:
        """Run requests to their end on the event loop, completing each as it finishes."""
        while active:
            active = self._advance_safely(active, self._complete)

    def _loop(self) -> None:
        """The engine thread: take queued requests, run batches, hand results back."""
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
            active = self._advance_safely(active, self._hand_back)

    def _advance_safely(
        self, active: list[_Request], complete: Callable[[list[_Request]], None]
    ) -> list[_Request]:
        """``_advance``, but an unexpected error fails the requests at hand, not the engine.

        Without this, one exception outside ``run()`` (a metrics hook) would end the engine
        thread silently and every later step would wait forever.
        """
        try:
            return self._advance(active, complete)
        except Exception as exc:
            log.exception("%s: engine error; failing %d requests", self.name, len(active))
            for request in active:
                request.error = request.error or exc
            with contextlib.suppress(Exception):
                complete(active)
            return []

    def _advance(
        self, active: list[_Request], complete: Callable[[list[_Request]], None]
    ) -> list[_Request]:
        """Run fresh chunks whole, then one time step of a batch; complete what finished.

        Returns the requests still running. ``complete`` is called once, last, so an error
        before it leaves every request at hand unfinished (and fails them all).
        """
        finished: list[_Request] = []
        if self.sequence is not None:
            active = self._run_chunks(active, finished)
        if active:
            batch, waiting = self._take_batch(active)
            self._run(batch)
            running: list[_Request] = []
            for request in batch:
                ended = request.t == request.steps or request.error is not None
                (finished if ended else running).append(request)
            # Requests left out of this batch go first next time, so none starves.
            active = waiting + running
        if finished:
            complete(finished)
        return active

    def _run_chunks(self, active: list[_Request], finished: list[_Request]) -> list[_Request]:
        """Run every fresh multi-step request through the sequence graph; return the rest.

        Requests of equal length share calls (up to ``max_batch`` sequences each); a
        request that wants every intermediate state, or one already under way, stays on
        the step graph. The requests run here are added to ``finished``.
        """
        fresh = [r for r in active if r.t == 0 and r.steps > 1 and r.states is None]
        if not fresh:  # (the common case: single steps, or chunks already run)
            return active
        by_length: dict[int, list[_Request]] = {}
        for request in fresh:
            by_length.setdefault(request.steps, []).append(request)
        for group in by_length.values():
            while group:
                batch, group = self._take_batch(group)
                self._run(batch, chunked=True)
                finished.extend(batch)
        ran = {id(r) for r in fresh}
        return [r for r in active if id(r) not in ran]

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
        """One time step (``chunked``: all T steps) for every request: gather, run, carry."""
        table = self.table.rows
        if len(batch) == 1:
            request = batch[0]
            x = request.x if chunked else request.x[:, request.t]  # [k, T, F] or [k, F]
            state = request.working_state(table)
        else:
            x = np.concatenate([r.x if chunked else r.x[:, r.t] for r in batch])
            if all(r.state is None for r in batch):  # all fresh sessions: one gather
                state = table.take(np.concatenate([r.rows for r in batch]), 0)
            else:
                state = np.concatenate([r.working_state(table) for r in batch])
        graph = self.sequence if chunked and self.sequence is not None else self.graph
        try:
            y, state_out = graph.run(x, state)
        except Exception as exc:  # nothing was written: the requests fail as they stand
            log.exception("%s: onnxruntime run failed for a batch of %d", self.name, len(x))
            for request in batch:
                request.error = exc
            return
        steps = x.shape[1] if chunked else 1
        self.batches += 1
        self.steps_run += len(x) * steps
        if self.on_batch is not None:
            self.on_batch(len(x))
        offset = 0
        for request in batch:
            part = slice(offset, offset + request.k)
            offset += request.k
            request.state = state_out[part]
            if chunked:
                request.y = y[part]  # [k, T, O]
                request.t = steps
                continue
            request.y[:, request.t] = y[part]
            if request.states is not None:
                request.states[:, request.t] = state_out[part]
            request.t += 1

    def _complete(self, finished: list[_Request]) -> None:
        """On the event loop: write succeeded requests' state back, then report every one."""
        succeeded = [r for r in finished if r.error is None and r.rows is not None]
        if succeeded:
            _write_back(self.table.rows, succeeded)
        for request in finished:
            result = None if request.error is not None else StepResult(request.y, request.states)
            if request.on_done is not None:
                try:
                    request.on_done(result)
                except Exception:  # the hook's owner's bug: the request's waiter still hears
                    log.exception("%s: a request's on_done failed", self.name)
            future = request.future
            if future is None or future.done():  # ran at once, or its waiter cancelled it
                continue
            if result is None:
                assert request.error is not None
                future.set_exception(request.error)
            else:
                future.set_result(result)

    def _hand_back(self, finished: list[_Request]) -> None:
        """From the engine thread: complete finished requests on their loops, one wake-up each."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Request]] = {}
        for request in finished:
            assert request.future is not None  # queued for the thread: someone awaits it
            by_loop.setdefault(request.future.get_loop(), []).append(request)
        for loop, requests in by_loop.items():
            # A closed loop raises RuntimeError: nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._complete, requests)


def _write_back(table: np.ndarray, requests: list[_Request]) -> None:
    """Write session requests' working state to their table rows.

    The rows are distinct: a session has one request at a time.
    """
    if len(requests) > 1:
        rows = np.concatenate([r.rows for r in requests])
        table[rows] = np.concatenate([r.state for r in requests])
        return
    request = requests[0]
    assert request.rows is not None and request.state is not None
    if request.k == 1:  # the common lone row: plain indexing is several times cheaper
        table[request.rows[0]] = request.state[0]
    else:
        table[request.rows] = request.state

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
onnxruntime computes. A small request that is the first of its loop iteration runs at
once, through the same step loop, and its result is returned without a future; the
others of that iteration share batches at its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
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


# A request's rows of the state table, one per sequence: an array, or (cheaper to build
# for a lone row) a tuple or list.
Rows = np.ndarray | Sequence[int]

# Called on the event loop when a request ends: with its result after its rows were written
# back, or with None when it failed (its rows untouched).
OnDone = Callable[[StepResult | None], None]


@dataclass(eq=False, slots=True)
class _Request:
    """A queued or running request; ``t`` is how many of its T steps have run."""

    x: np.ndarray  # [k, T, F]
    rows: Rows | None  # [k] rows of the state table, or None: private state only
    # [k, S] the request's working state: private from the start, or gathered from ``rows``
    # when its first step runs (None until then) and written back to them at the end.
    state: np.ndarray | None
    want_states: bool  # whether the caller wants every state
    on_done: OnDone | None
    k: int  # number of sequences
    steps: int  # number of time steps T
    chunk: bool  # its first run takes all T steps through the sequence graph
    # The outputs: ``y [k, T, O]`` and, when wanted, ``states [k, T, S]``. A request of one
    # step or one chunk takes them from its run's outputs; a longer one fills buffers
    # allocated at its first step.
    y: np.ndarray | None = None
    states: np.ndarray | None = None
    result: StepResult | None = None  # set when it ended well
    future: asyncio.Future[StepResult] | None = None  # None: run at once, nobody waits
    t: int = 0
    error: BaseException | None = None

    def working_state(self, table: np.ndarray) -> np.ndarray:
        """``[k, S]``: the state the next step starts from (the table rows, before the first).

        Rows are gathered with ``take``: a copy, like a fancy index, but several times
        cheaper. A lone row is sliced instead (cheaper still): nothing else writes it while
        its request runs, and ``run()`` reads it before anything could.
        """
        if self.state is not None:
            return self.state
        assert self.rows is not None
        if self.k == 1:
            row = self.rows[0]
            return table[row : row + 1]
        return table.take(np.asarray(self.rows), 0)

    def carry(self, y: np.ndarray, state: np.ndarray, chunked: bool) -> None:
        """Take this request's part of a run's outputs: its new state, its y (and states).

        ``y [k, O]`` and ``state [k, S]`` of one time step, or ``y [k, T, O]`` of a chunk.
        """
        self.state = state
        if chunked:
            self.y = y
            self.t = self.steps
        elif self.steps == 1:  # its outputs are this step's: views, no buffers
            self.y = y[:, None]
            if self.want_states:
                self.states = state[:, None]
            self.t = 1
        else:
            if self.t == 0:
                self.y = np.empty((self.k, self.steps, y.shape[1]), np.float32)
                if self.want_states:
                    self.states = np.empty((self.k, self.steps, state.shape[1]), np.float32)
            assert self.y is not None
            self.y[:, self.t] = y
            if self.states is not None:
                self.states[:, self.t] = state
            self.t += 1


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
        # Small requests since the end-of-iteration callback was armed (0: none is armed),
        # the ones queued to run together at that end, whether the last iteration had
        # several, and the task whose small requests last ran at once without arming it.
        self._inline_count = 0
        self._inline: list[_Request] = []
        self._inline_busy = False
        self._lone_task: asyncio.Task[object] | None = None
        self._thread = threading.Thread(target=self._loop, name=f"engine-{name}", daemon=True)
        self._thread.start()

    def submit(
        self,
        x: np.ndarray,
        rows: Rows | None = None,
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

        Knowing the end of an iteration takes a callback at its end. A request arms it
        when it comes from another task than the small request that last ran at once:
        one task's requests come one after another (a stream's next message waits for
        the reply to its last), so a lone stream arms nothing, and the first request of
        another stream in the same iteration arms it for everyone after.
        """
        if self._closing:
            raise EngineClosed(f"engine of {self.name} is closed")
        if (rows is None) == (state is None):
            raise ValueError("pass exactly one of rows and state")
        k, steps = x.shape[0], x.shape[1]
        request = _Request(
            x,
            rows,
            None if state is None else np.array(state, dtype=np.float32),
            want_states,
            on_done,
            k,
            steps,
            steps > 1 and not want_states and self.sequence is not None,
        )
        loop = asyncio.get_running_loop()
        if k * steps > self.inline_max_steps:
            future = request.future = loop.create_future()
            with self._cond:
                self._pending.append(request)
                self._cond.notify()
            return future
        if self._inline_count == 0 and not self._inline_busy:  # the first of its iteration
            task = asyncio.current_task(loop)
            if task is None or task is not self._lone_task:
                self._lone_task = task
                self._inline_count = 1
                loop.call_soon(self._end_iteration)
            self._run_on_loop([request])
            if request.error is not None:
                raise request.error
            assert request.result is not None
            return request.result
        self._inline_count += 1
        if self._inline_count == 1:
            loop.call_soon(self._end_iteration)
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
        self._inline_busy = self._inline_count > 1
        self._inline_count = 0
        if self._inline:
            queued, self._inline = self._inline, []
            self._run_on_loop(queued)

    def _run_on_loop(self, active: list[_Request]) -> None:
        """Run requests to their end on the event loop, completing each as it finishes."""
        complete = self._complete
        while active:
            active = self._advance(active, complete)

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
            active = self._advance(active, self._hand_back)

    def _advance(
        self, active: list[_Request], complete: Callable[[list[_Request]], None]
    ) -> list[_Request]:
        """Run fresh chunks whole, then one time step of a batch; complete what finished.

        Returns the requests still running. ``complete`` is called once, last, so an error
        before it leaves every request at hand unfinished. Such an unexpected error (outside
        ``run()``: a metrics hook) fails the requests at hand, not the engine: otherwise it
        would end the engine thread silently and every later step would wait forever.
        """
        try:
            if len(active) == 1:  # a lone request is its own batch (the common case)
                request = active[0]
                self._run(active, chunked=request.chunk and request.t == 0)
                if request.t < request.steps and request.error is None:
                    return active
                complete(active)
                return []
            finished: list[_Request] = []
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
        except Exception as exc:
            log.exception("%s: engine error; failing %d requests", self.name, len(active))
            for request in active:
                request.error = request.error or exc
            with contextlib.suppress(Exception):
                complete(active)
            return []

    def _run_chunks(self, active: list[_Request], finished: list[_Request]) -> list[_Request]:
        """Run every fresh chunk through the sequence graph; return the other requests.

        Requests of equal length share calls (up to ``max_batch`` sequences each); a
        request that wants every intermediate state, or one already under way, stays on
        the step graph. The requests run here are added to ``finished``.
        """
        fresh = [r for r in active if r.chunk and r.t == 0]
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
        """One time step (``chunked``: all T steps) for every request: gather, run, carry.

        A request's rows are gathered when its first step runs; later steps start from the
        state it carries.
        """
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
        self.batches += 1
        self.steps_run += len(x) * x.shape[1] if chunked else len(x)
        if self.on_batch is not None:
            self.on_batch(len(x))
        if len(batch) == 1:
            batch[0].carry(y, state_out, chunked)
            return
        offset = 0
        for request in batch:
            end = offset + request.k
            request.carry(y[offset:end], state_out[offset:end], chunked)
            offset = end

    def _complete(self, finished: list[_Request]) -> None:
        """On the event loop: write succeeded requests' state back, then report every one."""
        _write_back(self.table.rows, finished)
        for request in finished:
            result: StepResult | None = None
            if request.error is None:
                assert request.y is not None
                result = request.result = StepResult(request.y, request.states)
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
    """Write the working state of the session requests that succeeded to their table rows.

    The rows are distinct: a session has one request at a time.
    """
    if len(requests) == 1:
        request = requests[0]
        if request.error is not None or request.rows is None:
            return
        assert request.state is not None
        if request.k == 1:  # the common lone row: plain indexing is several times cheaper
            table[request.rows[0]] = request.state[0]
        else:
            table[np.asarray(request.rows)] = request.state
        return
    succeeded = [r for r in requests if r.error is None and r.rows is not None]
    if succeeded:
        table[np.concatenate([r.rows for r in succeeded])] = np.concatenate(
            [r.state for r in succeeded]
        )

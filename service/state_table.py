"""One preallocated ``[capacity, S]`` table of recurrent state rows per model, with a free list.

A session holds a row index, never an array of its own, so the engine gathers the rows of
a batch with one fancy index and scatters the new state back the same way. The table is
allocated with ``np.zeros`` (calloc): pages of rows never used are never resident, so a
large capacity costs address space, not memory. Rows are handed out lowest first, which
keeps the touched part of the table compact.

While a request runs, only its model's engine writes its rows (once, when the request
ends); between requests the session lifecycle sets rows through ``allocate`` and ``reset``.
"""

from __future__ import annotations

import numpy as np

from rnnstream.server.errors import ResourceExhausted


class StateTable:
    """Recurrent state rows for up to ``capacity`` sessions of one model.

    Example::

        table = StateTable(capacity=4, state_size=3, initial=np.zeros(3, np.float32))
        row = table.allocate()       # a zeroed row
        table.rows[row]              # the session's state, shape [3]
        table.release(row)
    """

    def __init__(self, capacity: int, state_size: int, initial: np.ndarray) -> None:
        if initial.shape != (state_size,):
            raise ValueError(f"initial state has shape {initial.shape}, expected ({state_size},)")
        self.capacity = capacity
        self.state_size = state_size
        self.initial = initial.astype(np.float32)
        self._zero_initial = not np.any(self.initial)
        self.rows = np.zeros((capacity, state_size), dtype=np.float32)  # [capacity, S]
        # Free rows as a stack; popping from the end hands out the lowest index first.
        self._free = np.arange(capacity - 1, -1, -1, dtype=np.int64)
        self._n_free = capacity

    @property
    def used(self) -> int:
        """Rows held by sessions."""
        return self.capacity - self._n_free

    @property
    def free(self) -> int:
        """Rows available."""
        return self._n_free

    def allocate(self, state: np.ndarray | None = None) -> int:
        """Take a free row set to ``state [S]`` (default: the initial state).

        ResourceExhausted when none is left.
        """
        if self._n_free == 0:
            raise ResourceExhausted(
                f"all {self.capacity} session rows of this model are in use: end or delete "
                "sessions, or raise --max-sessions"
            )
        self._n_free -= 1
        row = int(self._free[self._n_free])
        if state is None:
            self.reset(row)
        else:
            self.rows[row] = state
        return row

    def reset(self, row: int) -> None:
        """Set a row back to the initial state."""
        if self._zero_initial:
            self.rows[row].fill(0.0)
        else:
            self.rows[row] = self.initial

    def release(self, row: int) -> None:
        """Give a row back to the free list."""
        self._free[self._n_free] = row
        self._n_free += 1

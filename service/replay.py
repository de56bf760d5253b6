"""The replay cache: the outputs of a session's last few steps, kept to answer retransmissions.

A client that reconnects resends every step it has not seen answered; the steps the
session already applied are not run again, and their outputs come from here instead. The
last step's output is also the sequence's answer at End, so at least one step is kept.
"""

from __future__ import annotations

import numpy as np


class ReplayCache:
    """``y [r, O]`` (and ``states [r, S]``) of a session's steps ``start .. start + r - 1``.

    ``states`` is kept only while the session returns states: a cache with outputs but no
    states cannot answer a retransmission that must carry both.

    Example::

        cache = ReplayCache()
        cache.remember(end=3, y=np.ones((3, 1), np.float32), states=None, keep=2)
        cache.start, len(cache.y)                                # (1, 2): steps 1 and 2
        cache.replayed(0, 3, False, n_outputs=1, state_size=4)   # from step 1: 2 rows of y
    """

    __slots__ = ("start", "states", "y")

    def __init__(
        self, start: int = 0, y: np.ndarray | None = None, states: np.ndarray | None = None
    ) -> None:
        self.start = start
        self.y = y  # [<= keep, O]
        self.states = states  # [<= keep, S]

    @property
    def last_y(self) -> np.ndarray | None:
        """``[O]`` of the last step remembered, or None before the first."""
        return None if self.y is None else self.y[-1]

    def remember(self, end: int, y: np.ndarray, states: np.ndarray | None, keep: int) -> None:
        """Add the outputs ``y [n, O]`` (and ``states [n, S]``) of the steps before ``end``.

        Keeps the last ``keep`` steps (at least one). Without ``states`` any cached states
        are dropped; with them after a stretch without, the cache starts afresh so that
        cached outputs and states stay aligned.
        """
        keep = max(1, keep)
        if states is not None and self.states is None:
            self.y = None
        previous_y = self.y
        self.y = y[-keep:].copy() if previous_y is None else np.concatenate([previous_y, y])[-keep:]
        if states is None:
            self.states = None
        else:
            previous = self.states
            self.states = (
                states[-keep:].copy()
                if previous is None
                else np.concatenate([previous, states])[-keep:]
            )
        self.start = end - len(self.y)

    def replayed(
        self, start: int, count: int, want_states: bool, n_outputs: int, state_size: int
    ) -> tuple[int, np.ndarray, np.ndarray | None]:
        """Cached outputs of retransmitted steps ``start .. start + count - 1`` still held.

        Returns the first step answered, ``y [m, O]`` and, when ``want_states`` and the
        cache holds them, ``states [m, S]``; steps older than the cache are not answered
        (the reply starts after them).
        """
        empty = np.empty((0, n_outputs), dtype=np.float32)
        no_states = np.empty((0, state_size), np.float32) if want_states else None
        end = start + count
        if count == 0 or self.y is None:
            return end, empty, no_states
        if want_states and self.states is None:
            return end, empty, no_states  # outputs without their states would break the reply
        first = max(start, self.start)
        if first >= end:
            return end, empty, None
        lo, hi = first - self.start, end - self.start
        states = self.states[lo:hi] if self.states is not None else None
        return first, self.y[lo:hi], states

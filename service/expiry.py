"""When idle sessions are due to end: a min-heap of deadlines with lazy re-checks.

Each session has one entry, pushed when it is created. Activity does not touch the heap:
when an entry comes due, its owner is asked for its real deadline (last activity plus its
own TTL) and pushed again if that lies ahead. So per-session TTLs cost O(log n) per
expiry check, and nothing per step.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class ExpiryQueue(Generic[T]):
    """Items with deadlines; ``due(now)`` yields those whose real deadline has passed.

    Example::

        queue = ExpiryQueue(deadline=lambda s: s.last_active + s.ttl, gone=lambda s: s.ended)
        queue.push(session)
        for session in queue.due(now): ...
    """

    def __init__(self, deadline: Callable[[T], float], gone: Callable[[T], bool]) -> None:
        self._deadline = deadline
        self._gone = gone
        self._heap: list[tuple[float, int, T]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, item: T) -> None:
        """Track ``item`` at its current deadline."""
        heapq.heappush(self._heap, (self._deadline(item), next(self._order), item))

    def due(self, now: float) -> Iterator[T]:
        """Pop every item whose deadline has passed; items that moved on are pushed back."""
        postponed: list[T] = []
        while self._heap and self._heap[0][0] <= now:
            _, _, item = heapq.heappop(self._heap)
            if self._gone(item):
                continue
            if self._deadline(item) > now:
                postponed.append(item)
                continue
            yield item
        for item in postponed:
            self.push(item)

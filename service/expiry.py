"""When idle sessions are due to end: deadlines bucketed by the second, re-checked lazily.

Each session sits in one bucket, the whole second its deadline falls in when it is pushed.
Activity does not move it: when its bucket comes due, its owner is asked for its real
deadline (last activity plus its own TTL) and it is pushed again if that lies ahead. So
per-session TTLs cost one list slot per session and nothing per step, and a check walks
only the buckets that are due.
"""

from __future__ import annotations

import math
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
        self._buckets: dict[int, list[T]] = {}

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def push(self, item: T, at: float | None = None) -> None:
        """Track ``item`` until its current deadline (or until ``at``, to look again then)."""
        when = self._deadline(item) if at is None else at
        self._buckets.setdefault(math.ceil(when), []).append(item)

    def due(self, now: float) -> Iterator[T]:
        """Yield every item whose deadline has passed; items that moved on are pushed again."""
        for second in sorted(k for k in self._buckets if k <= now):
            for item in self._buckets.pop(second):
                if self._gone(item):
                    continue
                if self._deadline(item) > now:
                    self.push(item)
                    continue
                yield item  # an item pushed twice may come due twice: callers are idempotent

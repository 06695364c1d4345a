"""The ready queue: which ready task goes next, shared by the engine and the planner.

Highest priority first (the plan's priority is the bottom level: longest remaining path
first), first come first served among equal priorities. Kept as a heap of the
*distinct* priorities present plus a FIFO per priority: the members of a sweep share
one priority, so on the large workflows where it matters a push and a pop cost O(1)
(a dict lookup and a deque operation), not O(log n) comparisons of tuples. With all
priorities distinct it is a plain heap with a little more bookkeeping.

Keys are given negated (``-priority``), so the smallest key comes out first.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Container, Iterable, Iterator


class ReadyQueue:
    __slots__ = ("_buckets", "_keys", "_size")

    def __init__(self, items: Iterable[tuple[float, int]] = ()) -> None:
        self._keys: list[float] = []  # heap of the distinct keys present
        self._buckets: dict[float, deque[int]] = {}
        self._size = 0
        for key, i in items:
            self.push(key, i)

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[tuple[float, int]]:
        """Every queued ``(key, id)``, in no particular order."""
        for key, bucket in self._buckets.items():
            for i in bucket:
                yield key, i

    def push(self, key: float, i: int) -> None:
        self._bucket(key).append(i)
        self._size += 1

    def _bucket(self, key: float) -> deque[int]:
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = bucket = deque()
            heapq.heappush(self._keys, key)
        return bucket

    def pop(self) -> tuple[float, int]:
        """The next ``(key, id)``: smallest key, earliest pushed among equals."""
        key = self._keys[0]
        bucket = self._buckets[key]
        i = bucket.popleft()
        self._size -= 1
        if not bucket:
            heapq.heappop(self._keys)
            del self._buckets[key]
        return key, i

    def pop_run(self, key: float, first: int, limit: int, exclude: Container[int] = ()) -> int:
        """After :meth:`pop` gave ``(key, first)``: pop ``first + 1``, ``first + 2``, ... while
        they come next among their equals (up to ``limit`` of them, none in ``exclude``),
        and return how many (a run of consecutive members of one sweep)."""
        bucket = self._buckets.get(key)
        taken = 0
        while bucket and taken < limit and bucket[0] == first + taken + 1 \
                and bucket[0] not in exclude:
            bucket.popleft()
            taken += 1
        if taken:
            self._size -= taken
            if not bucket:
                heapq.heappop(self._keys)  # key is the smallest: it was just popped from
                del self._buckets[key]
        return taken

    def unpop(self, items: list[tuple[float, int]]) -> None:
        """Put back what :meth:`pop` returned (in that order), ahead of its equals."""
        for key, i in reversed(items):
            self._bucket(key).appendleft(i)
        self._size += len(items)

"""Deadlines for many connections with one event-loop timer (sans-IO).

Call control holds thousands of idle phone connections, each with a deadline (Register,
keepalive). One loop timer handle per connection costs ~0.5 kB each (a `TimerHandle` and, on
uvloop, its libuv timer); here a connection costs one entry in a bucket set. Deadlines are
rounded *up* to `resolution` seconds, so an item is never due early and at most `resolution`
late. The owner runs the single loop timer:

    wheel = DeadlineWheel(0.1)
    key = wheel.add(conn, deadline)        # keep `key` to `discard` it later
    for conn in wheel.pop_due(loop.time()): conn.on_deadline()
    when = wheel.next_time()               # re-arm the one loop timer there (None: nothing due)
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable

__all__ = ["DeadlineWheel"]


class DeadlineWheel:
    __slots__ = ("resolution", "_buckets", "_ticks")

    def __init__(self, resolution: float) -> None:
        if resolution <= 0:
            raise ValueError("resolution must be positive")
        self.resolution = resolution
        self._buckets: dict[int, set] = {}   # tick -> items due at tick * resolution
        self._ticks: list[int] = []          # heap of the buckets' ticks

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def add(self, item: Hashable, deadline: float) -> int:
        """File `item` under `deadline`; returns the key `discard` needs."""
        tick = math.ceil(deadline / self.resolution)
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = set()
            heapq.heappush(self._ticks, tick)
        bucket.add(item)
        return tick

    def discard(self, item: Hashable, key: int) -> None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.discard(item)
            if not bucket:   # its tick stays in the heap; skipped when reached
                del self._buckets[key]

    def pop_due(self, now: float) -> list:
        """Every item whose (rounded) deadline is at or before `now`, removed from the wheel."""
        due: list = []
        ticks, buckets = self._ticks, self._buckets
        last = math.floor(now / self.resolution + 1e-9)   # float noise at a tick's edge
        while ticks and ticks[0] <= last:
            bucket = buckets.pop(heapq.heappop(ticks), None)
            if bucket:
                due.extend(bucket)
        return due

    def next_time(self) -> float | None:
        """When the earliest bucket is due, or None when the wheel is empty."""
        ticks, buckets = self._ticks, self._buckets
        while ticks and ticks[0] not in buckets:   # emptied by discard
            heapq.heappop(ticks)
        return ticks[0] * self.resolution if ticks else None

"""Garbage collection in a service process that holds thousands of long-lived connections.

Measured in callmanager (docs/performance.md, issue 15, session 8): with 10,000 phones
registered, a full collection walks every phone's objects (100–180 ms each), and CPython starts
one every 700 × 10 × 10 net allocations — 17–22 of them in a 10,000-phone registration storm and
reset-all, ~13 % of the service's CPU — while what they walk is nearly all alive (a phone's
connection lives as long as its registration). So, once the service is set up:

- the objects alive then (modules, ORM mappers, protobuf descriptors: ~160,000) are frozen —
  never garbage in a running service, so never walked again;
- a full collection waits for `FULL_EVERY` young-generation collections instead of 10.

The young generations, where short-lived cycles die, are collected exactly as before; CPython's
own rule that a full collection waits until a quarter of the old generation is new still holds.
Process-wide: only the service's own process applies it (`run_service`), never a test run hosting
services in-process.
"""

from __future__ import annotations

import gc

FULL_EVERY = 100  # gen-1 collections between full collections (CPython's default: 10)


def tune_for_long_lived_connections(full_every: int = FULL_EVERY) -> int:
    """Freeze what is alive after set-up and space full collections out; returns how many
    objects were frozen."""
    gc.collect()  # garbage from set-up is freed, not frozen
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, full_every)
    return gc.get_freeze_count()

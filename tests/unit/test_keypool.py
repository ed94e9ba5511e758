"""Call control's key pool (ENC-4): a burst of set-ups must not leave encrypted calls on RTP while
the key manager answers; an outage still falls back (CALL-1) without growing the pool; every pair
is handed out once; the pool shrinks back when the burst is over."""

from __future__ import annotations

import asyncio

import pytest

from ccmsec.aio.keypool import KeyPool
from ccmsec.media.callkeys import PairKeys
from ccmsec.media.srtp import MasterKey


class KeyManager:
    """Stands in for the key manager's GenerateCallKeys: fresh keys after a short delay, counting
    how many requests were in flight at once; `down` makes it refuse."""

    def __init__(self, delay: float = 0.002):
        self.delay = delay
        self.in_flight = self.most_in_flight = self.calls = self.largest = 0
        self.down = False

    async def fetch(self, name: str, calls: int) -> list[PairKeys]:
        self.calls += 1
        self.largest = max(self.largest, calls)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if self.down:
                raise ConnectionError("key manager unreachable")
            return [PairKeys(MasterKey.generate(), MasterKey.generate()) for _ in range(calls)]
        finally:
            self.in_flight -= 1


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_enc4_as_many_pairs_ready_as_calls_could_start_at_once():
    """Call control's demand: half its registered phones. A burst of that many set-ups in one
    stretch of the loop (the agent cannot wait for keys) finds every pair ready."""
    km, phones = KeyManager(), [0]
    pool = KeyPool(km.fetch, size=8, limit=1000, batch=64, parallel=4, demand=lambda: phones[0] // 2)
    pool.start()
    await pool.wait_ready(8)
    phones[0] = 1200                                    # phones registered
    pool.start()                                        # (call control kicks it every second)
    await pool.wait_ready(600, timeout=10)
    assert km.largest == 64 and km.most_in_flight == 4  # asked ahead in batches, 4 at a time
    burst = [pool.take() for _ in range(600)]
    assert all(k is not None for k in burst) and pool.dry == 0
    phones[0] = 10_000
    assert pool.wanted() == 1000                        # bounded by its limit
    await pool.close()


async def test_enc4_a_burst_beyond_the_demand_grows_the_pool_so_the_next_burst_is_keyed():
    km, clock = KeyManager(), Clock()
    pool = KeyPool(km.fetch, size=8, limit=128, batch=2, parallel=8, clock=clock)
    pool.start()
    await pool.wait_ready(8)
    first = [pool.take() for _ in range(40)]           # 40 set-ups in one stretch of the loop
    assert sum(k is not None for k in first) == 8 and pool.dry == 32
    assert pool.target == 128                           # doubled on each empty take, capped
    await pool.wait_ready(128, timeout=10)
    assert km.most_in_flight == 8 and km.largest == 2   # refilled in parallel, never more
    second = [pool.take() for _ in range(100)]
    assert all(k is not None for k in second) and pool.dry == 32
    keys = [k.a_to_b.key for k in first + second if k is not None]
    assert len(set(keys)) == len(keys)                  # every pair handed out once
    await pool.close()


async def test_the_pool_shrinks_back_after_a_calm_period():
    km, clock = KeyManager(), Clock()
    pool = KeyPool(km.fetch, size=4, limit=64, calm=30.0, clock=clock)
    pool.start()
    await pool.wait_ready(4)
    for _ in range(8):
        pool.take()
    assert pool.target == 64
    await pool.wait_ready(64)
    clock.now = 10.0
    pool.take()
    assert pool.target == 64                            # still busy recently
    clock.now = 41.0
    pool.take()
    assert pool.target == 32
    clock.now = 50.0
    pool.take()
    assert pool.target == 32                            # one halving per calm period
    clock.now = 200.0
    for _ in range(4):
        clock.now += 31
        pool.take()
    assert pool.target == 4                             # back to its floor, not below
    await pool.close()


async def test_call1_an_outage_falls_back_without_growing_and_recovers():
    km, clock = KeyManager(), Clock()
    pool = KeyPool(km.fetch, size=4, limit=64, retry=0.05, clock=clock)
    km.down = True
    pool.start()
    await asyncio.sleep(0.03)
    assert pool.take() is None and pool.take() is None  # no keys: the call goes RTP, shown so
    assert "unreachable" in pool.last_error and pool.target == 4
    km.down = False
    await pool.wait_ready(4, timeout=5)
    assert pool.take() is not None and pool.last_error == ""
    await pool.close()


def test_bad_pool_sizes_are_refused():
    with pytest.raises(ValueError, match="size"):
        KeyPool(KeyManager().fetch, size=0)
    with pytest.raises(ValueError, match="limit"):
        KeyPool(KeyManager().fetch, size=10, limit=5)
    with pytest.raises(ValueError, match="batch"):
        KeyPool(KeyManager().fetch, batch=65)

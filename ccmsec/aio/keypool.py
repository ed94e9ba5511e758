"""Fresh key pairs ready for call set-up: call control's side of the key manager.

The call agent is synchronous (sans-IO) and a call's media is planned in one step, so call
control keeps a few pairs that the key manager generated for it and takes one per device pair
of a call; every take asks the key manager for a replacement at once. A pair is handed out once,
never reused, and not kept after its call (`CallKeyRing.forget`). When the key manager cannot be
reached the pool runs dry and calls fall back to RTP (shown non-encrypted, CALL-1) rather than
waiting.

A burst of set-ups must not run it dry while the key manager is there, and the call agent cannot
wait for keys (it plans a call's media in one step). So the pool keeps ready as many pairs as
could be needed at once: `demand()` (call control: half its registered phones, the most calls
that can start together) bounded by `limit`, and never fewer than `size`. It asks ahead in
batches (one request for up to `batch` calls' keys, `parallel` requests in flight). A take that
still finds it empty doubles the target; with no empty take for `calm` seconds it halves again
(never below the demand), so pre-generated keys do not wait in memory beyond what traffic needs.
Ready keys live only in this process's memory, as the keys of a call do.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Awaitable, Callable

from ccmsec.media.callkeys import PairKeys

log = logging.getLogger("ccmsec.media.keys")

Fetch = Callable[[str, int], Awaitable[list[PairKeys]]]   # (label, calls) -> that many pairs


class KeyPool:
    def __init__(self, fetch: Fetch, *, size: int = 16, limit: int = 8192, batch: int = 64,
                 parallel: int = 4, demand: Callable[[], int] = lambda: 0, retry: float = 2.0,
                 calm: float = 30.0, clock: Callable[[], float] | None = None):
        if not 1 <= size <= limit or parallel < 1 or not 1 <= batch <= 64:
            raise ValueError(f"key pool: need 1 <= size ({size}) <= limit ({limit}), parallel >= 1 "
                             f"and 1 <= batch ({batch}) <= 64")
        self._fetch = fetch
        self.size = size            # the fewest pairs kept ready
        self.limit = limit          # the most
        self.target = size          # kept ready now
        self.batch = batch
        self.parallel = parallel
        self._demand = demand
        self.retry = retry
        self.calm = calm
        self._clock = clock or _monotonic
        self._last_dry = float("-inf")
        self._ready: deque[PairKeys] = deque()
        self._task: asyncio.Task | None = None
        self._serial = 0
        self.taken = 0
        self.fetched = 0
        self.dry = 0        # takes that found the pool empty
        self.last_error = ""

    def __len__(self) -> int:
        return len(self._ready)

    def start(self) -> None:
        self._kick()

    def take(self) -> PairKeys | None:
        now = self._clock()
        if not self._ready:
            self.dry += 1
            self._last_dry = now
            if not self.last_error:    # demand, not an outage: keep more ready from now on
                self.target = min(self.limit, self.wanted() * 2)
            self._kick()
            return None
        if self.target > self.size and now - self._last_dry > self.calm:
            self.target = max(self.size, self.target // 2)
            self._last_dry = now       # one halving per calm period
        self.taken += 1
        keys = self._ready.popleft()
        self._kick()
        return keys

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            try:
                self._task = asyncio.get_running_loop().create_task(self._fill())
            except RuntimeError:  # no running loop (shutdown)
                pass

    def wanted(self) -> int:
        """How many pairs the pool keeps ready now: its target, or the demand when higher."""
        try:
            demand = int(self._demand())
        except Exception:   # a demand that cannot be read does not stop the keys
            demand = 0
        return min(self.limit, max(self.target, demand))

    async def _fill(self) -> None:
        while (missing := self.wanted() - len(self._ready)) > 0:
            requests = []
            while missing > 0 and len(requests) < self.parallel:
                calls = min(self.batch, missing)
                missing -= calls
                self._serial += 1
                requests.append(self._fetch(f"pool-{self._serial}", calls))
            results = await asyncio.gather(*requests, return_exceptions=True)
            failure = None
            for result in results:
                if isinstance(result, asyncio.CancelledError):
                    raise result
                if isinstance(result, BaseException):
                    failure = result
                    continue
                self.fetched += len(result)
                self._ready.extend(result)
            if failure is not None:   # the key manager is down or refuses: retry later
                self.last_error = _describe(failure)
                log.warning("key manager unavailable; encrypted calls fall back to RTP until it answers",
                            extra={"error": self.last_error})
                await asyncio.sleep(self.retry)
            else:
                self.last_error = ""

    async def wait_ready(self, count: int = 1, timeout: float = 10.0) -> None:
        self._kick()
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while len(self._ready) < count:
            if loop.time() > end:
                raise TimeoutError(f"key pool not filled in {timeout} s: {self.last_error or 'no answer'}")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._ready.clear()


def _monotonic() -> float:
    import time
    return time.monotonic()


def _describe(exc: BaseException) -> str:
    details = getattr(exc, "details", None)  # a gRPC error names its status and reason
    if callable(details):
        code = getattr(exc, "code", None)
        return f"{code().name if callable(code) else ''}: {details()}".strip(": ")
    return str(exc) or type(exc).__name__

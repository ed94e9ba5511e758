"""Fresh key pairs ready for call set-up: call control's side of the key manager.

The call agent is synchronous (sans-IO) and a call's media is planned in one step, so call
control keeps a few pairs that the key manager generated for it and takes one per device pair
of a call; every take asks the key manager for a replacement at once. A pair is handed out once,
never reused, and not kept after its call (`CallKeyRing.forget`). When the key manager cannot be
reached the pool runs dry and calls fall back to RTP (shown non-encrypted, CALL-1) rather than
waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Awaitable, Callable

from ccmsec.media.callkeys import PairKeys

log = logging.getLogger("ccmsec.media.keys")

Fetch = Callable[[str], Awaitable[PairKeys]]


class KeyPool:
    def __init__(self, fetch: Fetch, *, size: int = 8, retry: float = 2.0):
        self._fetch = fetch
        self.size = size
        self.retry = retry
        self._ready: deque[PairKeys] = deque()
        self._wanted = 0
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
        self._kick()
        if not self._ready:
            self.dry += 1
            return None
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

    async def _fill(self) -> None:
        while len(self._ready) < self.size:
            self._serial += 1
            try:
                keys = await self._fetch(f"pool-{self._serial}")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the key manager is down or refuses: retry later
                self.last_error = _describe(exc)
                log.warning("key manager unavailable; encrypted calls fall back to RTP until it answers",
                            extra={"error": self.last_error})
                await asyncio.sleep(self.retry)
                continue
            self.fetched += 1
            self._ready.append(keys)

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


def _describe(exc: Exception) -> str:
    details = getattr(exc, "details", None)  # a gRPC error names its status and reason
    if callable(details):
        code = getattr(exc, "code", None)
        return f"{code().name if callable(code) else ''}: {details()}".strip(": ")
    return str(exc) or type(exc).__name__

"""What the gateway knows of the cluster security mode (GW-4: SRTP needs mixed mode).

ctl-provider owns the mode (issue 9 §5); call control reports it, and the gateway asks call control
(`CallManager/GetClusterMode`) when it first needs to know and follows ctl-provider's
`mode.changed` events after that (an event that arrives while the question is under way wins over
its answer, which may predate the change). When call control cannot be reached, SRTP is refused
rather than assumed.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import grpc

from ccmsec.domain import ClusterMode
from ccmsec_proto import events_pb2

Ask = Callable[[], Awaitable[int]]


class ClusterModeUnknown(Exception):
    pass


class ClusterModeWatcher:
    def __init__(self, ask: Ask, *, timeout: float = 5.0):
        self._ask = ask
        self._timeout = timeout
        self.mode: int | None = None
        self._events = 0          # mode.changed events seen (an answer asked before one is stale)
        self._lock = asyncio.Lock()

    async def current(self) -> int:
        if self.mode is not None:
            return self.mode
        async with self._lock:
            if self.mode is None:
                seen = self._events
                try:
                    answer = await asyncio.wait_for(self._ask(), self._timeout)
                except (grpc.aio.AioRpcError, asyncio.TimeoutError, OSError) as exc:
                    detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
                    raise ClusterModeUnknown(f"cannot learn the cluster security mode from call "
                                             f"control: {detail}") from None
                # a mode.changed that arrived while asking is newer than the answer: it stays
                if self._events == seen:
                    self.mode = answer
        return self.mode

    async def on_event(self, event: events_pb2.Event) -> None:
        if event.WhichOneof("body") == "mode_changed":
            self._events += 1
            self.mode = event.mode_changed.mode

    async def is_mixed(self) -> bool:
        return await self.current() == ClusterMode.MIXED.to_proto()

"""The event bus: NATS JetStream with one durable stream for events that must not be lost.

Subjects are `ccmsec.<kind>`, and `ccmsec.service.restart.<role>` for restarts. Each event is the protobuf `ccmsec.v1.Event` envelope; its
unique id goes in the `Nats-Msg-Id` header (JetStream drops duplicate publishes) and handlers record
the ids they handled (a redelivery after a crash changes nothing). The publisher's trace id rides
in the `Ccmsec-Trace-Id` header and is bound while the handler runs (`ccmsec.runtime.logs`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Awaitable, Callable

import nats
from nats.errors import NoServersError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from ccmsec.runtime.logs import TRACE_HEADER, bind_trace_id, clean_trace_id, current_trace_id
from ccmsec.runtime.metrics import EVENT_LAG, EVENTS_HANDLED
from ccmsec_proto import events_pb2

log = logging.getLogger("ccmsec.bus")

STREAM = "CCMSEC"
SUBJECT_PREFIX = "ccmsec"
KINDS = ("device.reset", "service.restart", "ctl.updated", "config.changed", "mode.changed", "access.denied")

Handler = Callable[[events_pb2.Event], Awaitable[None]]
SeenCheck = Callable[[str, str], Awaitable[bool]]
SeenMark = Callable[[str, str], Awaitable[None]]


class BusError(Exception):
    pass


# Only restarts are addressed (to a role) in the subject; every other event goes on its kind's
# subject and names its devices in the body, so one subscription per kind sees all of them.
TARGETED_KINDS = ("service.restart",)


def subject_for(kind: str, target: str | None = None) -> str:
    if kind not in KINDS:
        raise BusError(f"unknown event kind {kind!r}")
    if target and kind in TARGETED_KINDS:
        return f"{SUBJECT_PREFIX}.{kind}.{target}"
    return f"{SUBJECT_PREFIX}.{kind}"


def make_event(kind: str, origin: str, **body) -> events_pb2.Event:
    """make_event('device.reset', 'callmanager', device_reset=events_pb2.DeviceReset(...))."""
    event = events_pb2.Event(id=uuid.uuid4().hex, kind=kind, origin=origin,
                             occurred_unix_ms=int(time.time() * 1000))
    for field, value in body.items():
        if isinstance(value, str):
            setattr(event, field, value)
        else:
            getattr(event, field).CopyFrom(value)
    return event


class EventBus:
    def __init__(self, url: str, name: str, *, connect_timeout: float = 30.0):
        self.url, self.name, self.connect_timeout = url, name, connect_timeout
        self.nc: nats.NATS | None = None
        self.js = None
        self._subs: list = []
        self._durables: list[str] = []
        self._closing = False

    async def connect(self) -> None:
        """Connect, retrying until connect_timeout; afterwards nats-py reconnects by itself."""
        deadline = time.monotonic() + self.connect_timeout
        delay = 0.1
        while True:
            remaining = deadline - time.monotonic()
            try:
                # nats-py keeps retrying the first connection too; bound each attempt ourselves.
                self.nc = await asyncio.wait_for(nats.connect(
                    servers=[self.url], name=self.name, connect_timeout=2,
                    allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                    disconnected_cb=self._on_disconnect, reconnected_cb=self._on_reconnect,
                    error_cb=self._on_error,
                ), timeout=max(0.5, min(remaining, 5.0)))
                break
            except (NoServersError, OSError, asyncio.TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise BusError(f"cannot reach NATS at {self.url}: {exc or 'timed out'}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        self.js = self.nc.jetstream()
        await self.ensure_stream()

    async def _on_disconnect(self):
        if not self._closing:
            log.warning("disconnected from NATS", extra={"url": self.url})

    async def _on_reconnect(self):
        log.info("reconnected to NATS", extra={"url": self.url})

    async def _on_error(self, exc):
        log.debug("NATS error: %s", exc)

    async def ensure_stream(self) -> None:
        config = StreamConfig(
            name=STREAM, subjects=[f"{SUBJECT_PREFIX}.>"], storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS, max_age=7 * 24 * 3600, duplicate_window=120.0,
        )
        try:
            await self.js.stream_info(STREAM)
        except NotFoundError:
            try:
                await self.js.add_stream(config)
            except Exception:  # another service created it at the same moment
                await self.js.stream_info(STREAM)

    async def publish(self, event: events_pb2.Event, target: str | None = None) -> int:
        """Publish durably; returns the stream sequence number."""
        if self.js is None:
            raise BusError("event bus not connected")
        ack = await self.js.publish(
            subject_for(event.kind, target), event.SerializeToString(),
            headers={"Nats-Msg-Id": event.id, TRACE_HEADER: current_trace_id() or event.id}, timeout=5,
        )
        return ack.seq

    async def subscribe(self, subject: str, durable: str, handler: Handler, *,
                        seen: SeenCheck | None = None, mark: SeenMark | None = None,
                        deliver_new: bool = False) -> None:
        """Durable push consumer; the message is acked only after `handler` succeeded."""
        if self.js is None:
            raise BusError("event bus not connected")

        async def on_msg(msg):
            try:
                event = events_pb2.Event.FromString(msg.data)
            except Exception:
                log.error("dropping undecodable event", extra={"subject": msg.subject})
                EVENTS_HANDLED.labels("?", "undecodable").inc()
                await msg.term()
                return
            with bind_trace_id(clean_trace_id((msg.headers or {}).get(TRACE_HEADER)) or event.id):
                await handle(msg, event)

        async def handle(msg, event):
            try:
                if seen is not None and await seen(durable, event.id):
                    EVENTS_HANDLED.labels(event.kind, "duplicate").inc()
                    await msg.ack()
                    return
                await handler(event)
                if mark is not None:
                    await mark(durable, event.id)
                EVENTS_HANDLED.labels(event.kind, "ok").inc()
                if event.occurred_unix_ms:
                    EVENT_LAG.labels(event.kind).observe(max(0.0, time.time() - event.occurred_unix_ms / 1000))
                await msg.ack()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event handler failed; will be redelivered",
                              extra={"kind": event.kind, "event_id": event.id})
                EVENTS_HANDLED.labels(event.kind, "error").inc()
                await msg.nak(delay=1.0)

        config = ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_deliver=20,
            deliver_policy=DeliverPolicy.NEW if deliver_new else DeliverPolicy.ALL,
        )
        sub = await self.js.subscribe(subject, durable=durable, cb=on_msg, manual_ack=True,
                                      config=config, stream=STREAM)
        self._subs.append(sub)
        self._durables.append(durable)

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def pending(self) -> dict[str, int]:
        """Per durable consumer of ours: events not delivered yet plus delivered and not acked."""
        counts: dict[str, int] = {}
        for durable in list(self._durables):
            try:
                info = await self.js.consumer_info(STREAM, durable, timeout=2)
            except Exception:
                continue
            counts[durable] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        return counts

    async def close(self) -> None:
        self._closing = True
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        self._subs.clear()
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.drain(), 2)
            except Exception:
                await self.nc.close()

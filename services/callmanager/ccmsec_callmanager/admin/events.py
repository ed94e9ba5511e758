"""The seam through which the API announces changes.

A payload is the body of the bus's `ccmsec.v1.Event` envelope, keyed by its oneof field name
(`{"device_reset": DeviceReset(...)}`, `{"config_changed": ConfigChanged(...)}`): exactly what
`Service.publish(kind, target, **body)` takes, so nothing is translated between the API and the
bus. Reset/restart bodies come from the one mapping `ccmsec.runtime.actions.event_bodies`, the one place
where policy actions become events.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Protocol

from google.protobuf.message import Message


class EventPublisher(Protocol):
    async def publish(self, kind: str, target: str | None, payload: dict[str, Message]) -> None: ...


class BusEvents:
    """The service's bus (`Service.publish`) as an EventPublisher: bodies pass through unchanged."""

    def __init__(self, publish: Callable[..., Awaitable[object]]) -> None:
        self._publish = publish

    async def publish(self, kind: str, target: str | None, payload: dict[str, Message]) -> None:
        await self._publish(kind, target, **payload)


class MemoryEvents:
    """Keeps published events in a list: for tests and for running the API without a bus."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str | None, dict[str, Message]]] = []

    async def publish(self, kind: str, target: str | None, payload: dict[str, Message]) -> None:
        copied = {}
        for field, body in payload.items():  # a copy, so a later change by the caller is not seen
            clone = type(body)()
            clone.CopyFrom(body)
            copied[field] = clone
        self.published.append((kind, target, copied))

    def of_kind(self, kind: str) -> list[tuple[str, str | None, dict[str, Message]]]:
        return [e for e in self.published if e[0] == kind]

    def bodies(self, kind: str) -> list[Message]:
        """The protobuf body of each event of `kind` (e.g. DeviceReset messages), in order."""
        return [body for k, _, payload in self.published if k == kind for body in payload.values()]

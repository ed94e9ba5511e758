"""The seam through which the API announces changes (the callmanager service passes its NATS bus)."""

from __future__ import annotations

from typing import Protocol


class EventPublisher(Protocol):
    async def publish(self, kind: str, target: str | None, payload: dict) -> None: ...


class MemoryEvents:
    """Keeps published events in a list: for tests and for running the API without a bus."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str | None, dict]] = []

    async def publish(self, kind: str, target: str | None, payload: dict) -> None:
        self.published.append((kind, target, dict(payload)))

    def of_kind(self, kind: str) -> list[tuple[str, str | None, dict]]:
        return [e for e in self.published if e[0] == kind]

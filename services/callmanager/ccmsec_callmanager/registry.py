"""Who is registered here: the in-memory registry, its database mirror, and reset tracking.

The registry is the source of truth for this node (the SCCP connections live here); the
`registrations` table is a mirror for readers elsewhere, written in batches by `RegistryMirror`
so a registration storm costs one transaction per batch instead of one per phone.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import async_sessionmaker

from ccmsec.db import registry as registry_db

log = logging.getLogger("ccmsec.callmanager.registry")

MAX_TRACKED_RESETS = 32  # reset requests whose progress we remember (oldest forgotten first)
MAX_REFUSALS = 200  # recent refusals kept for diagnosis


@dataclass(slots=True)
class RegistrationEntry:
    device: str
    model: str
    security_mode: str
    address: str            # TCP peer "ip:port"
    reported_address: str   # from Register
    nat_suspected: bool
    transport_port: int
    cipher: str
    certificate_fingerprint: str
    certificate_kind: str
    since: float            # time.time()
    connection: object = field(default=None, repr=False)  # the SCCP ServerConnection

    def row(self) -> dict:
        import datetime as _dt
        return {
            "model": self.model, "security_mode": self.security_mode, "address": self.address,
            "reported_address": self.reported_address, "nat_suspected": self.nat_suspected,
            "transport_port": self.transport_port, "cipher": self.cipher,
            "certificate_fingerprint": self.certificate_fingerprint,
            "certificate_kind": self.certificate_kind,
            "since": _dt.datetime.fromtimestamp(self.since, _dt.timezone.utc),
        }


@dataclass(frozen=True, slots=True)
class Refusal:
    device: str
    address: str
    reason: str
    at: float


@dataclass(slots=True)
class ResetProgress:
    """One reset request: which devices it targeted, which got the Reset, which came back.

    A device comes back by registering here after this node sent it the Reset, or — when it was
    not registered here as this node handled the request (`missed`) — after that moment: it booted
    since, whoever reset it. phone-sim handles the same `device.reset` itself and may be first;
    its phone is then already gone when call control looks (issue 13)."""

    request_id: str
    targeted: set[str]
    started: float
    sent: dict[str, float] = field(default_factory=dict)   # device -> time Reset was sent
    back: set[str] = field(default_factory=set)
    missed: dict[str, float] = field(default_factory=dict)  # device -> when it was not here to reset

    @property
    def not_back(self) -> list[str]:
        return sorted(self.targeted - self.back)

    @property
    def complete(self) -> bool:
        return not (self.targeted - self.back)


class Registry:
    """Registered devices of this node, plus reset progress and recent refusals."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.entries: dict[str, RegistrationEntry] = {}
        self.resets: collections.OrderedDict[str, ResetProgress] = collections.OrderedDict()
        self.refusals: collections.deque[Refusal] = collections.deque(maxlen=MAX_REFUSALS)
        self.mirror: RegistryMirror | None = None
        self._changed = asyncio.Event() if _has_loop() else None

    # registrations ---------------------------------------------------------------------------
    def add(self, entry: RegistrationEntry) -> None:
        self.entries[entry.device] = entry
        for progress in self.resets.values():
            sent_at = progress.sent.get(entry.device, progress.missed.get(entry.device))
            if sent_at is not None and entry.since >= sent_at:
                progress.back.add(entry.device)
        if self.mirror is not None:
            self.mirror.upsert(entry)
        self._notify()

    def remove(self, device: str, connection: object | None = None) -> RegistrationEntry | None:
        """Forget `device`; with `connection`, only if that connection still holds it."""
        entry = self.entries.get(device)
        if entry is None or (connection is not None and entry.connection is not connection):
            return None
        del self.entries[device]
        if self.mirror is not None:
            self.mirror.remove(device)
        self._notify()
        return entry

    def refused(self, device: str, address: str, reason: str) -> None:
        self.refusals.append(Refusal(device, address, reason, time.time()))

    def get(self, device: str) -> RegistrationEntry | None:
        return self.entries.get(device)

    def names(self) -> list[str]:
        return sorted(self.entries)

    # resets ---------------------------------------------------------------------------------
    def track_reset(self, targeted: set[str], request_id: str | None = None) -> ResetProgress:
        progress = ResetProgress(request_id or uuid.uuid4().hex, set(targeted), time.time())
        self.resets[progress.request_id] = progress
        while len(self.resets) > MAX_TRACKED_RESETS:
            self.resets.popitem(last=False)
        return progress

    def reset_sent(self, request_id: str, device: str) -> None:
        progress = self.resets.get(request_id)
        if progress is not None:
            progress.sent[device] = time.time()
            progress.missed.pop(device, None)
            progress.back.discard(device)

    def reset_missed(self, request_id: str, devices: set[str]) -> None:
        """Targeted `devices` had no registration here when this node handled the request, so it
        sent them no Reset; each counts as back once it registers here from now on."""
        progress = self.resets.get(request_id)
        if progress is None:
            return
        now = time.time()
        for device in devices & progress.targeted:
            if device not in progress.sent:
                progress.missed.setdefault(device, now)

    # waiting (tests, CLI --wait through gRPC) ------------------------------------------------
    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    async def wait_changed(self, timeout: float) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


class RegistryMirror:
    """Writes registry changes to the `registrations` table, batched every `interval` seconds."""

    def __init__(self, sessionmaker: async_sessionmaker, node: str, interval: float = 0.1) -> None:
        self.db = sessionmaker
        self.node = node
        self.interval = interval
        self._pending: dict[str, dict | None] = {}   # device -> row (upsert) or None (remove)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._writing = asyncio.Lock()  # a flush returns only after every earlier batch is written
        self.flushes = 0

    def upsert(self, entry: RegistrationEntry) -> None:
        self._pending[entry.device] = entry.row()
        self._wake.set()

    def remove(self, device: str) -> None:
        self._pending[device] = None
        self._wake.set()

    async def start(self) -> None:
        async with self.db() as session, session.begin():
            removed = await registry_db.clear_node(session, self.node)
        if removed:
            log.info("cleared %d stale registrations of this node", removed)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.interval)  # gather a batch
            self._wake.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may be busy; try again with the next batch
                log.exception("could not mirror registrations; retrying")
                self._wake.set()
                await asyncio.sleep(1.0)

    async def flush(self) -> None:
        async with self._writing:  # the background batch may be in flight: wait for it
            await self._flush_pending()

    async def _flush_pending(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        upserts = [{"device": d, **row} for d, row in batch.items() if row is not None]
        removals = [d for d, row in batch.items() if row is None]
        try:
            async with self.db() as session, session.begin():
                await registry_db.apply_changes(session, self.node, upserts, removals)
        except BaseException:
            for device, row in batch.items():  # keep what was not written, newer changes win
                self._pending.setdefault(device, row)
            raise
        self.flushes += 1

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        try:
            async with self.db() as session, session.begin():
                await registry_db.clear_node(session, self.node)  # our phones are gone with us
        except Exception:
            log.warning("could not clear this node's registrations on shutdown")
        self._pending.clear()

"""Changes and their events committed together (issue 9 §4): stage in the change's transaction,
relay until JetStream acknowledges.

    async with db() as session, session.begin():
        ...the change...
        ids = stage_actions(session, origin, actions, reason=...)   # rows in event_outbox
    delivered = await relay.wait_sent(ids, timeout)                  # False: "pending delivery"

* A rolled-back change leaves no outbox row: nothing is ever sent for it.
* A committed change's events are published by the owning service's `OutboxRelay`, in order, each
  with its event id as `Nats-Msg-Id`; a row is marked sent only after JetStream's ack — the rows
  acknowledged in one round (up to `BATCH`) in one transaction, one UPDATE. While NATS is
  down the relay retries with back-off, and the rows wait in the database (they survive a restart
  of the service too); the caller reports the change as *pending delivery* instead of done.
* Exactly once in effect: a row re-sent after a lost ack — or after its mark was lost (the relay
  stopped, or the database failed, between the ack and the round's UPDATE) — carries the same id,
  so JetStream drops it within its duplicate window and every consumer drops an id it already
  handled (`handled_events`).
* A row that can never be published — its payload does not decode, its event has no subject,
  the server does not let this role publish it (BUS-2), NATS/JetStream refuses the message itself
  (`bus.PublishRefused`) — is *set aside*: marked (`last_error` starts with "set aside: ", `sent_at`
  stays empty), logged once as an error and counted in `ccmsec_outbox_set_aside_total`; the rows
  behind it go on; it is deleted once older than the stream keeps an event (7 days: `prune`,
  with the acknowledged rows). Only such a refusal sets a row aside: while NATS is down, does not answer, or
  JetStream refuses for a reason of its own state (its store full: 400 err_code 10002), the relay
  keeps the order and retries (one failing row holds back those behind it).
* `ccmsec_outbox_depth{service}` is the number of rows not yet acknowledged (set-aside rows not
  counted: they wait for nobody).
* The operator sees the set-aside rows and tries them again once the cause is fixed, through the
  owning service only (gRPC `ccmsec.v1.Outbox`, `ccmsec outbox list|resend`): `list_set_aside`
  gives id, subject, time, reason and payload size — never the payload —, `requeue` clears the
  mark of the rows named (or all), so the relay tries them again in their order; refused again,
  a row is set aside again (logged and counted again). A resend restarts the row's clock (its
  staged time becomes the resend's: pruned 7 days after the resend) and is audited: an
  `owner.change` `outbox.resend` (who, which service, the rows or "all") staged with the re-queue.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable

from prometheus_client import Counter
from sqlalchemy import delete, func, literal, select, update

from ccmsec.db.outbox import OutboxRow
from ccmsec.policy.resets import Action
from ccmsec.runtime import bus as bus_mod
from ccmsec.runtime.actions import describe, event_bodies
from ccmsec.runtime.logs import bind_trace_id, clean_trace_id
from ccmsec.runtime.metrics import OUTBOX_DEPTH, REGISTRY
from ccmsec_proto import events_pb2

log = logging.getLogger("ccmsec.outbox")

OUTBOX_RELAYED = Counter("ccmsec_outbox_relayed_total", "outbox events acknowledged by JetStream",
                         ["service", "node"], registry=REGISTRY)
OUTBOX_SET_ASIDE = Counter("ccmsec_outbox_set_aside_total",
                           "outbox events set aside: refused for good, never to be published",
                           ["service", "node"], registry=REGISTRY)
OUTBOX_FAILURES = Counter("ccmsec_outbox_publish_failures_total",
                          "outbox publish attempts that failed (NATS down or no ack)",
                          ["service", "node"], registry=REGISTRY)

DELIVERY_WAIT = 3.0      # seconds a request waits for its events' acks before saying "pending"
BATCH = 100
RETRY_MIN, RETRY_MAX = 0.2, 5.0
KEEP_SENT = _dt.timedelta(hours=1)  # acknowledged rows kept this long (inspection), then deleted
# Set-aside rows kept (for inspection) as long as the stream keeps an event, then deleted: without
# it every refused event stayed in event_outbox for ever.
KEEP_SET_ASIDE = _dt.timedelta(seconds=bus_mod.STREAM_MAX_AGE)
_REMEMBER = 10_000       # acknowledged ids remembered in memory for wait_sent
SET_ASIDE = "set aside: "  # last_error of a row refused for good: the relay no longer picks it

LIST_DEFAULT, LIST_MAX = 100, 1000   # set-aside rows one listing returns: default, most
REQUEUE_MAX = 1000                   # ids one re-queue may name
REQUEUED = "re-queued by the operator after: "  # last_error of a row put back in the queue


class NotSetAside(LookupError):
    """A re-queue named rows that are not set aside on this node (unknown, sent, waiting)."""

    def __init__(self, ids: list[int]):
        shown = ", ".join(str(i) for i in ids[:20]) + (f" (+{len(ids) - 20} more)" if len(ids) > 20 else "")
        super().__init__(f"no set-aside outbox row with id {shown} on this node (see the list)")
        self.ids = ids


@dataclass(frozen=True)
class SetAsideRow:
    """What an operator sees of a set-aside row: never its payload, only the payload's size."""

    id: int
    event_id: str
    kind: str
    subject: str
    created_at: _dt.datetime
    reason: str
    payload_bytes: int
    attempts: int


PublishEvent = Callable[[events_pb2.Event, "str | None"], Awaitable[object]]


def stage(session, origin: str, kind: str, target: str | None = None, **body) -> events_pb2.Event:
    """Add one event to the outbox in `session`'s transaction; returns it (its id is fixed now)."""
    event = bus_mod.make_event(kind, origin, **body)
    bus_mod.subject_for(kind, target)  # an unknown kind is refused before anything is committed
    session.add(OutboxRow(event_id=event.id, origin=origin, kind=kind, target=target,
                          payload=event.SerializeToString(), attempts=0, last_error=""))
    return event


def stage_actions(session, origin: str, actions: Iterable[Action], *, reason: str = "",
                  request_id: str = "") -> tuple[list[str], list[str]]:
    """The events of policy actions (the one mapping, `ccmsec.runtime.actions`) into the outbox;
    returns (event ids, descriptions)."""
    ids, described = [], []
    for kind, target, body in event_bodies(actions, reason=reason, request_id=request_id):
        ids.append(stage(session, origin, kind, target, **body).id)
        described.append(describe(kind, target, body))
    return ids, described


def stage_owner_change(session, origin: str, *, actor: str, action: str, target: str | None,
                       detail: str = "", rule: str | None = None, status: int = 200,
                       door: str = "grpc", remote: str | None = None) -> events_pb2.Event:
    """The audit record of a write by an owner that is not the audit log's (ctl-provider, capf, tftp-signer):
    an `owner.change` event in the write's own transaction; callmanager, the only writer of
    `audit_log`, records it (issue 9 §5). A rolled-back write leaves no record; a committed one
    is recorded once, even after a NATS outage. `detail` must hold no secret."""
    return stage(session, origin, "owner.change", None, owner_change=events_pb2.OwnerChange(
        actor=(actor or "unknown")[:128], action=action[:64], target=(target or "")[:128],
        detail=detail[:1000], rule=(rule or "")[:16], status=status, door=door[:16],
        remote=(remote or "")[:64]))


class OutboxRelay:
    """Publishes this node's committed outbox rows until JetStream acknowledges each."""

    def __init__(self, db, publish_event: PublishEvent, *, origin: str, role: str):
        self.db, self.publish_event, self.origin, self.role = db, publish_event, origin, role
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._sent: OrderedDict[str, None] = OrderedDict()
        self._set_aside: OrderedDict[str, None] = OrderedDict()
        self.set_aside_count = 0   # rows this relay set aside since it started
        # rows of this origin set aside in the database now (those before a restart included),
        # what `Status` shows as outbox_set_aside: recounted at start and after every change
        self.set_aside_stored = 0
        self.depth = 0
        self.last_error = ""
        self._gauge = OUTBOX_DEPTH.labels(role)
        self._relayed = OUTBOX_RELAYED.labels(role, origin)
        self._failures = OUTBOX_FAILURES.labels(role, origin)
        self._set_aside_total = OUTBOX_SET_ASIDE.labels(role, origin)

    def kick(self) -> None:
        self._wake.set()

    async def wait_sent(self, event_ids: Iterable[str], timeout: float = DELIVERY_WAIT) -> bool:
        """True once JetStream acknowledged every one of `event_ids`; False after `timeout`, or
        as soon as one of them was set aside (it will never be acknowledged)."""
        wanted = set(event_ids)
        if not wanted:
            return True
        self.kick()

        def sent() -> bool:
            return wanted.issubset(self._sent.keys())

        def settled() -> bool:
            return all(i in self._sent or i in self._set_aside for i in wanted)

        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(settled), timeout)
        except asyncio.TimeoutError:
            pass
        return sent()

    @staticmethod
    def _waiting():
        """Rows still to publish: not acknowledged, not set aside."""
        return (OutboxRow.sent_at.is_(None)) & (OutboxRow.last_error.not_like(SET_ASIDE + "%"))

    async def pending(self) -> int:
        async with self.db() as session:
            return await session.scalar(select(func.count()).select_from(OutboxRow).where(
                OutboxRow.origin == self.origin, self._waiting())) or 0

    async def _mark_sent(self, rows: list[OutboxRow]) -> None:
        """The acknowledged rows of one round marked sent together: one UPDATE, one transaction
        (not one per row). If it fails, they stay unsent and are published again next round under
        the same ids — dropped as duplicates (JetStream's window, then `handled_events`)."""
        async with self.db() as session, session.begin():
            await session.execute(update(OutboxRow).where(
                OutboxRow.seq.in_([row.seq for row in rows])).values(
                sent_at=_dt.datetime.now(_dt.timezone.utc), attempts=OutboxRow.attempts + 1,
                last_error=""))
        for row in rows:
            self._sent[row.event_id] = None
        while len(self._sent) > _REMEMBER:
            self._sent.popitem(last=False)
        self._relayed.inc(len(rows))
        self.depth = max(0, self.depth - len(rows))
        self._gauge.set(self.depth)
        async with self._changed:
            self._changed.notify_all()

    async def _mark_failed(self, row: OutboxRow, error: str) -> None:
        self._failures.inc()
        self.last_error = error
        try:
            async with self.db() as session, session.begin():
                await session.execute(update(OutboxRow).where(OutboxRow.seq == row.seq).values(
                    attempts=row.attempts + 1, last_error=error[:300]))
        except Exception:  # the count is informative; the row stays unsent either way
            log.debug("could not record an outbox failure", exc_info=True)

    async def _mark_set_aside(self, refused: list[tuple[OutboxRow, str]]) -> None:
        """Rows refused for good, marked in one transaction so that no round picks them again
        (the owning service's relay is their only writer). Logged once each — the mark is what
        keeps it once; if the mark fails the row is tried, and logged, again next round."""
        async with self.db() as session, session.begin():
            for row, reason in refused:
                await session.execute(update(OutboxRow).where(OutboxRow.seq == row.seq).values(
                    attempts=row.attempts + 1, last_error=(SET_ASIDE + reason)[:300]))
        for row, reason in refused:
            log.error("outbox: event set aside, it can never be published: %s", reason,
                      extra={"origin": self.origin, "event_id": row.event_id, "kind": row.kind,
                             "seq": row.seq})
            self._set_aside[row.event_id] = None
        while len(self._set_aside) > _REMEMBER:
            self._set_aside.popitem(last=False)
        self.set_aside_count += len(refused)
        self.set_aside_stored += len(refused)
        self._set_aside_total.inc(len(refused))
        self.depth = max(0, self.depth - len(refused))
        self._gauge.set(self.depth)
        async with self._changed:
            self._changed.notify_all()

    async def relay_once(self) -> bool:
        """Publish the pending rows (up to BATCH) in order, then mark the acknowledged ones sent in
        one transaction; False when a row could not be published (those before it are marked).
        A row refused for good is set aside and the round goes on with the next."""
        async with self.db() as session:
            rows = (await session.scalars(select(OutboxRow).where(
                OutboxRow.origin == self.origin, self._waiting())
                .order_by(OutboxRow.seq).limit(BATCH))).all()
        self.depth = len(rows) if len(rows) < BATCH else await self.pending()
        self._gauge.set(self.depth)
        acknowledged: list[OutboxRow] = []
        refused: list[tuple[OutboxRow, str]] = []
        failed: tuple[OutboxRow, str] | None = None
        for row in rows:
            try:
                event = events_pb2.Event.FromString(row.payload)
            except Exception as exc:  # nothing to publish, now or ever
                refused.append((row, f"the stored event does not decode ({type(exc).__name__})"))
                continue
            try:
                # published under the trace id of the request that staged it, not the relay's
                with bind_trace_id(clean_trace_id(event.trace_id) or event.id):
                    await self.publish_event(event, row.target)
            except asyncio.CancelledError:
                # stopped mid-batch: the acknowledged rows stay unsent in the database and are
                # published again (same ids, dropped as duplicates) by the next relay
                raise
            except bus_mod.PublishRefused as exc:  # refused for good: retrying would block the rest
                refused.append((row, str(exc)))
                continue
            except Exception as exc:  # NATS down, no ack in time, stream missing: retry later
                failed = (row, f"{type(exc).__name__}: {exc}")
                break
            acknowledged.append(row)
        if acknowledged:
            await self._mark_sent(acknowledged)
        if refused:
            await self._mark_set_aside(refused)
        if failed is not None:
            await self._mark_failed(*failed)
            return False
        if len(rows) == BATCH:
            self._wake.set()  # more behind this batch
        return True

    def _set_aside_rows(self):
        return ((OutboxRow.origin == self.origin) & OutboxRow.sent_at.is_(None)
                & OutboxRow.last_error.like(SET_ASIDE + "%"))

    async def list_set_aside(self, limit: int = LIST_DEFAULT) -> tuple[list[SetAsideRow], int]:
        """This origin's set-aside rows, oldest first (at most `limit`, bounded by LIST_MAX), and
        how many there are in all. The payload is not read out: only its size."""
        limit = max(1, min(int(limit or LIST_DEFAULT), LIST_MAX))
        async with self.db() as session:
            total = await session.scalar(select(func.count()).select_from(OutboxRow).where(
                self._set_aside_rows())) or 0
            found = (await session.execute(select(
                OutboxRow.seq, OutboxRow.event_id, OutboxRow.kind, OutboxRow.target,
                OutboxRow.created_at, OutboxRow.last_error, func.length(OutboxRow.payload),
                OutboxRow.attempts).where(self._set_aside_rows()).order_by(OutboxRow.seq)
                .limit(limit))).all()
        rows = []
        for seq, event_id, kind, target, created, error, size, attempts in found:
            try:
                subject = bus_mod.subject_for(kind, target, self.role)
            except bus_mod.BusError:
                subject = ""  # its kind (or target) has no subject: the reason says so
            if created is not None and created.tzinfo is None:  # SQLite gives naive UTC back
                created = created.replace(tzinfo=_dt.timezone.utc)
            rows.append(SetAsideRow(seq, event_id, kind, subject, created,
                                    error[len(SET_ASIDE):], int(size or 0), attempts))
        return rows, total

    async def requeue(self, ids: Iterable[int] | None = None, *, audit: dict | None = None,
                      now: _dt.datetime | None = None) -> list[int]:
        """Put set-aside rows back in the queue (`ids`, or every one with None): the relay tries
        them again in their order, and sets aside again (logged, counted) one refused again.
        Nothing changes if one of `ids` is not a set-aside row of this origin (NotSetAside).

        A resend restarts each row's clock: its `created_at` becomes the resend time (`now`), so
        a row set aside again is kept KEEP_SET_ASIDE from the resend, not from its first staging
        (the listing's staged time is then the resend's). `audit` (ChangeActor.audit(): actor,
        door, remote) stages the resend's audit record (`owner.change` `outbox.resend`: this
        service, the rows or "all") in the same transaction: audited if and only if re-queued."""
        now = now or _dt.datetime.now(_dt.timezone.utc)
        wanted = None if ids is None else sorted({int(i) for i in ids})
        if wanted is not None and len(wanted) > REQUEUE_MAX:
            raise ValueError(f"at most {REQUEUE_MAX} ids at once (or all)")
        # One UPDATE ... RETURNING, whatever the number of rows: a row-by-row re-queue of --all held
        # the database's write lock for seconds per ten thousand rows (the service's own writers
        # waiting) and outlived the caller's deadline.
        requeued = func.substr(literal(REQUEUED) + func.substr(OutboxRow.last_error, len(SET_ASIDE) + 1),
                               1, 300)
        async with self.db() as session, session.begin():
            change = update(OutboxRow).where(self._set_aside_rows())
            if wanted is not None:
                present = set((await session.scalars(select(OutboxRow.seq).where(
                    self._set_aside_rows(), OutboxRow.seq.in_(wanted)))).all())
                missing = sorted(set(wanted) - present)
                if missing:
                    raise NotSetAside(missing)
                change = change.where(OutboxRow.seq.in_(wanted))
            found = sorted((await session.execute(change.values(
                last_error=requeued, created_at=now).returning(
                OutboxRow.seq, OutboxRow.event_id).execution_options(synchronize_session=False))).all())
            if found and audit is not None:
                shown = ",".join(str(seq) for seq, _ in found[:100]) + (" ..." if len(found) > 100 else "")
                which = "all" if wanted is None else "ids"
                stage_owner_change(session, self.origin, action="outbox.resend",
                                   target=f"{self.role}/{self.origin}",
                                   detail=f"{which}: {len(found)} set-aside row(s) re-queued: {shown}",
                                   **audit)
        for _seq, event_id in found:
            self._set_aside.pop(event_id, None)
        if found:
            log.warning("outbox: %d set-aside event(s) re-queued by the operator", len(found),
                        extra={"origin": self.origin, "ids": ",".join(str(s) for s, _ in found[:50])})
            self.kick()
        await self.recount_set_aside()
        return [seq for seq, _ in found]

    async def prune(self, now: _dt.datetime | None = None) -> None:
        """Delete this origin's rows acknowledged over KEEP_SENT ago, and its set-aside rows staged
        over KEEP_SET_ASIDE ago; a row still waiting to be published is never deleted."""
        now = now or _dt.datetime.now(_dt.timezone.utc)
        async with self.db() as session, session.begin():
            await session.execute(delete(OutboxRow).where(
                OutboxRow.origin == self.origin, OutboxRow.sent_at.is_not(None),
                OutboxRow.sent_at < now - KEEP_SENT))
            await session.execute(delete(OutboxRow).where(
                OutboxRow.origin == self.origin, OutboxRow.sent_at.is_(None),
                OutboxRow.last_error.like(SET_ASIDE + "%"), OutboxRow.created_at < now - KEEP_SET_ASIDE))
        await self.recount_set_aside()

    async def recount_set_aside(self) -> None:
        """`set_aside_stored` from the database; informative, so a failure only keeps the last."""
        try:
            async with self.db() as session:
                self.set_aside_stored = await session.scalar(select(func.count()).select_from(
                    OutboxRow).where(self._set_aside_rows())) or 0
        except Exception:
            log.debug("could not count the set-aside outbox rows", exc_info=True)

    async def run(self) -> None:
        """Until cancelled: relay whenever kicked, and on a timer while anything is pending."""
        delay = RETRY_MIN
        rounds = 0
        await self.recount_set_aside()  # rows set aside before a restart are still there
        while True:
            self._wake.clear()  # before reading: a kick during the round triggers the next one
            try:
                ok = await self.relay_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database itself failed: log once per round and retry
                log.exception("outbox relay round failed")
                ok = False
            if ok:
                if self.last_error:
                    log.info("outbox delivering again", extra={"origin": self.origin})
                    self.last_error = ""
                delay = RETRY_MIN
            else:
                if delay == RETRY_MIN:
                    log.warning("outbox: events pending delivery (NATS unreachable?)",
                                extra={"origin": self.origin, "pending": self.depth,
                                       "error": self.last_error})
                delay = min(delay * 2, RETRY_MAX)
            rounds += 1
            if rounds % 1000 == 0:
                try:
                    await self.prune()
                except Exception:
                    log.debug("outbox prune failed", exc_info=True)
            try:
                await asyncio.wait_for(self._wake.wait(), delay if not ok else 5.0)
            except asyncio.TimeoutError:
                pass

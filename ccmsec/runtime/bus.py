"""The event bus: NATS JetStream with one durable stream for events that must not be lost.

Subjects carry the publisher's role: `ccmsec.<role>.<kind>`, and `ccmsec.<role>.service.restart.<target>`
for restarts (`ccmsec.runtime.bus_policy`: who may publish what). Every connection authenticates
with its own nkey (the seed `nats.nk` in its identity folder, BUS-1); the server lets it publish
only under its own role (BUS-2), and every consumer drops and counts an event whose publisher the
table does not allow (BUS-3). A connection receives only on its own inbox prefix and binds only
its own node's declared durable consumers (BUS-6). Each event is the protobuf `ccmsec.v1.Event` envelope; its unique id
goes in the `Nats-Msg-Id` header (JetStream drops duplicate publishes) and handlers record the ids
they handled (a redelivery after a crash changes nothing). The publisher's trace id rides in the
`Ccmsec-Trace-Id` header and is bound while the handler runs (`ccmsec.runtime.logs`).

A consumer handles an event only from the stream whose settings it judged (BUS-2): each binding
is proven once, right after it is made (`_prove`: the consumer, then the stream — created before the
consumer and still there, so the one it reads), and events wait until then. A stream swapped for
one that rewrites subjects between a check and a binding is caught before its first event, not at
the next check.

The bus heals (BUS-5): `check()` finds a lost stream (deleted, or NATS restarted without its
store) or a lost durable consumer, recreates the stream and rebinds each consumer from just after
its last-seen ack floor (from the last moment it was known to exist when the stream itself was made
again), and says what is wrong until then (the service reports DEGRADED).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import inspect
import logging
import os
import stat
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import nats
from nats.errors import NoServersError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from ccmsec.runtime import bus_policy
from ccmsec.runtime.bus_policy import (  # noqa: F401  (re-exported: the bus's one vocabulary)
    KINDS, STREAM, SUBJECT_PREFIX, TARGETED_KINDS, SubjectError, check_event,
)
from ccmsec.runtime.logs import TRACE_HEADER, bind_trace_id, clean_trace_id, current_trace_id
from ccmsec.runtime.metrics import EVENT_LAG, EVENTS_HANDLED, EVENTS_REFUSED
from ccmsec_proto import events_pb2

log = logging.getLogger("ccmsec.bus")

SEED_FILE = "nats.nk"   # the nkey seed of an identity folder (0600), next to tls.key

# A handler returns None once the event is handled, or an awaitable for work it started aside (so
# as not to hold back the events behind it): the event is then acknowledged when that work ends.
Handler = Callable[[events_pb2.Event], Awaitable[Awaitable[Any] | None]]
# While work started aside runs longer than the consumer's ack_wait, the event is marked in
# progress this often so that JetStream does not deliver it again meanwhile.
IN_PROGRESS_EVERY = 10.0
# Every consumer's JetStream settings: an unacknowledged delivery comes again after ACK_WAIT
# seconds, at most MAX_DELIVER times.
ACK_WAIT = 30
MAX_DELIVER = 20
# The most work started aside may keep its event in progress. Work still running then (stuck: a
# lock never released, a peer that never answers) is cancelled, logged as an error and its event
# given back (nak'ed, delivered again: MAX_DELIVER bounds the tries) — in progress for ever, the
# event was neither handled nor delivered again, and nothing said so.
# Why 30 ack waits (900 s) and not a value derived from the work: the only work started aside is
# phone-sim's reset of one node's phones (RST-9), which stops them one by one, and a phone's stop
# has no upper bound to multiply by the fleet size — it cancels the phone's boot task until that
# ends (cancel_and_wait repeats the cancel, unbounded) and waits for any reset of the same phone
# already in hand; only its connections' closes are bounded (5 s per wait, two waits per
# connection, a standby one too: 20 s). A bound from those, MAX_PHONES (20,000) × 20 s, is more
# than four days — no guard against stuck work at all — while a stop's usual cost (milliseconds:
# a socket closed) puts a whole fleet within a minute. So this is a policy, not a derivation:
# long enough that a node's legitimate resets are never cut, short enough that stuck work is
# noticed within a quarter of an hour. A reset cut anyway is not lost and not repeated: its
# redelivery skips the phones that booted since the event, so each delivery makes progress, and
# MAX_DELIVER × WORK_LIMIT (5 h) bounds the whole.
WORK_LIMIT = 30.0 * ACK_WAIT
SeenCheck = Callable[[str, str], Awaitable[bool]]
SeenMark = Callable[[str, str], Awaitable[None]]
Refused = Callable[[str, str, str], None]   # (publisher role, kind, reason)

# The role that published the event being handled (from its subject), for handlers that care.
PUBLISHER: contextvars.ContextVar[str] = contextvars.ContextVar("ccmsec_event_publisher", default="")


class BusError(Exception):
    pass


# JetStream's 400 answers to a publish that trying again cannot change: the message itself is
# over the stream's size limit (10054) or its headers over 64 kB (10097). Any other error code is
# retried: dropping an event is worse than holding the outbox back.
_REFUSED_FOR_GOOD = frozenset({10054, 10097})


class PublishRefused(BusError):
    """A publish that trying again cannot make succeed: the event has no subject (unknown kind or
    target), the server does not let this role publish it (BUS-2), or NATS/JetStream refuses the
    message itself (bigger than the server or the stream allows). The outbox sets
    such a row aside instead of retrying it for ever in front of every later row."""


def subject_for(kind: str, target: str | None = None, publisher: str = "*") -> str:
    """`bus_policy.subject_for`, raising BusError; publisher `*` is a consumer's pattern."""
    try:
        return bus_policy.subject_for(kind, target, publisher)
    except SubjectError as exc:
        raise BusError(str(exc)) from None


def make_event(kind: str, origin: str, **body) -> events_pb2.Event:
    """make_event('device.reset', 'callmanager', device_reset=events_pb2.DeviceReset(...))."""
    event = events_pb2.Event(id=uuid.uuid4().hex, kind=kind, origin=origin,
                             occurred_unix_ms=int(time.time() * 1000), trace_id=current_trace_id() or "")
    for name, value in body.items():
        if isinstance(value, str):
            setattr(event, name, value)
        else:
            getattr(event, name).CopyFrom(value)
    return event


def read_seed(folder: Path) -> bytes | None:
    """The nkey seed of an identity folder, or None when it has none. Refuses a seed others may read."""
    path = Path(folder) / SEED_FILE
    if not path.is_file():
        return None
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise BusError(f"{path} is readable by others (mode {mode:o}); it must be 0600")
    seed = path.read_bytes().strip()
    if not seed.startswith(b"SU") or len(seed) > 128:
        raise BusError(f"{path} is not an nkey user seed")
    return seed


def public_key_of_seed(seed: bytes) -> str:
    import nkeys

    try:
        return nkeys.from_seed(seed).public_key.decode()
    except Exception:
        raise BusError("the nkey seed does not decode") from None


STREAM_MAX_AGE = 7 * 24 * 3600  # seconds the stream keeps an event; none older is delivered again


def stream_config() -> StreamConfig:
    return StreamConfig(
        name=STREAM, subjects=[f"{SUBJECT_PREFIX}.>"], storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS, max_age=STREAM_MAX_AGE, duplicate_window=120.0,
    )


_GUARDED = ("subjects", "storage", "retention", "max_age", "max_msgs", "max_bytes",
            "max_msgs_per_subject", "discard")


def _drift(config: StreamConfig) -> str:
    """What of `config` differs from the stream ccmsec creates, in the fields that decide whether
    events are kept ("" when none)."""
    wanted = stream_config()
    defaults = {"max_msgs": -1, "max_bytes": -1, "max_msgs_per_subject": -1, "discard": "old"}
    diffs = []
    for name in _GUARDED:
        have, want = getattr(config, name, None), getattr(wanted, name, None)
        want = defaults.get(name, want) if want is None else want
        have, want = (getattr(v, "value", v) for v in (have, want))
        if isinstance(want, float) or isinstance(have, float):
            same = have is not None and want is not None and abs(float(have) - float(want)) < 1
        else:
            same = have == want
        if not same:
            diffs.append(f"{name} {have!r}, not {want!r}")
    untrusted = _untrusted(config)
    if untrusted:
        diffs.append(untrusted)
    return "; ".join(diffs)


# Stream settings under which the subject a consumer sees is not (only) the one a publisher used on
# this stream: a transform rewrites subjects as they are stored, sources and a mirror bring in
# messages from other streams, republish sends copies on. Any service may create the stream when
# it is missing (BUS-5), so one that made it with a transform from its own prefix to another role's
# (`ccmsec.phone-sim.access.denied` -> `ccmsec.cli.service.restart.callmanager`) would publish as
# that role: while the stream has any of them, no event is handled (BUS-2/BUS-3).
_SUBJECT_REWRITING = ("subject_transform", "republish", "mirror", "sources")


def _untrusted(config: StreamConfig) -> str:
    """Why subjects in a stream of `config` do not prove the publisher ("" when they do)."""
    found = [name for name in _SUBJECT_REWRITING if getattr(config, name, None)]
    return (f"it has {' and '.join(found)}, so a subject no longer proves who published"
            if found else "")


@dataclass
class _Consumer:
    subject: str
    durable: str
    callback: Callable[[Any], Awaitable[None]]
    config: ConsumerConfig
    sub: Any = None
    seen_at: float = field(default_factory=time.time)   # last moment it was known to exist
    # Its ack floor then (the stream sequence below which every event was acknowledged), and the
    # stream it was read from (its creation time): a consumer lost with events outstanding —
    # delivered and not acknowledged, or not delivered yet — is rebound from there.
    ack_floor: int | None = None
    stream_created: object = None
    # The stream this binding is proven to read from (`EventBus._prove`): until then no event of it
    # is handled. `untrusted` is that stream's judgement, kept with the binding: a later judgement
    # of another stream (the operator's restored one) says nothing about this one.
    proven: asyncio.Event = field(default_factory=asyncio.Event)
    untrusted: str = ""
    proven_on: object = None   # creation time of the stream it was proven to read

    def unproven(self) -> None:
        """A new binding (subscribe or rebind): nothing of it is handled before it is proven."""
        self.proven = asyncio.Event()
        self.untrusted = ""
        self.proven_on = None


class EventBus:
    """One authenticated NATS connection. `role` is the publisher's role (the subject prefix the
    server lets it use); `seed` its nkey seed (None: no credentials, for a server without users)."""

    def __init__(self, url: str, name: str, *, role: str | None = None, seed: bytes | None = None,
                 connect_timeout: float = 30.0):
        self.url, self.name, self.role, self.connect_timeout = url, name, role, connect_timeout
        self._seed = seed
        self.nc: nats.NATS | None = None
        self.js = None
        self._consumers: list[_Consumer] = []
        self._closing = False
        # Events whose handler started its work aside: acknowledged when that work has ended.
        self._finishing: set[asyncio.Task] = set()
        self._given_back: list = []   # their messages whose work was cancelled: nak'ed at close
        self._violations: list[tuple[float, str]] = []   # (when, server's permissions error)
        self._violated = asyncio.Event()   # set (and replaced) at each permissions error
        self._auth_refused = False
        # How the existing stream's configuration differs from ours ("" when it does not): a
        # stream made while ours was missing with limits that lose events (BUS-5).
        self.stream_drift = ""
        # Why the stream's subjects cannot be trusted ("" when they can): every event is dropped.
        self.stream_untrusted = ""
        self.stream_created = None   # the stream's creation time, as last read

    @property
    def _subs(self) -> list:
        """The live subscriptions (tests wait for a service's consumers through this)."""
        return [c.sub for c in self._consumers if c.sub is not None]

    @classmethod
    def for_identity(cls, url: str, name: str, folder: Path, *, role: str,
                     connect_timeout: float = 30.0) -> "EventBus":
        """A bus with the credentials of an identity folder (its `nats.nk`)."""
        return cls(url, name, role=role, seed=read_seed(folder), connect_timeout=connect_timeout)

    @classmethod
    def for_cli(cls, data_dir: Path, url: str, name: str = "ccmsec-cli", *,
                connect_timeout: float = 30.0) -> "EventBus":
        """The command line's bus: the `cli` identity of DATA/identities/clients/cli (issued by
        `ccmsec up`), publishing as `cli`."""
        from ccmsec.runtime.identity import client_identity_dir

        return cls.for_identity(url, name, client_identity_dir(data_dir, "cli"), role="cli",
                                connect_timeout=connect_timeout)

    async def connect(self) -> None:
        """Connect, retrying until connect_timeout; afterwards nats-py reconnects by itself."""
        deadline = time.monotonic() + self.connect_timeout
        delay = 0.1
        auth = {}
        if self._seed:
            # Replies and push deliveries come to this user's own inbox: the server lets no other
            # user subscribe to it, and lets this one subscribe to no other (BUS-6).
            auth = {"nkeys_seed_str": self._seed.decode(),
                    "inbox_prefix": bus_policy.inbox_prefix(public_key_of_seed(self._seed))}
        while True:
            remaining = deadline - time.monotonic()
            try:
                # nats-py keeps retrying the first connection too; bound each attempt ourselves.
                self.nc = await asyncio.wait_for(self._unless(nats.connect(
                    servers=[self.url], name=self.name, connect_timeout=2,
                    allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                    disconnected_cb=self._on_disconnect, reconnected_cb=self._on_reconnect,
                    error_cb=self._on_error, **auth,
                ), lambda: self._auth_refused), timeout=max(0.5, min(remaining, 5.0)))
                break
            except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
                if self._auth_refused or "authorization" in str(exc).lower():
                    # The server answered and said no: retrying would not change its mind.
                    who = "no credentials" if not self._seed else "its nkey is not a user of this server"
                    raise BusError(f"NATS at {self.url} refused {self.name}: authorization violation "
                                   f"({who})") from None
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
        text = str(exc)
        if "authorization violation" in text.lower() and self.js is None:
            self._auth_refused = True   # while connecting: the server does not know these credentials
            self._violated.set()
            self._violated = asyncio.Event()
        if "permissions violation" in text.lower():
            self._violations = [v for v in self._violations if time.monotonic() - v[0] < 30][-20:]
            self._violations.append((time.monotonic(), text))
            self._violated.set()
            self._violated = asyncio.Event()
            log.warning("NATS refused: %s", text[:300])
        else:
            log.debug("NATS error: %s", exc)

    def _refusal(self, subject: str, since: float) -> str | None:
        for when, text in self._violations:
            if when >= since and subject.lower() in text.lower():
                return text
        return None

    async def _or_refused(self, request: Awaitable, subject: str, since: float):
        """`request`'s answer, or nats' TimeoutError as soon as the server refuses `subject`: it
        drops a refused request unanswered, so waiting out the request's timeout only delays the
        clear error (callers name the refusal)."""
        return await self._unless(request, lambda: self._refusal(subject, since))

    async def _unless(self, request: Awaitable, refused: Callable[[], object]):
        """`request`'s answer, or nats' TimeoutError once `refused()` is true (checked at each
        error the server reports)."""
        task = asyncio.ensure_future(request)
        try:
            while True:
                violated = self._violated
                if refused():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    raise nats.errors.TimeoutError
                waiter = asyncio.ensure_future(violated.wait())
                try:
                    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                if task.done():
                    return task.result()
        except asyncio.CancelledError:
            task.cancel()
            raise

    async def ensure_stream(self) -> bool:
        """The stream exists afterwards (True when this call created it)."""
        try:
            self._judge_stream(await self.js.stream_info(STREAM))
            return False
        except NotFoundError:
            pass
        started = time.monotonic()
        try:
            self._judge_stream(await self.js.add_stream(stream_config()))
            return True
        except Exception as exc:  # another service created it at the same moment, or we may not
            try:
                self._judge_stream(await self.js.stream_info(STREAM))
                return False
            except NotFoundError:
                refused = self._refusal(f"$JS.API.STREAM.CREATE.{STREAM}", started)
                raise BusError(f"cannot create stream {STREAM}: {refused or exc}") from None

    def _judge_stream(self, info) -> None:
        config = info.config
        self.stream_created = getattr(info, "created", None)
        self.stream_drift = _drift(config)
        untrusted = _untrusted(config)
        if untrusted and not self.stream_untrusted:
            log.error("event stream %s cannot be trusted: %s; no event is handled until the bus "
                      "operator restores it", STREAM, untrusted, extra={"rule": "BUS-2"})
        self.stream_untrusted = untrusted

    async def publish(self, event: events_pb2.Event, target: str | None = None) -> int:
        """Publish durably under this bus's role; returns the stream sequence number."""
        if self.js is None:
            raise BusError("event bus not connected")
        if not self.role:
            raise BusError("this bus has no publisher role")
        try:
            subject = subject_for(event.kind, target, self.role)
        except BusError as exc:
            raise PublishRefused(str(exc)) from None
        started = time.monotonic()
        # The server quotes the subject it refuses: matched with its quotes, a refusal of a longer
        # subject (`...device.reset.SEP1.x`) published meanwhile is not taken for this one's, which
        # would abort it and set its outbox row aside for good.
        quoted = f'"{subject}"'
        try:
            ack = await self._or_refused(self.js.publish(
                subject, event.SerializeToString(), timeout=5, headers={
                    "Nats-Msg-Id": event.id, TRACE_HEADER: current_trace_id() or event.id}), quoted, started)
        except nats.errors.TimeoutError:
            refused = self._refusal(quoted, started)
            if refused:
                raise PublishRefused(f"NATS refused to let {self.role} publish {subject}: {refused}") from None
            raise BusError(f"no acknowledgement from the event stream for {subject} (is NATS up and "
                           f"the stream {STREAM} there?)") from None
        except nats.errors.MaxPayloadError:
            raise PublishRefused(f"event {event.kind} is larger than NATS accepts "
                                 f"({event.ByteSize()} bytes)") from None
        except BadRequestError as exc:
            # Only a 400 about this message itself is for good. Other 400s describe the server's
            # state - 10002 'resource limits exceeded for account' while the store is full clears
            # as events age out - and setting the row aside would lose its event: retry those.
            if exc.err_code in _REFUSED_FOR_GOOD:
                raise PublishRefused(f"JetStream refused {subject}: {exc.description or exc}") from None
            raise BusError(f"JetStream did not take {subject} now: {exc.description or exc} "
                           f"(err_code {exc.err_code})") from None
        except NoServersError as exc:
            raise BusError(f"cannot publish {subject}: {exc}") from None
        return ack.seq

    async def subscribe(self, subject: str, durable: str, handler: Handler, *,
                        seen: SeenCheck | None = None, mark: SeenMark | None = None,
                        deliver_new: bool = False, on_refused: Refused | None = None) -> None:
        """Durable push consumer; the message is acked only after `handler` succeeded — or, when
        the handler returns an awaitable (work it started aside, so as not to hold back the events
        behind it), only after that work succeeded: a crash or a cancel before then (a shutdown)
        leaves the event unacknowledged, so it is delivered again; work still running after
        WORK_LIMIT is cancelled and its event delivered again. An event whose publisher may not
        send its kind (bus_policy) is dropped, counted and logged."""
        if self.js is None:
            raise BusError("event bus not connected")
        started = time.monotonic()
        try:
            durable = await self._durable_for(durable, subject)
        except nats.errors.TimeoutError:
            raise self._consumer_refused(durable, started) from None

        async def on_msg(msg):
            if not consumer.proven.is_set():
                # Bound a moment ago: wait until `_prove` knows which stream this is (a failed proof
                # is tried again by the next check; a rebind cancels this wait with the old binding).
                await consumer.proven.wait()
            try:
                meta = msg.metadata   # parsed from the reply subject: no round trip
                stream, durable_of = meta.stream, meta.consumer
            except Exception:   # not a JetStream delivery at all
                stream = durable_of = "?"
            if stream != STREAM or durable_of != consumer.durable:
                log.error("dropping an event delivered by another stream or consumer",
                          extra={"stream": str(stream)[:64], "consumer": str(durable_of)[:64],
                                 "expected": consumer.durable, "rule": "BUS-2"})
                EVENTS_HANDLED.labels("?", "refused").inc()
                return   # not ours to acknowledge or end
            try:
                event = events_pb2.Event.FromString(msg.data)
            except Exception:
                log.error("dropping undecodable event", extra={"subject": msg.subject[:120]})
                EVENTS_HANDLED.labels("?", "undecodable").inc()
                await msg.term()
                return
            parsed, refusal = check_event(msg.subject, event)
            untrusted = consumer.untrusted or self.stream_untrusted
            if untrusted:
                refusal = f"the event stream {untrusted}"
            if refusal:
                publisher = parsed.publisher if parsed else "?"
                kind = parsed.kind if parsed else "?"
                # Never the payload: only what identifies the event and why it is dropped.
                log.warning("dropping event from a publisher not allowed to send it: %s", refusal,
                            extra={"subject": msg.subject[:120], "event_id": event.id[:64],
                                   "publisher": publisher, "consumer": durable, "rule": "BUS-3"})
                EVENTS_REFUSED.labels(kind, publisher).inc()
                EVENTS_HANDLED.labels(kind, "refused").inc()
                if on_refused is not None:
                    on_refused(publisher, kind, refusal)
                await msg.term()
                return
            with bind_trace_id(clean_trace_id((msg.headers or {}).get(TRACE_HEADER)) or event.id):
                await handle(msg, event, parsed.publisher)

        async def handle(msg, event, publisher: str):
            token = PUBLISHER.set(publisher)
            try:
                if seen is not None and await seen(durable, event.id):
                    EVENTS_HANDLED.labels(event.kind, "duplicate").inc()
                    await msg.ack()
                    return
                outcome = await handler(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event handler failed; will be redelivered",
                              extra={"kind": event.kind, "event_id": event.id})
                EVENTS_HANDLED.labels(event.kind, "error").inc()
                await msg.nak(delay=1.0)
                return
            finally:
                PUBLISHER.reset(token)
            if inspect.isawaitable(outcome):
                # Work started aside: acknowledged when it has ended, never before (a crash
                # meanwhile must bring the event again, not lose it).
                task = asyncio.get_running_loop().create_task(finish_later(msg, event, outcome),
                                                              name=f"event {event.id[:64]} work")
                self._finishing.add(task)
                task.add_done_callback(self._finishing.discard)
                return
            await handled(msg, event)

        async def finish_later(msg, event, outcome) -> None:
            work = asyncio.ensure_future(outcome)
            give_up = time.monotonic() + WORK_LIMIT
            try:
                while not work.done():
                    left = give_up - time.monotonic()
                    if left <= 0:
                        break
                    await asyncio.wait({work}, timeout=min(IN_PROGRESS_EVERY, left))
                    if not work.done() and time.monotonic() < give_up:
                        try:
                            await msg.in_progress()
                        except Exception:  # the connection is away: it may come again, as it would
                            pass
                if not work.done():
                    # Stuck: never in progress for ever. Ended, and the event delivered again.
                    work.cancel()
                    await asyncio.wait({work}, timeout=1)
                    log.error("event work did not end within %g s; cancelled, the event will be "
                              "redelivered", WORK_LIMIT, extra={"kind": event.kind, "event_id": event.id})
                    EVENTS_HANDLED.labels(event.kind, "error").inc()
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=1.0)
                    return
                work.result()
            except asyncio.CancelledError:
                # The work (or this wait: the bus closing) was cancelled — a shutdown. Not
                # acknowledged: given back when the bus closes, once its consumers no longer
                # take deliveries (a nak now would bring it straight back to this stopping
                # service); after a crash, JetStream delivers it again after ack_wait.
                log.info("event work cancelled before it ended; it will be redelivered",
                         extra={"kind": event.kind, "event_id": event.id})
                self._given_back.append(msg)
                if not work.cancelled():
                    raise
                return
            except Exception:
                log.exception("event handler failed; will be redelivered",
                              extra={"kind": event.kind, "event_id": event.id})
                EVENTS_HANDLED.labels(event.kind, "error").inc()
                with contextlib.suppress(Exception):
                    await msg.nak(delay=1.0)
                return
            await handled(msg, event)

        async def handled(msg, event) -> None:
            # Handled: acked whatever happens to its record. A record that could not be written
            # (the database busy or away) must not turn a handled event into a redelivered one —
            # the nak made the handler run again (a second reset, a second restart).
            if mark is not None:
                try:
                    await mark(durable, event.id)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("event handled but not recorded as handled: %s", exc,
                                extra={"kind": event.kind, "event_id": event.id, "consumer": durable})
            EVENTS_HANDLED.labels(event.kind, "ok").inc()
            if event.occurred_unix_ms:
                EVENT_LAG.labels(event.kind).observe(max(0.0, time.time() - event.occurred_unix_ms / 1000))
            await msg.ack()

        config = ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT, max_deliver=MAX_DELIVER,
            deliver_policy=DeliverPolicy.NEW if deliver_new else DeliverPolicy.ALL,
        )
        consumer = _Consumer(subject, durable, on_msg, config)
        try:
            consumer.sub = await self._or_refused(
                self.js.subscribe(subject, durable=durable, cb=on_msg, manual_ack=True, config=config,
                                  stream=STREAM), f".{STREAM}.{durable}", started)
        except nats.errors.TimeoutError:
            raise self._consumer_refused(durable, started) from None
        self._consumers.append(consumer)
        problem = await self._prove(consumer)
        if problem:  # its events wait; the watchdog's next check proves it again (or rebinds it)
            log.warning("consumer %s not proven yet: %s", durable, problem, extra={"rule": "BUS-2"})

    async def _prove(self, consumer: _Consumer) -> str:
        """Prove which stream `consumer`'s binding reads, judge that stream, and let its events be
        handled; "" when done, else why not (its events keep waiting).

        The stream's settings are judged at connect and at each check, but a binding is made to
        whatever stream is there at that moment: one swapped in between (deleted and made again
        with a subject transform) fed forged events to a consumer until the next check. So each
        binding is proven once: its consumer's info first (created at Tc, still pushing to our
        subscription), then the stream's (created at Cs, judged). A stream created no later than
        the consumer and still there afterwards existed the whole time, so the consumer was made on
        it — a stream deleted takes its consumers with it, and a swap afterwards leaves this binding
        with nothing more to deliver (the check rebinds, and proves, again). Two requests per
        binding, none per event: an event only waits for its binding's proof, and each is checked,
        from its reply subject alone, to come from this stream and consumer. (Times are the one
        server's clock; a clustered JetStream would compare leaders' clocks.)"""
        try:
            info = await self.js.consumer_info(STREAM, consumer.durable)
            stream = await self.js.stream_info(STREAM)
        except NotFoundError:
            return f"consumer {consumer.durable} or stream {STREAM} gone while it was being proven"
        except Exception as exc:
            return f"consumer {consumer.durable} not proven: {exc or type(exc).__name__}"
        self._judge_stream(stream)
        delivers_to = getattr(consumer.sub, "subject", None)
        if info.config.deliver_subject != delivers_to:
            return f"consumer {consumer.durable} pushes to another subscription than this one"
        if stream.created is None or info.created is None or stream.created > info.created:
            return (f"stream {STREAM} was made again after consumer {consumer.durable} was bound "
                    "(it is gone with the old stream)")
        consumer.untrusted = _untrusted(stream.config)
        consumer.proven_on = stream.created
        consumer.proven.set()
        return ""

    def _consumer_refused(self, durable: str, since: float) -> BusError:
        """The error for a consumer request the server dropped: refused (BUS-6), or no answer."""
        refused = self._refusal(f".{STREAM}.{durable}", since)
        if refused:
            return BusError(f"NATS refused to let {self.role or self.name} bind consumer {durable} "
                            f"(only its own node's declared consumers, bus_policy.CONSUMERS): {refused}")
        return BusError(f"no answer from JetStream for consumer {durable} (is NATS up and the stream "
                        f"{STREAM} there?)")

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def pending(self) -> dict[str, int]:
        """Per durable consumer of ours: events not delivered yet plus delivered and not acked."""
        counts: dict[str, int] = {}
        for consumer in list(self._consumers):
            try:
                info = await self.js.consumer_info(STREAM, consumer.durable, timeout=2)
            except Exception:
                continue
            counts[consumer.durable] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        return counts

    async def _durable_for(self, durable: str, subject: str) -> str:
        """`durable`, unless a consumer of that name exists for other subjects (one made before the
        subjects named their publisher): binding to it would silently receive nothing, and no
        service may delete it (BUS-4), so its spare name `durable-2` is used instead — the one
        other name the server lets this node bind (BUS-6, `bus_policy.SPARE_SUFFIXES`)."""
        for suffix in bus_policy.SPARE_SUFFIXES:
            name = durable + suffix
            try:
                info = await self._or_refused(self.js.consumer_info(STREAM, name), f".{STREAM}.{name}",
                                              time.monotonic())
            except NotFoundError:
                return name
            if info.config.filter_subject == subject:
                return name
            log.warning("durable consumer %s exists for %s, not %s: trying the next name (the bus "
                        "operator may delete the old one)", name, info.config.filter_subject, subject)
        raise BusError(f"durable consumers {durable} and its spare names all exist for other subjects; "
                       "the bus operator must delete them")

    # --- healing ---------------------------------------------------------------------------
    async def check(self) -> str:
        """Heal what can be healed; "" when the stream and every consumer were there, else what
        was wrong (and what was done about it).

        A lost stream is recreated and every consumer bound again; a lost consumer is created
        again, delivering from just after its ack floor as last seen, or from the last moment it
        was known to exist when the stream was made again since (events it had handled are
        skipped by the handled-event record). The caller stays DEGRADED until a check finds
        everything in place, so a repair is reported before it is trusted.
        """
        if self.nc is None or self.js is None:
            return "not connected to NATS"
        if not self.nc.is_connected:
            return f"NATS at {self.url} unreachable (reconnecting)"
        problems = []
        try:
            if await self.ensure_stream():
                log.warning("event stream was missing: recreated it", extra={"stream": STREAM, "rule": "BUS-5"})
                problems.append(f"event stream {STREAM} was missing (recreated)")
            elif self.stream_drift:
                # No service may update the stream (BUS-4): the bus operator has to put it right.
                problems.append(f"event stream {STREAM} is configured differently ({self.stream_drift}); "
                                "the bus operator must restore it")
        except BusError as exc:
            return f"event stream {STREAM} missing: {exc}"
        except Exception as exc:
            return f"event stream {STREAM} not reachable: {exc}"
        for consumer in self._consumers:
            try:
                info = await self.js.consumer_info(STREAM, consumer.durable)
                consumer.seen_at = time.time()
                consumer.ack_floor = int(getattr(info.ack_floor, "stream_seq", 0) or 0)
                consumer.stream_created = self.stream_created
                if consumer.proven.is_set() and consumer.proven_on == self.stream_created:
                    # The very stream it was proven on, judged again just now: an operator who
                    # put it right in place (an update, not a new stream) is believed, or its
                    # events were dropped for good while the bus reported healthy.
                    consumer.untrusted = self.stream_untrusted
                if not consumer.proven.is_set():  # its proof failed when it was bound: again
                    problem = await self._prove(consumer)
                    if problem:
                        problems.append(problem)
                continue
            except NotFoundError:
                pass
            except Exception as exc:
                problems.append(f"consumer {consumer.durable}: {exc}")
                continue
            try:
                await self._rebind(consumer)
                problems.append(f"consumer {consumer.durable} was missing (recreated)")
                # Bound to whatever stream is there now, which need not be the one judged above.
                problem = await self._prove(consumer)
                if problem or consumer.untrusted:
                    problems.append(problem or f"event stream {STREAM} {consumer.untrusted}")
            except Exception as exc:
                problems.append(f"consumer {consumer.durable} missing and not recreated: {exc}")
        return "; ".join(problems)

    async def _rebind(self, consumer: _Consumer) -> None:
        if consumer.sub is not None:
            try:
                await consumer.sub.unsubscribe()
            except Exception:
                pass
            consumer.sub = None
        consumer.unproven()
        since = dt.datetime.fromtimestamp(consumer.seen_at - 2.0, dt.timezone.utc)
        if (consumer.ack_floor is not None and self.stream_created
                and consumer.stream_created == self.stream_created):
            # The same stream: from just after the last event every one before was acknowledged,
            # so what was outstanding when it was lost (a handler failing and retrying, a backlog)
            # comes again — the moment it was last seen would skip those published before it.
            config = ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT, max_deliver=MAX_DELIVER,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=consumer.ack_floor + 1,
            )
        else:  # never read, or the stream was made again since (its sequence numbers restarted)
            config = ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT, max_deliver=MAX_DELIVER,
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=since,
            )
        consumer.sub = await self.js.subscribe(consumer.subject, durable=consumer.durable,
                                               cb=consumer.callback, manual_ack=True, config=config,
                                               stream=STREAM)
        consumer.seen_at = time.time()
        log.warning("durable consumer was missing: recreated it", extra={
            "consumer": consumer.durable, "since": since.isoformat(), "from_seq": config.opt_start_seq or 0,
            "rule": "BUS-5"})

    async def close(self) -> None:
        self._closing = True
        for consumer in self._consumers:
            try:
                if consumer.sub is not None:
                    await consumer.sub.unsubscribe()
            except Exception:
                pass
        self._consumers.clear()
        if self._finishing:
            # Work started aside for an event: acknowledged if it ends now, else (cancelled with
            # the service's tasks, or cut here) given back — after the unsubscribe above, so the
            # event waits for the consumer's next binding (this node restarted) instead of
            # coming straight back to this stopping service.
            await asyncio.wait(set(self._finishing), timeout=1)
            for task in list(self._finishing):
                task.cancel()
            if self._finishing:
                await asyncio.wait(set(self._finishing), timeout=1)
        given_back, self._given_back = self._given_back, []
        for msg in given_back:
            with contextlib.suppress(Exception):
                await msg.nak()
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.drain(), 2)
            except Exception:
                try:
                    await self.nc.close()
                except Exception:  # the socket is already gone (NATS restarted): nothing to close
                    pass

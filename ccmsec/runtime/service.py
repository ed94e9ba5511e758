"""The base every ccmsec service runs on.

A subclass sets `role`, registers its gRPC servicers and protocol listeners in `setup()`, closes
them in `teardown()`, and may override `on_device_reset()`. The base provides settings, JSON logs,
the service's mTLS identity, the database (migrated), the event bus, the gRPC server with health
and reflection, the metrics endpoint, SIGTERM handling (finish or cancel in-flight work within the
grace period) and restart on a `service.restart` event for its role.

The bus connection authenticates with the nkey seed of the service's identity folder (BUS-1) and
publishes under the service's role (BUS-2); consumers drop events from publishers the table of
`ccmsec.runtime.bus_policy` does not allow (BUS-3). A watchdog checks the stream and every durable
consumer every `bus_check_interval` seconds, recreates what is lost, and meanwhile answers health
NOT_SERVING with the reason (DEGRADED in `ccmsec status`) and `Status` with state "degraded" (BUS-5).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import signal
import sys
import time
from typing import Awaitable, Callable

import grpc
from cryptography import x509
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from ccmsec.db.events import HandledEvent
from ccmsec.db.commits import counter_path, install_commit_counter
from ccmsec.db.ownership import OWN_BRANCHES, install_write_guard
from ccmsec.runtime import bus as bus_mod
from ccmsec.runtime import bus_policy
from ccmsec.runtime import gcpolicy
from ccmsec.runtime.database import DatabaseError, open_database
from ccmsec.runtime.grpcio import GrpcServer, secure_channel
from ccmsec.runtime.identity import IdentityError, TlsIdentity, admin_api_identity_dir, load_identity
from ccmsec.runtime.logs import setup_logging
from ccmsec.runtime import metrics
from ccmsec.runtime.metrics import UP, serve_metrics
from ccmsec.runtime.outbox import OutboxRelay, stage
from ccmsec.runtime.settings import ServiceSettings, SettingsError, load_settings
from ccmsec.runtime.servicer import OutboxServicer
from ccmsec_proto import common_pb2, events_pb2, outbox_pb2_grpc

class StartError(Exception):
    """The service cannot start for a reason its own state gives (one clear line, no traceback)."""


RESTART_EXIT_CODE = 75  # the runner (or compose's restart policy) starts the service again at once
GRPC_PORT_DEFAULT = 50051


# A handled-event record is kept a day longer than the stream keeps the event it names.
HANDLED_KEEP = dt.timedelta(seconds=bus_mod.STREAM_MAX_AGE) + dt.timedelta(days=1)
HANDLED_PRUNE_EVERY = 3600.0  # seconds

class Service:
    role: str = ""
    settings_class: type[ServiceSettings] = ServiceSettings
    # Holds thousands of long-lived connections (call control's phones): its process freezes the
    # objects alive after set-up and spaces full collections out (runtime/gcpolicy.py).
    long_lived_connections: bool = False
    owns_process = False  # set by run_service: process-wide settings are this service's to make

    def __init__(self, settings: ServiceSettings):
        if not isinstance(settings, self.settings_class):
            # base settings from a caller (tests, tools): this service's own fields take their defaults
            settings = self.settings_class(**settings.model_dump())
        self.settings = settings
        self.node = settings.node_name
        self.log = logging.getLogger(f"ccmsec.{self.role}")
        self.identity = None
        self.engine = None
        self.db = None
        self.bus: bus_mod.EventBus | None = None
        self.outbox: OutboxRelay | None = None  # this node's events, relayed until acknowledged
        self.grpc: GrpcServer | None = None
        self.started_unix = int(time.time())
        self.started_unix_ms = int(time.time() * 1000)
        self.activated = True
        self.events_handled = 0
        self.last_event_id = ""
        self.last_event_kind = ""
        self.events_refused = 0
        self.degraded = ""   # why the service is DEGRADED ("" while everything is in place)
        self._stop = asyncio.Event()
        self._restart_requested = False
        self._channels: dict[tuple, grpc.aio.Channel] = {}
        self._tasks: set[asyncio.Task] = set()

    # --- hooks for subclasses -------------------------------------------------------------
    async def setup(self) -> None:
        """Register gRPC servicers (self.grpc.add) and start protocol listeners."""

    def startup_problem(self) -> str:
        """Why the service, set up, cannot serve yet ("" when it can): it then starts DEGRADED
        with that reason and clears it itself once the problem is gone."""
        return ""

    async def teardown(self) -> None:
        """Close protocol listeners; called on shutdown before the bus and database close."""

    async def on_device_reset(self, event: events_pb2.Event) -> None:
        """A reset for devices; services that hold devices override this."""
        self.log.info("device reset event", extra={"event_id": event.id,
                                                    "devices": ",".join(event.device_reset.devices),
                                                    "all": event.device_reset.all})

    def status_details(self) -> dict[str, str]:
        return {}

    async def sample_metrics(self) -> None:
        """Set the gauges that need I/O (database, files); called every `metrics_interval`
        seconds while the metrics endpoint is on. Subclasses extend it (call super())."""
        if self.identity is not None:
            cert = x509.load_pem_x509_certificate(self.identity.cert_pem)
            metrics.set_certificate_expiry("identity", self.node, cert.not_valid_after_utc)
        if self.bus is not None:
            metrics.BUS_CONNECTED.set(1 if self.bus.connected else 0)
            for consumer, pending in (await self.bus.pending()).items():
                metrics.EVENTS_PENDING.labels(consumer).set(pending)

    # --- helpers for subclasses -----------------------------------------------------------
    def status_message(self, state: str = "") -> common_pb2.ServiceStatus:
        details = {"events_handled": str(self.events_handled), "last_event_id": self.last_event_id,
                   "last_event_kind": self.last_event_kind, "pid": str(os.getpid()),
                   "events_refused": str(self.events_refused)}
        if self.degraded:
            details["degraded"] = self.degraded
        if self.outbox is not None:
            details["outbox_pending"] = str(self.outbox.depth)
            if self.outbox.set_aside_stored:  # refused for good, kept: `ccmsec outbox list`
                details["outbox_set_aside"] = str(self.outbox.set_aside_stored)
        details.update(self.status_details())
        return common_pb2.ServiceStatus(
            role=self.role, node=self.node, activated=self.activated,
            state=state or ("stopping" if self._stop.is_set() else "degraded" if self.degraded else "serving"),
            details=details, started_unix=self.started_unix,
        )

    async def publish(self, kind: str, target: str | None = None, **body) -> events_pb2.Event:
        """Straight onto the bus, no outbox: only for what no rule requires to arrive (tests, the
        demo's round trip). A change's events are staged in its transaction (`runtime.outbox`)."""
        event = bus_mod.make_event(kind, self.node, **body)
        await self.bus.publish(event, target)
        return event

    async def subscribe(self, subject: str, name: str, handler: Callable[[events_pb2.Event], Awaitable[None]],
                        *, deliver_new: bool = True) -> None:
        """Durable, idempotent subscription: each event id is handled once per consumer (a handler
        may return the task of work it started aside: the event is acknowledged, and recorded as
        handled, only once that task has ended — see `EventBus.subscribe`). `name`
        must be one of the role's consumers in `bus_policy.CONSUMERS`: the server lets this node
        bind only those (BUS-6), so an undeclared one fails here, clearly, before NATS says no."""
        if not bus_policy.may_consume(self.role, name):
            raise bus_mod.BusError(f"{self.role} declares no durable consumer {name!r} "
                                   f"(add it to ccmsec.runtime.bus_policy.CONSUMERS)")
        durable = bus_policy.durable_name(self.node, name)

        async def counted(event: events_pb2.Event):
            outcome = await handler(event)   # work started aside: the bus acks when it has ended
            self.events_handled += 1
            self.last_event_id, self.last_event_kind = event.id, event.kind
            return outcome

        await self.bus.subscribe(subject, durable, counted, seen=self._seen, mark=self._mark,
                                 deliver_new=deliver_new, on_refused=self._on_refused_event)

    def _on_refused_event(self, publisher: str, kind: str, reason: str) -> None:
        self.events_refused += 1

    def peer_channel(self, role: str, port: int = GRPC_PORT_DEFAULT, *,
                     identity: TlsIdentity | None = None) -> grpc.aio.Channel:
        """A cached mTLS channel to another service's gRPC port, presenting this node's identity
        (or `identity`, e.g. the administration API's own)."""
        ident = identity or self.identity
        key = (role, port, str(ident.cert_path))
        if key not in self._channels:
            self._channels[key] = secure_channel(ident, self.settings.peer_host(role), port, role)
        return self._channels[key]

    def spawn(self, coro) -> asyncio.Task:
        """Background work that is cancelled cleanly on shutdown."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _sample_loop(self) -> None:
        while True:
            try:
                await self.sample_metrics()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a gauge goes stale; the service goes on
                self.log.debug("could not sample metrics: %s", exc)
            await asyncio.sleep(self.settings.metrics_interval)

    def request_restart(self, reason: str) -> None:
        self.log.warning("restart requested", extra={"reason": reason})
        self._restart_requested = True
        self._stop.set()

    def request_stop(self) -> None:
        self._stop.set()

    def _load_own_identity(self):
        """The identity the runner issued to this node; a service never issues one itself."""
        identity = load_identity(self.settings.identity_folder)
        stated = identity.identity
        if (stated.role, stated.node) != (self.role, self.node):
            raise IdentityError(f"{identity.cert_path} is the identity of {stated}, not of {self.role}/{self.node}")
        return identity

    def admin_api_identity(self):
        """The `admin-api` identity kept in this node's folder (callmanager hosts the HTTPS API)."""
        return load_identity(admin_api_identity_dir(self.settings.identity_folder))

    def _report_refusal(self, refusal) -> None:
        """A refused RPC goes to the audit log through its owner (callmanager), as an event."""
        caller = refusal.caller
        body = events_pb2.AccessDenied(
            caller_role=caller.role if caller else "", caller_node=caller.node if caller else "",
            method=refusal.method[:200], refused_by=f"{self.role}/{self.node}",
            reason=refusal.reason[:300], suppressed=refusal.suppressed)

        async def send() -> None:
            # Through this node's outbox: the audit record survives a NATS outage (and a restart)
            # and reaches callmanager once, like any event a rule requires (issue 9 §2, §4).
            try:
                async with self.db() as session, session.begin():
                    stage(session, self.node, "access.denied", None, access_denied=body)
                self.outbox.kick()
            except Exception as exc:  # the refusal itself stands; only its audit record is lost
                self.log.warning("could not queue a refused call for the audit log: %s", exc)

        if self.outbox is not None:
            self.spawn(send())

    # --- idempotency ----------------------------------------------------------------------
    async def _seen(self, consumer: str, event_id: str) -> bool:
        async with self.db() as session:
            return (await session.scalar(
                select(HandledEvent.event_id).where(HandledEvent.consumer == consumer,
                                                    HandledEvent.event_id == event_id))) is not None

    async def _mark(self, consumer: str, event_id: str) -> None:
        async with self.db() as session:
            session.add(HandledEvent(consumer=consumer, event_id=event_id))
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()

    async def prune_handled(self, now: dt.datetime | None = None) -> int:
        """Forget handled-event records older than the stream keeps events (plus a day): such an
        event can never be delivered again, and without this the table only grows."""
        cutoff = (now or dt.datetime.now(dt.timezone.utc)) - HANDLED_KEEP
        async with self.db() as session:
            result = await session.execute(delete(HandledEvent).where(HandledEvent.handled_at < cutoff))
            await session.commit()
        return result.rowcount or 0

    # --- built-in subscriptions -----------------------------------------------------------
    async def _on_restart(self, event: events_pb2.Event) -> None:
        nodes = list(event.service_restart.nodes)
        if nodes and self.node not in nodes:
            return
        if 0 < event.occurred_unix_ms < self.started_unix_ms:
            # This process started after the change that asked for the restart: it already runs
            # with it. (One change often asks twice — RST-3 and RST-4 both restart callmanager —
            # and restarting again would leave the service down right after it came back.)
            self.log.info("restart already done by this start", extra={"event_id": event.id})
            return
        reason = f"{event.service_restart.rule or 'restart'}: {event.service_restart.reason}".strip(": ")
        # Let the ack go out first; then shut down and let the supervisor start us again.
        asyncio.get_running_loop().call_later(0.2, self.request_restart, reason)

    # --- the bus watchdog (BUS-5) -----------------------------------------------------------
    async def _watch_bus(self) -> None:
        interval = self.settings.bus_check_interval
        loop = asyncio.get_running_loop()
        pruned_at = float("-inf")
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), interval)
                return
            except asyncio.TimeoutError:
                pass
            if self.db is not None and loop.time() - pruned_at >= HANDLED_PRUNE_EVERY:
                pruned_at = loop.time()
                try:
                    pruned = await self.prune_handled()
                    if pruned:
                        self.log.info("forgot %d handled-event records older than the stream keeps", pruned)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # tried again at the next prune
                    self.log.warning("could not prune handled-event records: %s", exc)
            try:
                reason = await asyncio.wait_for(self.bus.check(), max(5.0, interval * 2))
            except asyncio.TimeoutError:
                reason = "NATS did not answer the stream check in time"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = f"event bus check failed: {exc}"
            try:
                await self._set_degraded(reason)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the watchdog must outlive one failed health update
                self.log.warning("could not update health to %r: %s (next check tries again)",
                                 reason or "SERVING", exc, extra={"rule": "BUS-5"})

    async def _set_degraded(self, reason: str) -> None:
        if reason == self.degraded or self._stop.is_set():
            return
        if reason:
            self.log.warning("DEGRADED: %s", reason, extra={"rule": "BUS-5"})
        else:
            # not always the bus: any DEGRADED reason (a CTL publish left at the signer, say) clears here
            self.log.info("SERVING again (was DEGRADED: %s)", self.degraded)
        await self.grpc.set_degraded(reason)
        # Recorded only once health says it: a failed update is retried by the next check.
        self.degraded = reason
        UP.labels(self.role, self.node).set(0 if reason else 1)

    # --- lifecycle ------------------------------------------------------------------------
    async def run(self) -> int:
        s = self.settings
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self.identity = self._load_own_identity()
        self.engine, self.db = await open_database(s.db_url, self.role)  # its own schema branches
        install_write_guard(self.engine, self.role)  # only the owner writes a table (issue 9 §5)
        if self.role in OWN_BRANCHES:  # tftp-signer learns of its commits (ccmsec/db/commits.py)
            install_commit_counter(self.engine, counter_path(s.data_dir, self.role))
        self.bus = bus_mod.EventBus.for_identity(s.nats_url, f"{self.role}:{self.node}", s.identity_folder,
                                                role=self.role, connect_timeout=s.bus_connect_timeout)
        await self.bus.connect()
        # Every event a change or a refusal requires leaves through this relay (issue 9 §4).
        self.outbox = OutboxRelay(self.db, lambda event, target: self.bus.publish(event, target),
                                  origin=self.node, role=self.role)
        self.spawn(self.outbox.run())
        self.grpc = GrpcServer(self.identity, s.host, s.grpc_port)
        self.grpc.gate.on_denied = self._report_refusal
        # The operator's view of this node's set-aside outbox rows, and their re-queue.
        self.grpc.add(outbox_pb2_grpc.add_OutboxServicer_to_server, OutboxServicer(self), "ccmsec.v1.Outbox")
        try:
            await self.setup()
            if self.owns_process and self.long_lived_connections:
                frozen = gcpolicy.tune_for_long_lived_connections()
                self.log.info("garbage collection tuned for long-lived connections",
                              extra={"frozen_objects": frozen})
            await self.grpc.start()
            await self.subscribe(bus_mod.subject_for("service.restart", self.role), "restart", self._on_restart)
            await self.subscribe(bus_mod.subject_for("device.reset"), "device-reset", self.on_device_reset)
            problem = self.startup_problem()
            if problem:  # never SERVING for a moment first: `ccmsec up` would take it as ready
                self.log.warning("DEGRADED: %s", problem)
                await self.grpc.set_degraded(problem)
                self.degraded = problem
            else:
                await self.grpc.set_serving(True)
            if serve_metrics(s.host, s.metrics_port) is not None:
                self.spawn(self._sample_loop())
            UP.labels(self.role, self.node).set(0 if self.degraded else 1)
            self.spawn(self._watch_bus())
            self.log.info("serving", extra={"grpc": self.grpc.address, "pid": os.getpid()})
            await self._stop.wait()
        finally:
            await self._shutdown()
        return RESTART_EXIT_CODE if self._restart_requested else 0

    async def _shutdown(self) -> None:
        grace = self.settings.shutdown_grace
        UP.labels(self.role, self.node).set(0)
        started = time.monotonic()
        self.log.info("shutting down", extra={"grace": grace})
        if self.grpc is not None:
            try:
                await self.grpc.set_serving(False)
            except Exception:
                pass
        steps = [self.grpc.stop(grace) if self.grpc else None, self.teardown()]
        for step in steps:
            if step is None:
                continue
            try:
                await asyncio.wait_for(step, grace + 0.5)
            except (asyncio.TimeoutError, Exception) as exc:  # shutdown must finish regardless
                self.log.warning("shutdown step failed: %s", exc)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1)
        for ch in self._channels.values():
            await ch.close()
        if self.bus is not None:
            await self.bus.close()
        if self.engine is not None:
            await self.engine.dispose()
        self.log.info("stopped", extra={"seconds": round(time.monotonic() - started, 3)})


STRAGGLER_GRACE = 5.0  # after the service stopped, the most its leftover tasks may take to end


async def _run_then_end_stragglers(service: Service) -> int:
    """Run the service; once it has stopped, end every task still left on the loop within
    STRAGGLER_GRACE. asyncio's runner would wait for them without a bound, and one that ignores its
    cancellation (seen: SQLAlchemy's shielded graceful close of an aiosqlite connection whose worker
    thread had already gone) kept a stopped call-control process alive for ever, so the restart a
    mode change asks for (RST-3/RST-4) never happened. Such a process now exits all the same."""
    code = await service.run()
    me = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    for task in left:
        task.cancel()
    if left:
        await asyncio.wait(left, timeout=STRAGGLER_GRACE)
    stuck = [t for t in left if not t.done()]
    if stuck:
        service.log.warning("tasks ignored cancellation after the service stopped; exiting without them",
                            extra={"tasks": ", ".join(sorted(t.get_name() for t in stuck)),
                                   "coroutines": ", ".join(sorted({getattr(t.get_coro(), "__qualname__", "?")
                                                                   for t in stuck}))})
        logging.shutdown()  # every record written before the hard exit
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code if isinstance(code, int) else 1)
    return code


def run_service(cls: type[Service]) -> None:
    """Entry point body for every service: clear one-line errors, exit codes the runner understands.
    Every line the process writes to standard error/output is JSON from here on (`runtime.logs`)."""
    setup_logging(cls.role, os.environ.get("CCMSEC_NODE") or cls.role, "INFO", capture=True)
    try:
        settings = load_settings(cls.settings_class)
    except SettingsError as exc:
        logging.getLogger(f"ccmsec.{cls.role}").error("ccmsec-%s: %s", cls.role, exc)
        sys.exit(2)
    setup_logging(cls.role, settings.node_name, settings.log_level)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    try:
        service = cls(settings)
        service.owns_process = True
        code = runner(_run_then_end_stragglers(service))
    except (DatabaseError, bus_mod.BusError, SettingsError, IdentityError, StartError, OSError) as exc:
        logging.getLogger(f"ccmsec.{cls.role}").error("ccmsec-%s: cannot start: %s", cls.role, exc)
        sys.exit(1)
    sys.exit(code)

"""Issue 9 §4: a change and the events its rule requires are committed together (outbox), relayed
to a real nats-server until JetStream acknowledges, exactly once in effect.

* a rolled-back change publishes nothing; a committed one waits in the outbox while NATS is down
  (depth exported as `ccmsec_outbox_depth`) and is delivered once NATS is back;
* the callmanager service in process with real SCCP phones: NATS killed (SIGKILL) during a
  reset-all (gRPC `ResetDevices`, what `ccmsec device reset --all` calls) and during a device
  security change (`PATCH /api/v1/devices/{name}` over HTTPS, what `ccmsec device set-security`
  calls): both are answered "pending delivery", and once NATS is back every phone gets its reset
  exactly once (RST-1, CHK-13) and the stream holds each event once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import nats
import pytest
from nats.js.api import DeliverPolicy
from sqlalchemy import func, select

from ccmsec.db.outbox import OutboxRow
from ccmsec.runtime.bus import EventBus, subject_for
from ccmsec.runtime.database import open_database
from ccmsec.runtime.metrics import REGISTRY
from ccmsec.runtime.outbox import DELIVERY_WAIT, OutboxRelay, stage, stage_owner_change
from ccmsec.wire import sccp as s
from ccmsec_proto import callmanager_pb2 as pb
from ccmsec_proto import events_pb2
from tests.conftest import free_port, nats_binary
from tests.deviceowner import loopback_host
from tests.integration.test_callmanager_service import (  # noqa: F401
    Cm, _settings, _start, pki_template, start_ctl_provider, stop_ctl_provider)

pytestmark = pytest.mark.timeout(180)

BACK_TIMEOUT = 60.0  # generous: NATS restart, client reconnect back-off, relay back-off, shared CPUs
# While the server is killed no acknowledgement can come: a write's wait for one (DELIVERY_WAIT,
# 3 s) would only add to the suite's time before its "pending" answer. With NATS up the full wait.
KILLED_DELIVERY_WAIT = 0.3


class Nats:
    """A nats-server we can kill and start again on the same port with the same JetStream store."""

    def __init__(self, store: Path):
        self.store, self.port, self.proc = store, free_port(), None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([nats_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js",
                                      "-sd", str(self.store)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nats-server did not start")

    @property
    def killed(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def killable_nats(tmp_path, monkeypatch):
    server = Nats(tmp_path / "nats-store")
    server.start()
    wait_sent = OutboxRelay.wait_sent

    async def shortened_while_killed(relay, event_ids, timeout=DELIVERY_WAIT):
        return await wait_sent(relay, event_ids, min(timeout, KILLED_DELIVERY_WAIT) if server.killed else timeout)

    monkeypatch.setattr(OutboxRelay, "wait_sent", shortened_while_killed)
    yield server
    server.stop()


def _depth(role: str) -> float | None:
    return REGISTRY.get_sample_value("ccmsec_outbox_depth", {"service": role})


async def _stream_events(url: str, subject: str = "ccmsec.>") -> list[events_pb2.Event]:
    """Every event the CCMSEC stream holds on `subject` (an ordered consumer from the start)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        # How many the stream holds on `subject` now: read that many, not until a second of silence
        # (that second was spent at every call); then a short look for any arriving meanwhile.
        info = await js.stream_info("CCMSEC", subjects_filter=subject)
        held = sum((info.state.subjects or {}).values())
        out: list[events_pb2.Event] = []
        if held == 0:
            return out
        sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=10.0 if len(out) < held else 0.2)
                except (asyncio.TimeoutError, nats.errors.TimeoutError):
                    assert len(out) >= held, f"the stream holds {held} on {subject}, read {len(out)}"
                    return out
                out.append(events_pb2.Event.FromString(msg.data))
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()


async def _until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.2)


# --- the outbox and its relay ----------------------------------------------------------------------

async def test_rolled_back_change_publishes_nothing_committed_one_waits_for_nats(tmp_path, killable_nats):
    engine, db = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'ccmsec.db'}")
    bus = EventBus(killable_nats.url, "outbox-test", role="callmanager", connect_timeout=10)
    await bus.connect()
    relay = OutboxRelay(db, lambda e, t: bus.publish(e, t), origin="relay-node", role="test-relay")
    task = asyncio.create_task(relay.run())
    try:
        # Rolled back after its events were staged: no row, nothing ever published.
        with pytest.raises(RuntimeError):
            async with db() as session, session.begin():
                rolled_back = stage(session, "relay-node", "config.changed", None,
                                    config_changed=events_pb2.ConfigChanged(devices=["RB"], what="x"))
                raise RuntimeError("the change failed after staging its events")
        # The same for an owner's audit record (ctl-provider, capf): rolled back with its write.
        with pytest.raises(RuntimeError):
            async with db() as session, session.begin():
                stage_owner_change(session, "relay-node", actor="cli/cli", action="capf.schedule",
                                   target="SEP000000000001", detail="install")
                raise RuntimeError("the write failed after staging its audit record")
        async with db() as session:
            assert await session.scalar(select(func.count()).select_from(OutboxRow)) == 0
        # Committed while NATS is up: acknowledged at once.
        async with db() as session, session.begin():
            first = stage(session, "relay-node", "device.reset", None, device_reset=events_pb2.DeviceReset(
                devices=["SEP000000000001"], rule="RST-1", kind=events_pb2.RESET))
        assert await relay.wait_sent([first.id], 10)
        # Committed while NATS is down: pending (depth 1, exported), delivered once it is back.
        killable_nats.kill()
        async with db() as session, session.begin():
            second = stage(session, "relay-node", "device.reset", None, device_reset=events_pb2.DeviceReset(
                all=True, rule="CHK-13", kind=events_pb2.RESET))
        assert not await relay.wait_sent([second.id], 2.0)
        await _until(lambda: asyncio.sleep(0, _depth("test-relay") == 1), 15, "depth 1")
        async with db() as session:
            row = await session.scalar(select(OutboxRow).where(OutboxRow.event_id == second.id))
            assert row.sent_at is None
        killable_nats.start()
        assert await relay.wait_sent([second.id], BACK_TIMEOUT), relay.last_error
        assert _depth("test-relay") == 0
        held = await _stream_events(killable_nats.url)
        assert [e.id for e in held] == [first.id, second.id]  # once each, in order
        assert rolled_back.id not in {e.id for e in held}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await bus.close()
        await engine.dispose()


async def test_relay_marks_a_rounds_acknowledged_rows_sent_in_one_transaction(tmp_path, killable_nats):
    """The relay marks what JetStream acknowledged in a round with one UPDATE in one transaction
    (not one per row) — and stays exactly once in effect: NATS lost mid-batch marks only the rows
    before it (the rest follow, in order); a mark lost after the acks (database failure) re-sends
    the batch under the same ids, which JetStream drops, so the stream holds each event once."""
    from sqlalchemy import event as sa_event

    engine, db = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'ccmsec.db'}")
    bus = EventBus(killable_nats.url, "outbox-batch", role="callmanager", connect_timeout=10)
    await bus.connect()
    broken = {"publish_after": None, "mark": False}

    async def publish(event, target):
        if broken["publish_after"] is not None:
            if broken["publish_after"] == 0:
                raise ConnectionError("injected: NATS gone in the middle of the batch")
            broken["publish_after"] -= 1
        return await bus.publish(event, target)

    relay = OutboxRelay(db, publish, origin="batch-node", role="batch-relay")  # rounds run by hand
    marks: list[str] = []
    commits: list[int] = []

    def on_statement(conn, cursor, statement, params, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE EVENT_OUTBOX"):
            marks.append(statement)

    sa_event.listen(engine.sync_engine, "before_cursor_execute", on_statement)
    sa_event.listen(engine.sync_engine, "commit", lambda conn: commits.append(1))

    async def stage_resets(n: int) -> list[str]:
        async with db() as session, session.begin():
            return [stage(session, "batch-node", "device.reset", None, device_reset=events_pb2.DeviceReset(
                devices=[f"SEP0000000D{i:04X}"], rule="RST-1", kind=events_pb2.RESET)).id for i in range(n)]

    async def unsent() -> list[OutboxRow]:
        async with db() as session:
            return list((await session.scalars(select(OutboxRow).where(OutboxRow.sent_at.is_(None))
                                               .order_by(OutboxRow.seq))).all())

    try:
        # 1. 40 committed rows, one round: 40 publishes, one UPDATE, one commit.
        first = await stage_resets(40)
        marks.clear(), commits.clear()
        assert await relay.relay_once()
        assert (len(marks), len(commits)) == (1, 1), marks
        assert await unsent() == [] and await relay.wait_sent(first, 0.1)
        async with db() as session:
            assert set((await session.scalars(select(OutboxRow.attempts))).all()) == {1}

        # 2. NATS gone after 25 of 40: those 25 marked (one UPDATE), the failure recorded on the
        # 26th (its own small write), the other 15 wait; the next round sends them, in order.
        second = await stage_resets(40)
        broken["publish_after"] = 25
        marks.clear(), commits.clear()
        assert not await relay.relay_once()
        assert len(marks) == 2 and len(commits) == 2  # the batch's mark, then the failure's
        left = await unsent()
        assert [r.event_id for r in left] == second[25:]
        assert left[0].attempts == 1 and "injected" in left[0].last_error
        assert await relay.wait_sent(second[:25], 0.1) and not await relay.wait_sent(second[25:], 0.1)
        broken["publish_after"] = None
        assert await relay.relay_once() and await unsent() == []

        # 3. The mark lost after JetStream acknowledged the batch: the rows stay unsent, the next
        # round publishes them again under the same ids, and JetStream drops the duplicates.
        third = await stage_resets(30)
        real_mark = relay._mark_sent

        async def lost_mark(rows):
            raise OSError("injected: the database failed before the batch was marked")

        relay._mark_sent = lost_mark
        with pytest.raises(OSError):
            await relay.relay_once()
        assert [r.event_id for r in await unsent()] == third
        relay._mark_sent = real_mark
        assert await relay.relay_once() and await unsent() == []

        held = await _stream_events(killable_nats.url)
        assert [e.id for e in held] == first + second + third  # once each, in order
    finally:
        await bus.close()
        await engine.dispose()


async def test_an_event_waiting_in_the_outbox_keeps_the_trace_id_of_the_request_that_staged_it(
        tmp_path, killable_nats):
    """Logs across events: the relay publishes a staged event under the trace id of the request
    that committed it (not its own), also when the event waited for NATS — so a handler's log
    lines for that event carry the administrator's request id."""
    from ccmsec.runtime.logs import TRACE_HEADER, bind_trace_id

    engine, db = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'ccmsec.db'}")
    bus = EventBus(killable_nats.url, "outbox-trace", role="callmanager", connect_timeout=10)
    await bus.connect()
    relay = OutboxRelay(db, lambda e, t: bus.publish(e, t), origin="relay-node", role="trace-relay")
    task = asyncio.create_task(relay.run())
    try:
        killable_nats.kill()
        with bind_trace_id("req-outbox-7f3a"):
            async with db() as session, session.begin():
                staged = stage(session, "relay-node", "device.reset", None, device_reset=events_pb2.DeviceReset(
                    devices=["SEP000000000007"], rule="RST-1", kind=events_pb2.RESET))
        killable_nats.start()
        assert await relay.wait_sent([staged.id], BACK_TIMEOUT), relay.last_error
        nc = await nats.connect(killable_nats.url)
        try:
            sub = await nc.jetstream().subscribe("ccmsec.>", ordered_consumer=True,
                                                 deliver_policy=DeliverPolicy.ALL)
            msg = await sub.next_msg(timeout=5)
        finally:
            await nc.close()
        assert events_pb2.Event.FromString(msg.data).id == staged.id
        assert msg.headers[TRACE_HEADER] == "req-outbox-7f3a"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await bus.close()
        await engine.dispose()


# --- the service: reset-all and set-security with NATS killed ----------------------------------------

@pytest.fixture
async def cm_nats(tmp_path, killable_nats, pki_template):
    import shutil
    for folder in ("pki", "servers", "identities"):
        shutil.copytree(pki_template / folder, tmp_path / folder)
    ctl_host = loopback_host()  # the cluster mode's owner, which call control asks (issue 9 §5)
    provider = await start_ctl_provider(tmp_path, killable_nats.url, ctl_host)
    svc, task = await _start(_settings(tmp_path, killable_nats.url, peers={"ctl-provider": ctl_host}))
    handle = Cm(svc, task, tmp_path)
    handle.provider = provider
    yield handle, killable_nats
    await handle.channel.close()
    svc.request_stop()
    await asyncio.wait_for(task, 15)
    await stop_ctl_provider(provider)


async def _collect_resets(phone, into: list, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            ev = await phone.next_event(s.ResetRequested, timeout=0.5)
        except (asyncio.TimeoutError, TimeoutError):
            continue
        except Exception:  # the connection ended: nothing more will come
            return
        into.append(ev)


async def _api(cm, method: str, path: str, body: dict | None = None) -> httpx.Response:
    """The real HTTPS administration API of the running service, as the CLI calls it."""
    data = cm.data
    password = (data / "admin-password").read_text().strip()
    ca = data / "identities" / "services" / "callmanager" / "admin-api" / "ca.crt"
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False  # the admin-api certificate names its node; the CA pins it here
    s_ = cm.svc.settings
    async with httpx.AsyncClient(base_url=f"https://{s_.host}:{s_.admin_port}", verify=ctx,
                                 auth=("admin", password), timeout=30) as client:
        return await client.request(method, path, json=body)


async def _cli_capture(argv: list[str]) -> tuple[int, str]:
    """The real CLI entry point in a thread; its standard output captured."""
    import contextlib
    import io

    from ccmsec.cli.main import main as cli_main
    buf = io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(buf):
            return cli_main(argv)
    code = await asyncio.to_thread(run)
    return code, buf.getvalue()


async def test_nats_killed_during_reset_all_and_set_security_every_reset_arrives_once(cm_nats):
    cm, server = cm_nats
    await cm.set_mode("mixed")  # a CTL exists: devices may be set authenticated (MODE-5)
    names = ["SEP0000000B0001", "SEP0000000B0002"]
    for name in names:
        await cm.add_device(name, "7970")
    phones: dict = {}
    got: dict[str, list] = {name: [] for name in names}
    stop = asyncio.Event()
    collectors: list[asyncio.Task] = []

    async def register_all():
        """Fresh registrations (a phone reboots after a Reset) and a collector on each."""
        for name, phone in list(phones.items()):
            await phone.close()
        await _until(lambda: asyncio.sleep(0, not any(n in cm.cc.registry.entries for n in names)),
                     20, "old registrations gone")
        for name in names:
            phones[name] = await cm.registered(name)
            collectors.append(asyncio.create_task(_collect_resets(phones[name], got[name], stop)))

    try:
        await register_all()
        # 1. Reset-all with NATS dead: committed, answered "pending delivery", nothing lost.
        server.kill()
        reply = await cm.stub.ResetDevices(pb.ResetDevicesRequest(all=True), timeout=30)
        assert reply.delivery_pending and reply.targeted == 2
        await asyncio.sleep(1.0)
        assert got == {n: [] for n in names}  # not delivered while NATS is down
        server.start()
        await _until(lambda: asyncio.sleep(0, all(got[n] for n in names)), BACK_TIMEOUT,
                     "reset-all delivered after NATS came back")
        await asyncio.sleep(3.0)  # anything duplicated would arrive now
        assert {n: len(got[n]) for n in names} == {n: 1 for n in names}
        assert all(ev.reset_type == s.ResetType.RESET for n in names for ev in got[n])

        # 2. `device set-security` (PATCH over HTTPS) with NATS dead: "pending", then RST-1 once.
        await _until(lambda: asyncio.sleep(0, cm.svc.outbox.depth == 0), BACK_TIMEOUT, "outbox drained")
        await register_all()  # the phones re-register after their reset
        for n in names:
            got[n].clear()
        server.kill()
        # Through the CLI, as the administrator types it (the symptom of issue 9: "the phone is reset
        # to apply it", exit code 0, while the reset was lost): saved, and said to be pending.
        s_ = cm.svc.settings
        code, out = await _cli_capture(
            ["device", "set-security", names[0], "authenticated",
             "--url", f"https://{s_.host}:{s_.admin_port}", "--password-file", str(cm.data / "admin-password"),
             "--ca-file", str(cm.data / "identities" / "services" / "callmanager" / "admin-api" / "ca.crt")])
        assert code == 0 and "pending delivery" in out and "the phone is reset to apply it" not in out, out
        answer = await _api(cm, "GET", f"/api/v1/devices/{names[0]}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["security_mode"] == "authenticated"
        await _until(lambda: asyncio.sleep(0, _depth("callmanager") == 2), 20,
                     "outbox depth exported (config.changed + RST-1 reset)")
        server.start()
        await _until(lambda: asyncio.sleep(0, bool(got[names[0]])), BACK_TIMEOUT,
                     "RST-1 reset delivered after NATS came back")
        await asyncio.sleep(3.0)
        assert len(got[names[0]]) == 1 and got[names[1]] == []  # only that phone, once
        await _until(lambda: asyncio.sleep(0, _depth("callmanager") == 0), 20, "drained")
    finally:
        stop.set()
        await asyncio.gather(*collectors, return_exceptions=True)
        for phone in phones.values():
            await phone.close()
    # The stream holds each event once: one reset-all, one RST-1 reset (JetStream de-duplicates a
    # re-sent id; consumers remember handled ids).
    resets = [e for e in await _stream_events(server.url, subject_for("device.reset"))]
    assert len({e.id for e in resets}) == len(resets)
    assert sorted((e.device_reset.rule, e.device_reset.all, tuple(e.device_reset.devices)) for e in resets) == [
        ("CHK-13", True, ()), ("RST-1", False, (names[0],))]
    # Audited with the change, whichever door (gRPC for the reset, the API for the mode).
    async with cm.svc.db() as session:
        from ccmsec.db.admin import AuditEntry
        rows = (await session.scalars(select(AuditEntry).where(
            AuditEntry.action.in_(("device.reset", "device.update"))).order_by(AuditEntry.id))).all()
    assert [(r.actor, r.action, r.target) for r in rows] == [
        ("cli/cli", "device.reset", "all"), ("admin", "device.update", names[0])]


async def test_refused_change_commits_nothing_and_sends_nothing(cm_nats):
    """The bad case: a change its rule refuses (DEV-3: a 7902 cannot be authenticated) writes no
    outbox row, publishes nothing and leaves the device as it was."""
    cm, server = cm_nats
    await cm.set_mode("mixed")
    await cm.add_device("SEP0000000B0009", "7902")
    async with cm.svc.db() as session:
        before = await session.scalar(select(func.count()).select_from(OutboxRow))
    answer = await _api(cm, "PATCH", "/api/v1/devices/SEP0000000B0009", {"security_mode": "authenticated"})
    assert answer.status_code == 422 and "DEV-3" in json.dumps(answer.json())
    async with cm.svc.db() as session:
        assert await session.scalar(select(func.count()).select_from(OutboxRow)) == before
    resets = await _stream_events(server.url, subject_for("device.reset"))
    assert [e for e in resets if "SEP0000000B0009" in e.device_reset.devices] == []


# --- ctl-provider: a mode change with NATS killed ----------------------------------------------------

async def test_mode_change_with_nats_killed_is_pending_then_its_rst3_events_arrive_once(tmp_path, killable_nats):
    """The cluster mode's owner commits the mode and its RST-3 events together: with NATS dead
    `SetSecurityMode` (what `ccmsec mode set` calls) answers delivery_pending with the mode saved;
    once NATS is back mode.changed, the reset of every device and the callmanager restart are in
    the stream, once each."""
    import random

    from ccmsec.db.cluster import record_ctl
    from ccmsec_proto import common_pb2, ctl_provider_pb2
    from tests.conftest import free_port as port_on
    from tests.integration.test_ctl_provider_service import _prepare
    from tests.integration.test_ctl_provider_service import _start as start_provider

    host = f"127.{random.randint(20, 250)}.{random.randint(0, 255)}.{random.randint(2, 250)}"
    await _prepare(tmp_path)
    svc, task, channel, stub = await start_provider(tmp_path, killable_nats.url, host, port_on(host),
                                                    port_on(host))
    try:
        async with svc.db() as session, session.begin():  # a CTL exists (MODE-5), as committed
            await record_ctl(session, content=b"ctl", sha256="0" * 64, signer="t1", signer_serial="01",
                             records=5, tftp_path="cluster1")
        killable_nats.kill()
        reply = await stub.SetSecurityMode(ctl_provider_pb2.SecurityModeRequest(
            mode=common_pb2.CLUSTER_MIXED), timeout=30)
        assert reply.delivery_pending and reply.mode == common_pb2.CLUSTER_MIXED
        assert (await stub.GetSecurityMode(common_pb2.Empty(), timeout=10)).mode == common_pb2.CLUSTER_MIXED
        assert svc.outbox.depth == 3 or await svc.outbox.pending() == 3
        killable_nats.start()
        await _until(lambda: asyncio.sleep(0, svc.outbox.depth == 0), BACK_TIMEOUT, "relayed")
        held = await _stream_events(killable_nats.url)
        assert sorted((e.kind, e.device_reset.rule or e.service_restart.rule) for e in held) == [
            ("device.reset", "RST-3"), ("mode.changed", ""), ("service.restart", "RST-3")]
        assert len({e.id for e in held}) == 3
        assert [e.mode_changed.actor for e in held if e.kind == "mode.changed"] == ["cli/cli"]
    finally:
        await channel.close()
        if not task.done():
            svc.request_stop()
            await asyncio.wait_for(task, 15)


# --- every other owner's write: audited and its events through the owner's outbox ------------------

async def _start_ctl_provider(data: Path, nats_url: str):
    import random

    from tests.conftest import free_port as port_on
    from tests.integration.test_ctl_provider_service import _prepare
    from tests.integration.test_ctl_provider_service import _start as start_provider

    host = f"127.{random.randint(20, 250)}.{random.randint(0, 255)}.{random.randint(2, 250)}"
    await _prepare(data)
    return await start_provider(data, nats_url, host, port_on(host), port_on(host))


async def _stop(svc, task) -> None:
    if not task.done():
        svc.request_stop()
        await asyncio.wait_for(task, 15)


async def _outbox_rows(svc, kind: str | None = None) -> list[events_pb2.Event]:
    """The events `svc`'s node staged in its outbox (sent or not), oldest first."""
    async with svc.db() as session:
        q = select(OutboxRow).where(OutboxRow.origin == svc.node).order_by(OutboxRow.seq)
        if kind is not None:
            q = q.where(OutboxRow.kind == kind)
        return [events_pb2.Event.FromString(r.payload) for r in (await session.scalars(q)).all()]


async def _drained(svc) -> bool:
    """Every row of `svc`'s outbox acknowledged (the database's word, not the last round's depth)."""
    return await svc.outbox.pending() == 0


async def _audit(cm, actions: tuple[str, ...]) -> list:
    from ccmsec.db.admin import AuditEntry

    async with cm.svc.db() as session:
        return list((await session.scalars(select(AuditEntry).where(AuditEntry.action.in_(actions))
                                           .order_by(AuditEntry.id))).all())


async def test_ctl_provider_writes_are_audited_by_callmanager_once_nats_is_back(cm_nats, tmp_path):
    """Issue 9 §4/§5: ctl-provider's activation (CHK-1) and shared-TFTP registry (MODE-6) writes
    stage their audit record (`owner.change`) in the write's transaction; with NATS dead they are
    committed and answered, and once NATS is back callmanager — the audit log's only writer —
    records each exactly once, naming the caller. A refused write stages nothing."""
    from ccmsec_proto import common_pb2, ctl_provider_pb2

    cm, server = cm_nats
    svc, task, channel, stub = cm.provider  # the owner call control follows (one per node: its consumers)
    try:
        server.kill()
        await stub.Activate(ctl_provider_pb2.ActivateRequest(active=True), timeout=30)
        assert (await stub.GetProviderSettings(common_pb2.Empty(), timeout=10)).activated
        await stub.RegisterTftpCluster(ctl_provider_pb2.TftpCluster(
            cluster_id="other", tftp_path="cluster2", mode=common_pb2.CLUSTER_NON_SECURE), timeout=30)
        await stub.RemoveTftpCluster(ctl_provider_pb2.RemoveTftpClusterRequest(cluster_id="other"), timeout=30)
        staged = len(await _outbox_rows(svc))
        # Removing what is not there changes nothing: nothing staged.
        await stub.RemoveTftpCluster(ctl_provider_pb2.RemoveTftpClusterRequest(cluster_id="gone"), timeout=30)
        # Refused (MODE-6: our own TFTP path; RST-7: no such port): nothing written or staged.
        with pytest.raises(Exception, match="MODE-6"):
            await stub.RegisterTftpCluster(ctl_provider_pb2.TftpCluster(
                cluster_id="third", tftp_path="cluster1", mode=common_pb2.CLUSTER_NON_SECURE), timeout=30)
        with pytest.raises(Exception, match="not between 1 and 65535"):
            await stub.SetProviderPort(ctl_provider_pb2.SetProviderPortRequest(port=70000), timeout=30)
        assert len(await _outbox_rows(svc)) == staged == 3
        assert await svc.outbox.pending() == 3  # waiting for NATS
        actions = ("ctl_provider.activate", "tftp_cluster.register", "tftp_cluster.remove")
        assert await _audit(cm, actions) == []
        server.start()
        await _until(lambda: _drained(svc), BACK_TIMEOUT, "relayed")
        await _until(lambda: _audit(cm, ("tftp_cluster.remove",)),
                     BACK_TIMEOUT, "ctl-provider's writes in callmanager's audit log")
        await asyncio.sleep(3.0)  # a duplicate would be recorded now
        rows = await _audit(cm, actions)
        assert [(r.actor, r.action, r.target, r.rule, r.outcome) for r in rows] == [
            ("cli/cli", "ctl_provider.activate", svc.node, "CHK-1", "ok"),
            ("cli/cli", "tftp_cluster.register", "other", "MODE-6", "ok"),
            ("cli/cli", "tftp_cluster.remove", "other", "MODE-6", "ok")]
        assert all("(via grpc)" in r.detail and "by ctl-provider" in r.detail for r in rows)
        held = await _stream_events(server.url, subject_for("owner.change"))
        assert sorted(e.owner_change.action for e in held) == sorted(actions)
    finally:
        await channel.close()
        await _stop(svc, task)


async def test_ctl_provider_port_and_legacy_tls_commit_with_their_restarts(tmp_path, killable_nats):
    """RST-7 (port) and LATER-8 (legacy TLS), with NATS dead: each answered delivery_pending with
    the setting stored; its restarts and its audit record sit in ctl-provider's outbox, and once
    NATS is back each is in the stream exactly once."""
    from ccmsec_proto import common_pb2, ctl_provider_pb2
    from tests.conftest import free_port as port_on

    svc, task, channel, stub = await _start_ctl_provider(tmp_path, killable_nats.url)
    try:
        killable_nats.kill()
        tls = await stub.SetClusterTls(ctl_provider_pb2.ClusterTlsSettings(legacy_tls=True), timeout=30)
        assert tls.delivery_pending and tls.legacy_tls
        assert sorted(tls.events) == ["service.restart.callmanager LATER-8", "service.restart.capf LATER-8"]
        new_port = port_on(svc.settings.host)
        port = await stub.SetProviderPort(ctl_provider_pb2.SetProviderPortRequest(port=new_port), timeout=30)
        assert port.delivery_pending and list(port.events) == ["service.restart.ctl-provider RST-7"]
        assert (await stub.GetClusterTls(common_pb2.Empty(), timeout=10)).legacy_tls
        assert (await stub.GetProviderSettings(common_pb2.Empty(), timeout=10)).configured_port == new_port
        # unchanged: nothing staged, nothing audited
        again = await stub.SetClusterTls(ctl_provider_pb2.ClusterTlsSettings(legacy_tls=True), timeout=30)
        assert list(again.events) == [] and not again.delivery_pending
        staged = await _outbox_rows(svc)
        assert [(e.kind, e.service_restart.role or e.owner_change.action) for e in staged] == [
            ("owner.change", "cluster.legacy_tls"),
            ("service.restart", "callmanager"), ("service.restart", "capf"),
            ("owner.change", "ctl_provider.port"), ("service.restart", "ctl-provider")]
        assert [e.owner_change.actor for e in staged if e.kind == "owner.change"] == ["cli/cli"] * 2
        assert await svc.outbox.pending() == 5
        killable_nats.start()
        await _until(lambda: asyncio.sleep(0, svc.outbox.depth == 0 or task.done()), BACK_TIMEOUT, "relayed")
        # RST-7 restarts the provider itself; its outbox is in the database: drained either way.
        await _until(lambda: _stream_events(killable_nats.url), BACK_TIMEOUT, "events in the stream")
        await _until(lambda: asyncio.sleep(0, task.done()), BACK_TIMEOUT, "RST-7 restart")
        held = await _stream_events(killable_nats.url)
        assert sorted(e.id for e in held) == sorted(e.id for e in staged)  # each once, none lost
    finally:
        await channel.close()
        await _stop(svc, task)


async def test_callmanager_mobility_routing_resets_and_refusals_commit_with_their_events(cm_nats):
    """callmanager's writes that used to publish after their commit — a speed dial (config.changed),
    an extension-mobility login (its DEV-2 restart), the API's reset-all (CHK-13) — and a refused
    RPC (`access.denied`) are staged in callmanager's outbox with the write; with NATS dead each is
    answered (the API: delivery "pending"), a refused write stages nothing, and once NATS is back
    every event is in the stream exactly once and the refusal is in the audit log once."""
    import grpc

    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import service_identity
    from ccmsec_proto import callmanager_pb2_grpc

    cm, server = cm_nats
    name = "SEP0000000B0100"
    await cm.add_device(name, "7970")
    await cm.stub.AddMobilityUser(pb.MobilityUser(user_id="alice", dn="4100"), timeout=30)
    # an identity the policy refuses ResetDevices to (issue 9 §2): phone-sim
    intruder = service_identity(cm.data, "phone-sim", "phone-sim-1", "127.0.0.1")
    intruder_channel = secure_channel(intruder, cm.host, cm.svc.settings.grpc_port, "callmanager")
    await _until(lambda: _drained(cm.svc), BACK_TIMEOUT, "outbox drained")
    async with cm.svc.db() as session:
        before = await session.scalar(select(func.count()).select_from(OutboxRow))
    try:
        server.kill()
        await cm.stub.SetSpeedDial(pb.SpeedDialSetting(device=name, index=1, number="4200"), timeout=30)
        login = await cm.stub.MobilityLogin(pb.MobilityLoginRequest(device=name, user_id="alice"), timeout=30)
        assert login.request_id in cm.cc.registry.resets  # tracked before its event could leave
        answer = await _api(cm, "POST", "/api/v1/devices/reset", {"all": True})
        assert answer.status_code == 202, answer.text
        assert answer.json()["delivery"] == "pending"
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await callmanager_pb2_grpc.CallManagerStub(intruder_channel).ResetDevices(
                pb.ResetDevicesRequest(all=True), timeout=30)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # refused writes: nothing staged
        for refused in (cm.stub.SetSpeedDial(pb.SpeedDialSetting(device="SEP0000000B0199", index=1,
                                                                  number="4200"), timeout=30),
                        cm.stub.MobilityLogin(pb.MobilityLoginRequest(device=name, user_id="bob"), timeout=30)):
            with pytest.raises(grpc.aio.AioRpcError):
                await refused

        async def staged():
            async with cm.svc.db() as session:
                rows = (await session.scalars(select(OutboxRow).order_by(OutboxRow.seq))).all()
            return [events_pb2.Event.FromString(r.payload) for r in rows[before:]]

        # the refusal is reported off the request's path: wait until it is staged
        await _until(lambda: _count_kind(cm, "access.denied", at_least=1), 20, "the refusal staged")
        events = await staged()
        assert [(e.kind, e.config_changed.what or e.device_reset.rule or e.access_denied.method)
                for e in events] == [
            ("config.changed", "speed_dial"), ("device.reset", "DEV-2"), ("device.reset", "CHK-13"),
            ("access.denied", "/ccmsec.v1.CallManager/ResetDevices")]
        assert events[1].device_reset.request_id == login.request_id
        assert list(events[1].device_reset.devices) == [name] and events[1].device_reset.kind == events_pb2.RESTART
        assert await cm.svc.outbox.pending() == 4
        # the writes and their audit rows are committed already (callmanager's own audit)
        rows = await _audit(cm, ("speed_dial.set", "mobility.login", "device.reset_many"))
        assert [(r.action, r.actor) for r in rows] == [
            ("speed_dial.set", "cli/cli"), ("mobility.login", "cli/cli"), ("device.reset_many", "admin")]
        server.start()
        await _until(lambda: _drained(cm.svc), BACK_TIMEOUT, "relayed")
        await _until(lambda: _audit(cm, ("rpc.denied",)), BACK_TIMEOUT, "the refusal audited")
        await asyncio.sleep(3.0)  # a duplicate would arrive now
        held = await _stream_events(server.url)
        ids = [e.id for e in held]
        assert len(ids) == len(set(ids))
        assert {e.id for e in events} <= set(ids)
        denied_rows = await _audit(cm, ("rpc.denied",))
        assert [(r.actor, r.target) for r in denied_rows] == [
            ("phone-sim/phone-sim-1", "/ccmsec.v1.CallManager/ResetDevices")]
    finally:
        await intruder_channel.close()


async def test_routing_and_mobility_replies_say_pending_delivery_while_nats_is_stopped(cm_nats, capsys):
    """The routing and mobility gRPC methods (`ccmsec routing ...`, mobility login/logout) report
    their delivery like every other administrative write: with NATS up each reply says
    delivery_pending false (its event acknowledged); with NATS killed each says true — the change
    is saved, never reported done — and the CLI prints "pending delivery"; once NATS is back each
    staged event is in the stream exactly once."""
    import json as _json

    from ccmsec.cli.main import main as cli_main
    from ccmsec.cluster.state import endpoints_path

    cm, server = cm_nats
    name = "SEP0000000B0200"
    await cm.add_device(name, "7970")
    await cm.stub.AddLine(pb.Line(dn="4300", device=name), timeout=30)
    await cm.stub.AddMobilityUser(pb.MobilityUser(user_id="carol", dn="4301"), timeout=30)
    await cm.stub.SetRegion(pb.RegionSetting(name="wide", wideband=True), timeout=30)
    await _until(lambda: _drained(cm.svc), BACK_TIMEOUT, "outbox drained")

    async def six(number: str, busy: str, wideband: bool, region: str):
        """The six methods, in an order that changes something each time."""
        return [
            await cm.stub.SetSpeedDial(pb.SpeedDialSetting(device=name, index=1, number=number), timeout=30),
            await cm.stub.SetLineForward(pb.LineForwardSetting(dn="4300", busy=busy), timeout=30),
            await cm.stub.SetRegion(pb.RegionSetting(name="wide", wideband=wideband), timeout=30),
            await cm.stub.SetDeviceRegion(pb.DeviceRegionSetting(device=name, region=region), timeout=30),
            await cm.stub.MobilityLogin(pb.MobilityLoginRequest(device=name, user_id="carol"), timeout=30),
            await cm.stub.MobilityLogout(pb.MobilityLoginRequest(device=name), timeout=30),
        ]

    # NATS up: delivered, so not pending (the bad case for an always-"pending" reply).
    up = await six("4201", "4399", False, "wide")
    assert [r.delivery_pending for r in up] == [False] * 6
    await _until(lambda: _drained(cm.svc), BACK_TIMEOUT, "outbox drained")
    async with cm.svc.db() as session:
        before = await session.scalar(select(func.count()).select_from(OutboxRow))

    server.kill()
    down = await six("4202", "4398", True, "")
    assert [r.delivery_pending for r in down] == [True] * 6
    assert down[0].number == "4202" and down[1].busy == "4398" and down[4].user_id == "carol"
    async with cm.svc.db() as session:
        rows = (await session.scalars(select(OutboxRow).order_by(OutboxRow.seq))).all()
    staged = [events_pb2.Event.FromString(r.payload) for r in rows[before:]]
    assert [(e.kind, e.config_changed.what or e.device_reset.rule) for e in staged] == [
        ("config.changed", "speed_dial"), ("config.changed", "line_forward"),
        ("config.changed", "region"), ("config.changed", "region"),
        ("device.reset", "DEV-2"), ("device.reset", "DEV-2")]
    assert all(r.sent_at is None for r in rows[before:])
    # A change with nothing to announce (a region no phone is in) waits for nothing: not pending.
    lone = await cm.stub.SetRegion(pb.RegionSetting(name="empty", wideband=True), timeout=30)
    assert not lone.delivery_pending and list(lone.devices) == []

    # The CLI says so too (what an administrator sees): saved, pending delivery, exit code 0.
    endpoints = endpoints_path(cm.data)
    endpoints.parent.mkdir(parents=True, exist_ok=True)
    endpoints.write_text(_json.dumps({"services": {"callmanager": {
        "host": cm.host, "grpc_port": cm.svc.settings.grpc_port}}}))
    capsys.readouterr()
    code = await asyncio.to_thread(cli_main, ["routing", "speed-dial", name, "2", "4203",
                                              "--data", str(cm.data)])
    out = capsys.readouterr().out
    assert code == 0 and "speed dial 2 = 4203" in out and "pending delivery" in out, out

    server.start()
    await _until(lambda: _drained(cm.svc), BACK_TIMEOUT, "relayed")
    await asyncio.sleep(3.0)  # a duplicate would arrive now
    held = await _stream_events(server.url)
    ids = [e.id for e in held]
    assert len(ids) == len(set(ids))
    assert {e.id for e in staged} <= set(ids)


async def _count_kind(cm, kind: str, at_least: int) -> bool:
    async with cm.svc.db() as session:
        n = await session.scalar(select(func.count()).select_from(OutboxRow).where(OutboxRow.kind == kind))
    return (n or 0) >= at_least


async def test_capf_writes_commit_with_their_events_and_audit_record(tmp_path, killable_nats):
    """CAPF (CHK-2, RST-6, CHK-7): a schedule stages the device's config.changed and its audit
    record (never the auth string) with the operation; an enterprise parameter change its RST-6
    reset and audit record with the values — with NATS dead both are answered, a refused schedule
    stages nothing, and once NATS is back each event is in the stream exactly once."""
    import random

    import grpc

    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity, service_identity
    from ccmsec.runtime.settings import load_settings
    from ccmsec_capf.main import CapfService
    from ccmsec_proto import capf_pb2, capf_pb2_grpc, common_pb2, ctl_provider_pb2
    from tests.conftest import free_port as port_on
    from tests.deviceowner import device_owner, loopback_host

    host, cm_host = loopback_host(), loopback_host()
    settings = load_settings(service="capf", data_dir=tmp_path, host=host, grpc_port=port_on(host),
                             metrics_port=0, nats_url=killable_nats.url, capf_port=port_on(host),
                             shutdown_grace=1.0, bus_connect_timeout=10, peers={"callmanager": cm_host})
    service_identity(tmp_path, "capf", "capf", host)
    owner = device_owner(tmp_path, cm_host, settings.db_url)
    devices = await owner.__aenter__()  # call control's device look-ups, as CAPF asks them
    svc = CapfService(settings)
    task = asyncio.create_task(svc.run())
    channel = secure_channel(client_identity(tmp_path), host, settings.grpc_port, "capf")
    stub = capf_pb2_grpc.CapfStub(channel)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert not task.done(), "capf stopped during start"
            try:
                await stub.Status(common_pb2.Empty(), timeout=1)
                break
            except grpc.aio.AioRpcError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        await devices.add_device("SEP00000000C501", "7960", "non-secure")  # call control's; CAPF asks it
        await stub.Activate(ctl_provider_pb2.ActivateRequest(active=True), timeout=30)
        await _until(lambda: _drained(svc), BACK_TIMEOUT, "drained")  # the activation's record too
        first = len(await _outbox_rows(svc))
        assert [e.owner_change.action for e in await _outbox_rows(svc, "owner.change")] == ["capf.activate"]

        killable_nats.kill()
        op = await stub.ScheduleOperation(capf_pb2.CapfSchedule(
            device="SEP00000000C501", operation=capf_pb2.CAPF_INSTALL, auth_mode=capf_pb2.CAPF_AUTH_STRING,
            auth_string="97531", key_type="ec256"), timeout=30)
        assert op.state == "pending"
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.ScheduleOperation(capf_pb2.CapfSchedule(
                device="SEP00000000C5FF", operation=capf_pb2.CAPF_INSTALL, auth_mode=capf_pb2.CAPF_AUTH_NULL),
                timeout=30)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError):  # refused parameter: nothing stored or staged
            await stub.SetEnterpriseParameters(capf_pb2.CapfParametersRequest(
                values={"certificate_validity_days": "-1"}), timeout=30)
        params = await stub.SetEnterpriseParameters(capf_pb2.CapfParametersRequest(
            values={"certificate_validity_days": "90"}), timeout=30)
        assert params.delivery_pending and list(params.events) == ["device.reset RST-6"]
        staged = (await _outbox_rows(svc))[first:]
        assert [(e.kind, e.owner_change.action or e.config_changed.what or e.device_reset.rule)
                for e in staged] == [
            ("config.changed", "capf install scheduled"), ("owner.change", "capf.schedule"),
            ("owner.change", "capf.enterprise_parameters"), ("device.reset", "RST-6")]
        audit = [e.owner_change for e in staged if e.kind == "owner.change"]
        assert [(a.actor, a.target, a.door) for a in audit] == [
            ("cli/cli", "SEP00000000C501", "grpc"), ("cli/cli", "capf", "grpc")]
        assert "97531" not in audit[0].detail and f"operation {op.id}" in audit[0].detail
        assert await svc.outbox.pending() == 4

        killable_nats.start()
        await _until(lambda: _drained(svc), BACK_TIMEOUT, "relayed")
        held = await _stream_events(killable_nats.url)
        assert len({e.id for e in held}) == len(held)
        assert {e.id for e in staged} <= {e.id for e in held}
    finally:
        await channel.close()
        await _stop(svc, task)
        await owner.__aexit__(None, None, None)


async def test_handled_event_records_older_than_the_stream_keeps_are_forgotten(cm_nats, monkeypatch):
    """The handled-event records (a redelivered event changes nothing) are pruned by the bus
    watchdog once they are older than the stream keeps events, plus a day: a record of an event
    that can still come again is kept, so it is still recognised."""
    import datetime as dt

    from sqlalchemy import insert

    from ccmsec.db.events import HandledEvent
    from ccmsec.runtime import service as service_mod

    now = dt.datetime.now(dt.timezone.utc)
    svc = cm_nats[0].svc
    async with svc.db() as session, session.begin():
        await session.execute(insert(HandledEvent), [
            {"consumer": "callmanager-test", "event_id": "old", "handled_at": now - dt.timedelta(days=9)},
            {"consumer": "callmanager-test", "event_id": "recent", "handled_at": now - dt.timedelta(days=6)},
        ])
    monkeypatch.setattr(service_mod, "HANDLED_PRUNE_EVERY", 0.5)  # the watchdog's next check prunes

    async def old_gone() -> bool:
        return not await svc._seen("callmanager-test", "old")

    loop = asyncio.get_running_loop()
    end = loop.time() + 20
    while not await old_gone():
        assert loop.time() < end, "the watchdog did not forget a record older than the stream keeps"
        await asyncio.sleep(0.2)
    assert await svc._seen("callmanager-test", "recent")   # an event still in the stream: remembered


async def test_a_row_that_can_never_be_published_is_set_aside_and_the_rows_behind_it_go_out(
        tmp_path, caplog):
    """A poison row no longer blocks the outbox: the relay publishes in order, so a row NATS will
    never take — its payload does not decode, its kind has no subject, the server does not let this
    role publish it (BUS-2), it is larger than NATS accepts — held back every later row for ever.
    Now each is set aside (marked, logged once, counted) and the rows behind it are delivered, in
    order; a caller waiting for a set-aside event is told at once it was not delivered."""
    import logging

    from ccmsec.cluster.pki import issue_service_identity
    from ccmsec.runtime.bus import read_seed
    from tests.conftest import start_secured_nats, stop_process

    issue_service_identity(tmp_path, "phone-sim", "phone-sim", "127.0.0.1")
    folder = tmp_path / "identities" / "services" / "phone-sim"
    url, proc = start_secured_nats(tmp_path, [folder], tmp_path / "js")
    engine, db = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'ccmsec.db'}")
    bus = EventBus(url, "outbox-poison", role="phone-sim", seed=read_seed(folder), connect_timeout=10)
    relay = OutboxRelay(db, lambda e, t: bus.publish(e, t), origin="poison-node", role="poison-relay")

    def denied(method: str) -> events_pb2.Event:
        from ccmsec.runtime.bus import make_event
        return make_event("access.denied", "poison-node", access_denied=events_pb2.AccessDenied(method=method))

    try:
        await bus.connect()
        async with db() as session, session.begin():
            first = stage(session, "poison-node", "access.denied", None,
                          access_denied=events_pb2.AccessDenied(method="/x/First"))
            forbidden = stage(session, "poison-node", "device.reset", None,   # not phone-sim's to send
                              device_reset=events_pb2.DeviceReset(all=True, rule="RST-1"))
            unknown = denied("/x/Unknown")
            unknown.kind = "no.such.kind"
            huge = denied("/x/" + "H" * (2 * 1024 * 1024))                   # over NATS' 1 MB
            for kind, event_id, payload in (("no.such.kind", unknown.id, unknown.SerializeToString()),
                                            ("access.denied", "undecodable-1", b"\xff\xff\xff\xff"),
                                            ("access.denied", huge.id, huge.SerializeToString())):
                session.add(OutboxRow(event_id=event_id, origin="poison-node", kind=kind, target=None,
                                      payload=payload, attempts=0, last_error=""))
        async with db() as session, session.begin():
            last = stage(session, "poison-node", "access.denied", None,
                         access_denied=events_pb2.AccessDenied(method="/x/Last"))
        poison = [forbidden.id, unknown.id, "undecodable-1", huge.id]

        before = REGISTRY.get_sample_value("ccmsec_outbox_set_aside_total",
                                           {"service": "poison-relay", "node": "poison-node"}) or 0
        task = asyncio.create_task(relay.run())
        try:
            with caplog.at_level(logging.ERROR, logger="ccmsec.outbox"):
                assert await relay.wait_sent([first.id, last.id], 20), relay.last_error
                started = time.monotonic()
                assert not await relay.wait_sent([forbidden.id], 10)     # never: said at once
                assert time.monotonic() - started < 2
                relay.kick()
                await asyncio.sleep(0.5)   # another round: nothing is tried (or logged) again
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        held = await _stream_events_as_operator(url, tmp_path)
        assert [e.id for e in held] == [first.id, last.id]
        async with db() as session:
            rows = {r.event_id: r for r in (await session.scalars(select(OutboxRow))).all()}
        for event_id in poison:
            assert rows[event_id].sent_at is None and rows[event_id].last_error.startswith("set aside: ")
            assert rows[event_id].attempts == 1
        assert "permissions violation" in rows[forbidden.id].last_error.lower()
        assert "no.such.kind" in rows[unknown.id].last_error
        assert "does not decode" in rows["undecodable-1"].last_error
        assert "larger than NATS accepts" in rows[huge.id].last_error
        assert await relay.pending() == 0 and relay.depth == 0 and relay.set_aside_count == 4
        assert REGISTRY.get_sample_value("ccmsec_outbox_set_aside_total",
                                         {"service": "poison-relay", "node": "poison-node"}) == before + 4
        logged = [r for r in caplog.records if "set aside" in r.getMessage()]
        assert sorted(r.event_id for r in logged) == sorted(poison)   # once each
        assert "HHHH" not in caplog.text
    finally:
        await bus.close()
        await engine.dispose()
        stop_process(proc)


async def _stream_events_as_operator(url: str, data: Path) -> list[events_pb2.Event]:
    """The stream's events, read by sequence with the bus operator's credentials."""
    from ccmsec.cluster.pki import nats_admin_seed_path

    operator = EventBus(url, "operator", seed=nats_admin_seed_path(data).read_bytes().strip(),
                        connect_timeout=10)
    await operator.connect()
    try:
        info = await operator.js.stream_info("CCMSEC")
        return [events_pb2.Event.FromString((await operator.js.get_msg("CCMSEC", seq)).data)
                for seq in range(info.state.first_seq, info.state.last_seq + 1)]
    finally:
        await operator.close()


async def test_a_full_account_store_holds_the_row_back_it_never_sets_it_aside(tmp_path):
    """JetStream answers 400 'resource limits exceeded for account' (10002) while the account's
    store is full — a state of the server that clears (events age out, the operator raises the
    limit), not a fault of the message. Set aside, the event was lost for good; the relay must keep
    it, in order, and retry."""
    from ccmsec.cluster.pki import issue_service_identity, nats_config
    from ccmsec.runtime.bus import BusError, PublishRefused, make_event, read_seed
    from tests.conftest import stop_process, wait_port

    issue_service_identity(tmp_path, "phone-sim", "phone-sim", "127.0.0.1")
    folder = tmp_path / "identities" / "services" / "phone-sim"
    port = free_port()
    rendered = nats_config(tmp_path, [folder], listen=f"127.0.0.1:{port}",
                           store_dir=str(tmp_path / "js"), server_name=f"full-{port}")
    config = json.loads(rendered.split("\n", 1)[1])
    # the same users in one account whose JetStream store holds a few kB
    config["accounts"] = {"CCMSEC": {"jetstream": {"max_file": 4096, "max_mem": 0},
                                      "users": config.pop("authorization")["users"]}}
    conf = tmp_path / "nats-full.conf"
    conf.write_text(json.dumps(config))
    proc = subprocess.Popen([nats_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    bus = EventBus(f"nats://127.0.0.1:{port}", "outbox-full", role="phone-sim",
                   seed=read_seed(folder), connect_timeout=10)
    try:
        wait_port("127.0.0.1", port)
        await bus.connect()
        refusal = None
        for i in range(200):   # fill the account's store
            try:
                await bus.publish(make_event("access.denied", "full-node", access_denied=events_pb2.AccessDenied(
                    method="/x/" + "F" * 500 + str(i))))
            except BusError as exc:
                refusal = exc
                break
        assert refusal is not None, "the account's store never filled"
        assert "resource limits exceeded" in str(refusal)
        assert not isinstance(refusal, PublishRefused), refusal
    finally:
        await bus.close()
        stop_process(proc)


async def test_set_aside_rows_are_pruned_once_older_than_the_stream_keeps_waiting_rows_never(tmp_path):
    """A set-aside row is never published and was never deleted either: prune removed only
    acknowledged rows, so refused events piled up in event_outbox for ever. Now one older than the
    stream keeps an event goes with them; a newer one stays for inspection, and a row still waiting
    to be published (however old) and another origin's rows are never touched."""
    import datetime as dt

    from ccmsec.runtime.bus import STREAM_MAX_AGE

    engine, db = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'ccmsec.db'}")
    relay = OutboxRelay(db, lambda e, t: None, origin="prune-node", role="prune-relay")
    now = dt.datetime.now(dt.timezone.utc)
    old = now - dt.timedelta(seconds=STREAM_MAX_AGE + 3600)
    try:
        async with db() as session, session.begin():
            for event_id, origin, created, error in (
                    ("old-aside", "prune-node", old, "set aside: refused"),
                    ("new-aside", "prune-node", now - dt.timedelta(days=1), "set aside: refused"),
                    ("old-waiting", "prune-node", old, "BusError: no acknowledgement"),
                    ("other-aside", "other-node", old, "set aside: refused")):
                session.add(OutboxRow(event_id=event_id, origin=origin, kind="access.denied", target=None,
                                      payload=b"", attempts=1, last_error=error, created_at=created))
        await relay.prune()
        async with db() as session:
            left = sorted((await session.scalars(select(OutboxRow.event_id))).all())
        assert left == ["new-aside", "old-waiting", "other-aside"]
    finally:
        await engine.dispose()


async def test_a_refusal_of_a_longer_subject_is_not_taken_for_the_one_being_published(tmp_path):
    """A publish is aborted as refused as soon as the server reports a permissions violation naming
    its subject - matched as a substring, so a refused publish of a longer subject (here phone-sim's
    access.denied with one more token) sent just before made the allowed publish a PublishRefused:
    its outbox row would be set aside and its event lost."""
    from ccmsec.cluster.pki import issue_service_identity
    from ccmsec.runtime.bus import make_event, read_seed
    from tests.conftest import start_secured_nats, stop_process

    issue_service_identity(tmp_path, "phone-sim", "phone-sim", "127.0.0.1")
    folder = tmp_path / "identities" / "services" / "phone-sim"
    url, proc = start_secured_nats(tmp_path, [folder], tmp_path / "js")
    bus = EventBus(url, "outbox-prefix", role="phone-sim", seed=read_seed(folder), connect_timeout=10)
    try:
        await bus.connect()
        subject = subject_for("access.denied", None, "phone-sim")
        for i in range(5):
            await bus.nc.publish(subject + ".x", b"refused")   # not phone-sim's: a violation
            await bus.publish(make_event("access.denied", "prefix-node",
                                         access_denied=events_pb2.AccessDenied(method=f"/x/{i}")))
    finally:
        await bus.close()
        stop_process(proc)


async def test_resend_all_of_many_set_aside_rows_is_one_statement_and_touches_only_them(tmp_path):
    """`ccmsec outbox resend SERVICE --all` (Outbox/Resend): a misconfigured permission (BUS-2) sets
    aside every event of a kind, thousands a day. The re-queue updated them one by one in a single
    transaction — 20,000 rows took ~24 s here, holding the database's write lock while the
    service's own writers waited, and past the command line's 30 s deadline for more. Now one
    UPDATE ... RETURNING re-queues them however many there are: the reply names each, oldest first,
    the reason is kept, and a waiting row or another origin's set-aside row is not touched."""
    import sqlalchemy

    engine, db = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'ccmsec.db'}")
    relay = OutboxRelay(db, lambda e, t: None, origin="node", role="relay-many")
    many = 5000
    try:
        async with db() as session, session.begin():
            session.add_all([OutboxRow(event_id=f"aside-{i}", origin="node", kind="access.denied", payload=b"",
                                       attempts=1, last_error=f"set aside: refused {i}") for i in range(many)])
            session.add(OutboxRow(event_id="waiting", origin="node", kind="access.denied", payload=b"",
                                  attempts=1, last_error="BusError: no acknowledgement"))
            session.add(OutboxRow(event_id="other", origin="other-node", kind="access.denied", payload=b"",
                                  attempts=1, last_error="set aside: refused"))
        statements: list[str] = []

        def seen(conn, cursor, statement, *args):
            statements.append(statement.split(None, 1)[0].upper())

        sqlalchemy.event.listen(engine.sync_engine, "before_cursor_execute", seen)
        requeued = await relay.requeue(None)
        sqlalchemy.event.remove(engine.sync_engine, "before_cursor_execute", seen)
        assert statements.count("UPDATE") == 1, statements[:5]
        assert len(requeued) == many and requeued == sorted(requeued)
        async with db() as session:
            rows = {r.event_id: r.last_error for r in (await session.scalars(select(OutboxRow))).all()}
        assert rows["aside-7"] == "re-queued by the operator after: refused 7"
        assert rows["waiting"] == "BusError: no acknowledgement" and rows["other"] == "set aside: refused"
        assert await relay.requeue(None) == []  # nothing set aside any more
    finally:
        await engine.dispose()

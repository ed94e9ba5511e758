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
from ccmsec.runtime.outbox import OutboxRelay, stage
from ccmsec.wire import sccp as s
from ccmsec_proto import callmanager_pb2 as pb
from ccmsec_proto import events_pb2
from tests.conftest import free_port, nats_binary
from tests.integration.test_callmanager_service import Cm, _settings, _start, pki_template  # noqa: F401

pytestmark = pytest.mark.timeout(180)

BACK_TIMEOUT = 60.0  # generous: NATS restart, client reconnect back-off, relay back-off, shared CPUs


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
def killable_nats(tmp_path):
    server = Nats(tmp_path / "nats-store")
    server.start()
    yield server
    server.stop()


def _depth(role: str) -> float | None:
    return REGISTRY.get_sample_value("ccmsec_outbox_depth", {"service": role})


async def _stream_events(url: str, subject: str = "ccmsec.>") -> list[events_pb2.Event]:
    """Every event the CCMSEC stream holds on `subject` (an ordered consumer from the start)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("CCMSEC")
        out: list[events_pb2.Event] = []
        if info.state.messages == 0:
            return out
        sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=1.0)
                except (asyncio.TimeoutError, nats.errors.TimeoutError):
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


# --- the service: reset-all and set-security with NATS killed ----------------------------------------

@pytest.fixture
async def cm_nats(tmp_path, killable_nats, pki_template):
    import shutil
    for folder in ("pki", "servers", "identities"):
        shutil.copytree(pki_template / folder, tmp_path / folder)
    svc, task = await _start(_settings(tmp_path, killable_nats.url))
    handle = Cm(svc, task, tmp_path)
    yield handle, killable_nats
    await handle.channel.close()
    svc.request_stop()
    await asyncio.wait_for(task, 15)


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
        answer = await _api(cm, "PATCH", f"/api/v1/devices/{names[0]}", {"security_mode": "authenticated"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["delivery"] == "pending" and answer.json()["security_mode"] == "authenticated"
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

"""The administration API's CAPF endpoints against a real CAPF service (in process: real NATS, the
alembic-migrated SQLite both share, gRPC over the cluster's mTLS on its own loopback address).
Rules: CHK-2 (activation), DEV-3 (models without an LSC), CHK-7 (the issued log)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import grpc
import nats
import pytest
from cryptography.hazmat.primitives import hashes

from ccmsec.aio.capf import capf_client_run, capf_phone_ssl_context
from ccmsec.runtime.grpcio import secure_channel
from ccmsec.runtime.identity import (
    admin_api_identity_dir, client_identity, load_identity, service_identity, service_identity_dir,
)
from ccmsec.runtime.settings import load_settings
from ccmsec.wire.capf import CapfPhoneSession, PhoneCredentials, Reason
from ccmsec_callmanager.admin import BusEvents
from ccmsec_capf.activation import NOT_ACTIVATED
from ccmsec_capf.main import CapfService
from ccmsec_proto import capf_pb2_grpc, common_pb2, events_pb2
from tests.conftest import free_port
from tests.integration.test_admin_support import (  # noqa: F401  (fixtures)
    READONLY_PASSWORD,
    assert_json_error,
    cheap_argon2,
)
from tests.integration.test_admin_v2_support import v2_stack
from tests.deviceowner import device_owner, loopback_host

pytestmark = pytest.mark.timeout(60)

P60, P12 = "SEP00000000AD60", "SEP00000000AD12"


@pytest.fixture
async def capf_and_api(tmp_path, nats_server):
    """A running CapfService and the API on the same data directory, the API's CAPF channel = mTLS gRPC."""
    data = tmp_path / "data"
    host, cm_host = loopback_host(), loopback_host()
    settings = load_settings(service="capf", data_dir=data, host=host, grpc_port=free_port(host),
                             metrics_port=0, nats_url=nats_server, capf_port=free_port(host),
                             shutdown_grace=1.0, peers={"callmanager": cm_host})
    service_identity(data, "capf", "capf", host)  # issued before start, as the runner does
    # the API calls CAPF as `admin-api`, the identity issued with a callmanager (as in the service),
    # whose device look-ups CAPF asks (issue 9 §5)
    service_identity(data, "callmanager", "callmanager", cm_host)
    data.mkdir(parents=True, exist_ok=True)
    owner = device_owner(data, cm_host, settings.db_url)
    stack_devices = await owner.__aenter__()
    admin_api = load_identity(admin_api_identity_dir(service_identity_dir(data, "callmanager")))
    svc = CapfService(settings)
    task = asyncio.create_task(svc.run())
    channel = secure_channel(admin_api, host, settings.grpc_port, "capf")
    stub = capf_pb2_grpc.CapfStub(channel)
    deadline = time.monotonic() + 20
    while True:
        assert not task.done(), "capf service stopped during start"
        try:
            await stub.Status(common_pb2.Empty(), timeout=1)
            break
        except grpc.aio.AioRpcError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    try:
        async with v2_stack(data, capf_channel=lambda: channel) as stack:
            stack.capf = svc
            stack.device_owner = stack_devices
            yield stack
    finally:
        await channel.close()
        svc.request_stop()
        await asyncio.wait_for(task, 10)
        await owner.__aexit__(None, None, None)


async def capf_audits(api) -> list[events_pb2.OwnerChange]:
    """The owner.change records CAPF staged in its outbox (the database the API shares)."""
    from sqlalchemy import select

    from ccmsec.db.outbox import OutboxRow

    async with api.sessionmaker() as session:
        rows = (await session.scalars(select(OutboxRow).where(OutboxRow.kind == "owner.change")
                                      .order_by(OutboxRow.seq))).all()
    return [events_pb2.Event.FromString(r.payload).owner_change for r in rows]


async def test_chk2_capf_schedule_through_the_api_refused_until_activated(capf_and_api):
    """CHK-2: FAILED_PRECONDITION from CAPF → 409 naming CHK-2, audited; after activation, scheduled."""
    api = capf_and_api
    admin = api.admin()
    assert (await admin.post("/api/v1/devices", json={"name": P60, "model": "7960"})).status_code == 201
    schedule = {"device": P60, "operation": "install", "auth_mode": "string", "auth_string": "135790",
                "key_type": "rsa1024",
                "deadline": (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).isoformat()}
    body = assert_json_error(await admin.post("/api/v1/capf/operations", json=schedule), 409, "CHK-2")
    assert body["error"] == NOT_ACTIVATED

    viewer = await api.token_client("viewer", READONLY_PASSWORD)
    assert_json_error(await viewer.post("/api/v1/capf/activation", json={"active": True}), 403)
    r = await admin.post("/api/v1/capf/activation", json={"active": True})
    assert r.status_code == 200 and r.json()["activated"] is True and r.json()["role"] == "capf"

    r = await admin.post("/api/v1/capf/operations", json=schedule)
    assert r.status_code == 201, r.text
    op = r.json()
    assert (op["device"], op["operation"], op["auth_mode"], op["key_type"], op["state"]) == (
        P60, "install", "string", "rsa1024", "pending")
    assert op["deadline"] is not None and "135790" not in r.text  # never echoed back
    listed = (await viewer.get("/api/v1/capf/operations", params={"device": P60})).json()["operations"]
    assert [o["id"] for o in listed] == [op["id"]]

    # The phone enrolls with that string; the issued log (CHK-7) shows the certificate.
    phone = PhoneCredentials(P60, capf_certificate=api.capf.capf_ca.cert, auth_string="135790", auth_mode="string")
    session = CapfPhoneSession(phone)
    await capf_client_run(api.capf.settings.host, api.capf.capf_port,
                          capf_phone_ssl_context(api.capf.capf_ca.cert), session, timeout=10)
    assert session.end_reason == Reason.OK
    log = (await viewer.get("/api/v1/capf/log", params={"device": P60})).json()["entries"]
    assert [(e["device"], e["outcome"], e["operation_id"]) for e in log] == [(P60, "installed", op["id"])]
    assert log[0]["certificate"]["fingerprint_sha256"] == phone.lsc_cert.fingerprint(hashes.SHA256()).hex()
    done = (await viewer.get("/api/v1/capf/operations", params={"device": P60})).json()["operations"][0]
    assert done["state"] == "done" and done["issued_fingerprint"] == log[0]["certificate"]["fingerprint_sha256"]

    rows = [(r.action, r.outcome, r.rule, r.detail) for r in await api.audit_rows()
            if r.action.startswith("capf.")]
    assert [(a, o, rule) for a, o, rule, _ in rows] == [
        ("capf.schedule", "refused", "CHK-2"), ("capf.activate", "denied", None)]
    # The writes are audited by their owner, CAPF, in the write's transaction (issue 9 §5): one
    # owner.change each in its outbox, naming the administrator the API acted for; callmanager
    # records them in the audit log (tests/integration/test_outbox.py follows them there).
    audits = await capf_audits(api)
    assert [(o.action, o.actor, o.door, o.target) for o in audits] == [
        ("capf.activate", "admin (via admin-api/callmanager)", "admin-api", "capf"),
        ("capf.schedule", "admin (via admin-api/callmanager)", "admin-api", P60)]
    assert not any("135790" in (d or "") for *_, d in rows), "the auth string is never audited"
    assert not any("135790" in o.detail for o in audits), "the auth string is never audited"

    # Both CAPF lists page with cursors (issue 16): limit=1 walks to the same rows as one page.
    again = await admin.post("/api/v1/capf/operations", json={**schedule, "operation": "delete"})
    assert again.status_code == 201, again.text
    for path, key in (("/api/v1/capf/operations", "operations"), ("/api/v1/capf/log", "entries")):
        walked, cursor = [], None
        for _ in range(10):
            page = (await viewer.get(path, params={"limit": 1, **({"cursor": cursor} if cursor else {})})).json()
            walked += page[key]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        whole = (await viewer.get(path)).json()
        assert whole["next_cursor"] is None and walked == whole[key], path
    ops = (await viewer.get("/api/v1/capf/operations")).json()["operations"]
    assert [o["id"] for o in ops] == [again.json()["id"], op["id"]]  # newest first
    assert_json_error(await viewer.get("/api/v1/capf/operations", params={"cursor": "WyJ4Il0"}), 422)


async def test_capf_refusals_map_to_clear_http_errors(capf_and_api):
    """DEV-3 → 409 DEV-3; unknown device → 404; CAPF's INVALID_ARGUMENT → 422; bad JSON → 422 locally."""
    api = capf_and_api
    admin = api.admin()
    await admin.post("/api/v1/capf/activation", json={"active": True})
    await admin.post("/api/v1/devices", json={"name": P12, "model": "7912"})
    await admin.post("/api/v1/devices", json={"name": P60, "model": "7960"})
    base = {"device": P60, "operation": "install", "auth_mode": "null"}
    body = assert_json_error(await admin.post("/api/v1/capf/operations", json={**base, "device": P12}),
                             409, "DEV-3")
    assert "7912" in body["error"]
    assert_json_error(await admin.post("/api/v1/capf/operations", json={**base, "device": "SEP0000000DEAD0"}), 404)
    past = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)).isoformat()
    for refused_by_capf in ({**base, "deadline": past}, {**base, "auth_mode": "string"},
                            {**base, "auth_string": "1234"}):
        assert_json_error(await admin.post("/api/v1/capf/operations", json=refused_by_capf), 422)
    for bad in ({**base, "operation": "steal"}, {**base, "auth_mode": "pin"}, {**base, "key_type": "rsa512"},
                {**base, "auth_string": "12ab"}, {**base, "deadline": "tomorrow"},
                {**base, "deadline": "2030-01-01T00:00:00"}, {**base, "device": "bad name"},
                {"device": P60, "operation": "install"}, {**base, "extra": 1}):
        assert_json_error(await admin.post("/api/v1/capf/operations", json=bad), 422)
    assert_json_error(await admin.get("/api/v1/capf/operations", params={"device": "SEP0000000DEAD0"}), 404)
    assert_json_error(await admin.get("/api/v1/capf/log", params={"device": "bad name"}), 422)
    assert_json_error(await admin.post("/api/v1/capf/activation", json={"active": "yes"}), 422)
    assert (await admin.get("/api/v1/capf/operations")).json() == {"operations": [], "next_cursor": None}
    refused = [(r.rule, r.status) for r in await api.audit_rows() if r.action == "capf.schedule"]
    assert refused[0] == ("DEV-3", 409) and len(refused) == 2 + 3 + 9


async def test_call_control_down_schedule_is_503_saying_so_and_nothing_is_scheduled(capf_and_api):
    """CAPF asks call control for the device (issue 9 §5): with call control gone the schedule is
    refused 503 naming the devices' owner (not "CAPF unreachable"), and no operation is recorded."""
    api = capf_and_api
    admin = api.admin()
    await admin.post("/api/v1/capf/activation", json={"active": True})
    await admin.post("/api/v1/devices", json={"name": P60, "model": "7960"})
    await api.device_owner.stop()
    body = assert_json_error(await admin.post("/api/v1/capf/operations", json={
        "device": P60, "operation": "install", "auth_mode": "null"}), 503)
    assert body["error"].startswith("call control (the devices' owner) did not answer")
    assert "nothing was scheduled" in body["error"]
    assert (await admin.get("/api/v1/capf/operations")).json() == {"operations": [], "next_cursor": None}


async def test_capf_unreachable_is_503_and_bus_events_reach_nats(capf_and_api, nats_server):
    """No CAPF behind the channel → 503 "CAPF service unreachable"; BusEvents publishes the API's
    events on the real bus unchanged (device.reset with its request id)."""
    api = capf_and_api
    admin = api.admin()
    dead_host = "127.0.0.1"
    dead = secure_channel(client_identity(api.data_dir), dead_host, free_port(dead_host), "capf")
    api.app.state.capf_channel = lambda: dead
    try:
        body = assert_json_error(await admin.get("/api/v1/capf/operations"), 503)
        assert body["error"].startswith("CAPF service unreachable")
        assert_json_error(await admin.post("/api/v1/capf/activation", json={"active": True}), 503)
    finally:
        await dead.close()
    api.app.state.capf_channel = None
    assert_json_error(await admin.get("/api/v1/capf/log"), 503)
    rows = [(r.action, r.outcome, r.status) for r in await api.audit_rows() if r.action.startswith("capf.")]
    assert rows == [("capf.operations", "error", 503), ("capf.activate", "error", 503),
                    ("capf.log", "error", 503)]

    nc = await nats.connect(nats_server)
    got: list[events_pb2.Event] = []

    async def collect(msg):
        got.append(events_pb2.Event.FromString(msg.data))

    sub = await nc.subscribe("ccmsec.*.device.reset", cb=collect)
    try:
        api.app.state.events = BusEvents(api.capf.publish)
        await admin.post("/api/v1/devices", json={"name": P60, "model": "7960"})
        r = await admin.post(f"/api/v1/devices/{P60}/reset", json={"kind": "restart"})
        assert r.status_code == 202
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.05)
        (event,) = got
        assert event.kind == "device.reset" and event.id
        assert list(event.device_reset.devices) == [P60]
        assert event.device_reset.kind == events_pb2.RESTART
        assert event.device_reset.request_id == r.json()["request_id"]
    finally:
        await sub.unsubscribe()
        await nc.close()

"""The operator's tools for a service's set-aside outbox rows (issue 9 §4): `ccmsec.v1.Outbox` on
every service's gRPC server, `ccmsec outbox list|resend`.

A row NATS/JetStream refuses for good is set aside (counted, logged, pruned after 7 days); an
operator could neither see what was set aside nor try it again once the cause was fixed. Now the
owning service lists its set-aside rows (id, subject, when, reason, payload size — never the
payload) and re-queues one or all: the relay tries them again in order; refused again, a row is
set aside again and counted. Only the administration path may call either (rpc_policy, default
deny), and the service is reached through its own API, never its database.

The refusal is NATS' own answer to a real publish (BUS-2, permissions violation on a secured
server), "fixed" by letting the relay publish under the role that may send the event — as an
operator fixing the server's permissions would.
"""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest

from ccmsec.cluster.pki import issue_service_identity
from ccmsec.runtime.bus import EventBus, read_seed
from ccmsec.runtime.grpcio import secure_channel
from ccmsec.runtime.identity import client_identity, service_identity
from ccmsec.runtime.metrics import REGISTRY
from ccmsec.runtime.outbox import stage
from ccmsec.runtime.settings import load_settings
from ccmsec_keymanager.main import KeyManagerService
from ccmsec_proto import common_pb2, events_pb2, keymanager_pb2_grpc, outbox_pb2, outbox_pb2_grpc
from tests.conftest import free_port, start_secured_nats, stop_process

pytestmark = pytest.mark.timeout(120)

HOST = "127.0.0.1"
SECRET = "s3cr3t-Payload-Text"  # in the payload: never in any answer


def _set_aside_total(node: str) -> float:
    return REGISTRY.get_sample_value("ccmsec_outbox_set_aside_total",
                                     {"service": "keymanager", "node": node}) or 0


async def _stream(url: str, data) -> list[events_pb2.Event]:
    from ccmsec.cluster.pki import nats_admin_seed_path

    operator = EventBus(url, "operator", seed=nats_admin_seed_path(data).read_bytes().strip(),
                        connect_timeout=10)
    await operator.connect()
    try:
        info = await operator.js.stream_info("CCMSEC")
        return [events_pb2.Event.FromString((await operator.js.get_msg("CCMSEC", seq)).data)
                for seq in range(info.state.first_seq, info.state.last_seq + 1)] if info.state.messages else []
    finally:
        await operator.close()


@pytest.fixture
async def keymanager(tmp_path):
    """keymanager in process on a secured NATS (the configuration `ccmsec up` renders); a
    callmanager identity beside it, whose bus credentials may publish `device.reset`."""
    port = free_port(HOST)
    service_identity(tmp_path, "keymanager", "keymanager", HOST)
    issue_service_identity(tmp_path, "callmanager", "callmanager", HOST)
    folders = [tmp_path / "identities" / "services" / n for n in ("keymanager", "callmanager")]
    url, proc = start_secured_nats(tmp_path, folders, tmp_path / "js")
    settings = load_settings(service="keymanager", data_dir=tmp_path, host=HOST, grpc_port=port,
                             metrics_port=0, nats_url=url, shutdown_grace=1.0)
    svc = KeyManagerService(settings)
    task = asyncio.create_task(svc.run())
    channel = secure_channel(client_identity(tmp_path), HOST, port, "keymanager")
    deadline = time.monotonic() + 30
    while True:
        assert not task.done(), task.exception() if task.done() else ""
        try:
            await keymanager_pb2_grpc.KeyManagerStub(channel).Status(common_pb2.Empty(), timeout=1)
            break
        except grpc.aio.AioRpcError:
            assert time.monotonic() < deadline, "keymanager did not start"
            await asyncio.sleep(0.1)
    (tmp_path / "run").mkdir(exist_ok=True)   # what `ccmsec up` writes: where the CLI finds it
    (tmp_path / "run" / "endpoints.json").write_text(json.dumps(
        {"services": {"keymanager": {"host": HOST, "grpc_port": port}}}))
    try:
        yield svc, outbox_pb2_grpc.OutboxStub(channel), url, tmp_path
    finally:
        await channel.close()
        svc.request_stop()
        await asyncio.wait_for(task, 15)
        stop_process(proc)


async def _stage_refused(svc) -> list[events_pb2.Event]:
    """Two rows keymanager's bus user may not publish (device.reset: call control's, BUS-2), one it may."""
    async with svc.db() as session, session.begin():
        refused = [stage(session, svc.node, "device.reset", None, device_reset=events_pb2.DeviceReset(
            devices=[f"SEP00000000000{i}"], rule="RST-1", reason=SECRET)) for i in (1, 2)]
        allowed = stage(session, svc.node, "access.denied", None,
                        access_denied=events_pb2.AccessDenied(method="/x/After"))
    svc.outbox.kick()
    assert await svc.outbox.wait_sent([allowed.id], 20), svc.outbox.last_error
    for _ in range(100):
        if not await svc.outbox.wait_sent([e.id for e in refused], 0.2) and svc.outbox.set_aside_count >= 2:
            break
    assert svc.outbox.set_aside_count == 2
    return refused


async def test_set_aside_rows_are_listed_without_their_payload_and_resent_once_the_cause_is_fixed(
        keymanager):
    """Issue 9 §4, BUS-2: the rows NATS refused are listed (id, subject, staged time, reason, payload
    size; no payload), re-queued by id — published, in order, once the cause is fixed — and,
    refused again, set aside again and counted again; `--all` re-queues every one."""
    svc, stub, url, data = keymanager
    before = _set_aside_total(svc.node)
    refused = await _stage_refused(svc)
    assert _set_aside_total(svc.node) == before + 2

    listed = await stub.ListSetAside(outbox_pb2.ListSetAsideRequest(), timeout=10)
    assert (listed.role, listed.node, listed.total) == ("keymanager", svc.node, 2)
    assert [r.event_id for r in listed.rows] == [e.id for e in refused]
    first = listed.rows[0]
    assert first.kind == "device.reset" and first.subject.startswith("ccmsec.") and "device" in first.subject
    assert "permissions violation" in first.reason.lower() and not first.reason.startswith("set aside")
    assert first.payload_bytes == len(refused[0].SerializeToString())
    assert abs(first.created_unix_ms / 1000 - time.time()) < 60 and first.attempts == 1
    assert SECRET not in str(listed) and SECRET.encode() not in listed.SerializeToString()
    one = await stub.ListSetAside(outbox_pb2.ListSetAsideRequest(limit=1), timeout=10)
    assert len(one.rows) == 1 and one.total == 2

    # Not fixed yet: resent, refused again -> set aside again, counted again, still listed.
    reply = await stub.Resend(outbox_pb2.ResendRequest(ids=[first.id]), timeout=10)
    assert list(reply.ids) == [first.id]
    for _ in range(100):
        if _set_aside_total(svc.node) == before + 3:
            break
        await asyncio.sleep(0.1)
    assert _set_aside_total(svc.node) == before + 3
    again = await stub.ListSetAside(outbox_pb2.ListSetAsideRequest(), timeout=10)
    assert [(r.id, r.attempts) for r in again.rows] == [(first.id, 2), (listed.rows[1].id, 1)]

    # The cause fixed: the bus lets the relay publish device.reset (as call control may, BUS-2).
    allowed_bus = EventBus(url, "fixed", role="callmanager", connect_timeout=10,
                           seed=read_seed(data / "identities" / "services" / "callmanager"))
    await allowed_bus.connect()
    try:
        svc.outbox.publish_event = lambda event, target: allowed_bus.publish(event, target)
        reply = await stub.Resend(outbox_pb2.ResendRequest(ids=[first.id]), timeout=10)
        assert list(reply.ids) == [first.id]
        assert await svc.outbox.wait_sent([refused[0].id], 20), svc.outbox.last_error
        left = await stub.ListSetAside(outbox_pb2.ListSetAsideRequest(), timeout=10)
        assert [r.event_id for r in left.rows] == [refused[1].id]
        reply = await stub.Resend(outbox_pb2.ResendRequest(all=True), timeout=10)
        assert list(reply.ids) == [listed.rows[1].id]
        assert await svc.outbox.wait_sent([refused[1].id], 20), svc.outbox.last_error
    finally:
        await allowed_bus.close()
    assert (await stub.ListSetAside(outbox_pb2.ListSetAsideRequest(), timeout=10)).total == 0
    held = [e.id for e in await _stream(url, data) if e.kind == "device.reset"]
    assert held == [refused[0].id, refused[1].id]   # each once, in order
    assert _set_aside_total(svc.node) == before + 3


async def test_resend_refuses_unknown_ids_and_bad_requests_clearly_and_changes_nothing(keymanager):
    """An id that is not a set-aside row of this service (unknown, or already published) is
    NOT_FOUND, naming it, and nothing is re-queued — not even the good ids beside it; neither or
    both of ids/all, and a listing over the bound, are INVALID_ARGUMENT."""
    svc, stub, _url, _data = keymanager
    await _stage_refused(svc)
    listed = await stub.ListSetAside(outbox_pb2.ListSetAsideRequest(), timeout=10)
    good = listed.rows[0].id
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stub.Resend(outbox_pb2.ResendRequest(ids=[good, 999_999]), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "999999" in unknown.value.details() and "nothing re-queued" in unknown.value.details()
    assert (await stub.ListSetAside(outbox_pb2.ListSetAsideRequest(), timeout=10)).total == 2
    for request in (outbox_pb2.ResendRequest(), outbox_pb2.ResendRequest(ids=[good], all=True)):
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.Resend(request, timeout=10)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.ListSetAside(outbox_pb2.ListSetAsideRequest(limit=5000), timeout=10)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_only_the_administration_path_may_list_or_resend_another_role_is_refused(keymanager):
    """Issue 9 §2 (default deny): a service identity (here call control's) may neither read nor
    re-queue keymanager's outbox — PERMISSION_DENIED naming the caller — and nothing changes."""
    svc, stub, _url, data = keymanager
    await _stage_refused(svc)
    ident = issue_service_identity(data, "callmanager", "cm-other", HOST, out_dir=data / "cm-other")
    async with secure_channel(ident, HOST, svc.settings.grpc_port, "keymanager") as channel:
        other = outbox_pb2_grpc.OutboxStub(channel)
        for call in (other.ListSetAside(outbox_pb2.ListSetAsideRequest(), timeout=10),
                     other.Resend(outbox_pb2.ResendRequest(all=True), timeout=10)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "callmanager/cm-other" in refused.value.details()
    assert (await stub.ListSetAside(outbox_pb2.ListSetAsideRequest(), timeout=10)).total == 2


async def test_cli_outbox_list_and_resend(keymanager, capsys):
    """`ccmsec outbox list SERVICE` / `resend SERVICE --id N | --all` over the CLI's identity:
    the table (no payload), JSON, a clear error for an unknown service or id, exit codes."""
    from ccmsec.cli.main import main

    svc, _stub, _url, data = keymanager
    refused = await _stage_refused(svc)

    def cli(*argv) -> tuple[int, str, str]:
        code = main([*argv, "--data", str(data)])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = await asyncio.to_thread(cli, "outbox", "list", "keymanager")
    assert code == 0 and "permissions violation" in out.lower() and SECRET not in out
    assert "2 set-aside event(s) on keymanager" in out
    code, out, _ = await asyncio.to_thread(cli, "outbox", "list", "keymanager", "--json")
    listed = json.loads(out)
    assert code == 0 and [r["event_id"] for r in listed["rows"]] == [e.id for e in refused]
    assert SECRET not in out and listed["rows"][0]["payload_bytes"] > 0
    code, _, err = await asyncio.to_thread(cli, "outbox", "list", "nosuch")
    assert code != 0 and "no service nosuch" in err and "keymanager" in err and "Traceback" not in err
    code, _, err = await asyncio.to_thread(cli, "outbox", "resend", "keymanager", "--id", "424242")
    assert code != 0 and "424242" in err and "Traceback" not in err
    first = listed["rows"][0]["id"]
    code, out, _ = await asyncio.to_thread(cli, "outbox", "resend", "keymanager", "--id", str(first))
    assert code == 0 and f"1 event(s) re-queued ({first})" in out
    code, out, _ = await asyncio.to_thread(cli, "outbox", "resend", "keymanager", "--all", "--json")
    assert code == 0 and isinstance(json.loads(out)["requeued"], list)


async def test_status_shows_the_rows_set_aside_before_a_restart_until_resent(keymanager):
    """Issue 9 §4: `ccmsec status` (details outbox_set_aside) is where an operator learns there is
    something for `ccmsec outbox list|resend`. It counted the rows set aside since the relay
    started: after a restart the rows were still there (kept 7 days) but the status said nothing,
    and after a successful resend it still named them. It now shows the rows set aside now."""
    from ccmsec.runtime.outbox import OutboxRelay

    svc, stub, _url, _data = keymanager
    await _stage_refused(svc)
    assert svc.status_message().details["outbox_set_aside"] == "2"
    # A restarted service's relay: the rows are in the database, none set aside by it yet.
    async def accepted(event, target):  # the cause fixed: a resent row is published
        return None

    old = svc.outbox
    old.publish_event = accepted  # (the first relay still runs: it must not set them aside again)
    restarted = OutboxRelay(svc.db, accepted, origin=old.origin, role=old.role)
    svc.outbox = restarted
    task = asyncio.create_task(restarted.run())
    try:
        for _ in range(100):
            if svc.status_message().details.get("outbox_set_aside") == "2":
                break
            await asyncio.sleep(0.05)
        assert restarted.set_aside_count == 0
        assert svc.status_message().details.get("outbox_set_aside") == "2"
        # resent and published this time (the publish is accepted): nothing left to show
        listed = await stub.ListSetAside(outbox_pb2.ListSetAsideRequest(), timeout=10)
        await stub.Resend(outbox_pb2.ResendRequest(ids=[listed.rows[0].id]), timeout=10)
        assert svc.status_message().details.get("outbox_set_aside") == "1"
        await stub.Resend(outbox_pb2.ResendRequest(all=True), timeout=10)
        assert "outbox_set_aside" not in svc.status_message().details
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        svc.outbox = old


async def _audits(svc) -> list[events_pb2.OwnerChange]:
    """The resend audit records (`owner.change` `outbox.resend`) in the service's outbox, once
    each is acknowledged by JetStream (the secured server lets the service publish them)."""
    from sqlalchemy import select

    from ccmsec.db.outbox import OutboxRow

    async with svc.db() as session:
        rows = (await session.execute(select(OutboxRow.event_id, OutboxRow.payload).where(
            OutboxRow.kind == "owner.change").order_by(OutboxRow.seq))).all()
    events = [events_pb2.Event.FromString(payload) for _, payload in rows]
    assert await svc.outbox.wait_sent([e.id for e in events], 20), svc.outbox.last_error
    from ccmsec.runtime.bus_policy import check_event  # what callmanager's consumer checks (BUS-3)

    assert all(check_event(f"ccmsec.{svc.role}.owner.change", e)[1] == "" for e in events)
    return [e.owner_change for e in events if e.owner_change.action == "outbox.resend"]


async def test_a_resend_restarts_the_rows_clock_and_is_audited(keymanager):
    """Issue 9 §4/§5: a resent row kept its first staging time, so one refused again was pruned 7
    days after its first staging, however recent the resend — and the resend itself was only
    logged. Now a resend restarts the row's clock (its staged time becomes the resend's: pruned
    7 days after it) and stages its audit record with the re-queue: `owner.change`
    `outbox.resend` naming the caller, the service and the rows (or "all"), which callmanager
    records in its audit log. Bad case: a refused resend (an unknown id) re-queues nothing and
    audits nothing."""
    import datetime as dt

    from sqlalchemy import update

    from ccmsec.db.outbox import OutboxRow
    from ccmsec_callmanager.access_audit import owner_change_entry

    svc, stub, _url, _data = keymanager
    await _stage_refused(svc)
    first, second = (await stub.ListSetAside(outbox_pb2.ListSetAsideRequest(), timeout=10)).rows
    six_days_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=6)
    async with svc.db() as session, session.begin():  # both first staged six days ago
        await session.execute(update(OutboxRow).where(OutboxRow.seq.in_([first.id, second.id]))
                              .values(created_at=six_days_ago))

    with pytest.raises(grpc.aio.AioRpcError) as unknown:  # bad case: nothing re-queued or audited
        await stub.Resend(outbox_pb2.ResendRequest(ids=[first.id, 424242]), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert await _audits(svc) == []

    before = _set_aside_total(svc.node)
    assert list((await stub.Resend(outbox_pb2.ResendRequest(ids=[first.id]), timeout=10)).ids) == [first.id]
    [by_ids] = await _audits(svc)  # (read now: the prune below deletes the acknowledged rows)
    for _ in range(100):  # refused again (the cause is not fixed): set aside again
        if _set_aside_total(svc.node) == before + 1:
            break
        await asyncio.sleep(0.1)
    assert _set_aside_total(svc.node) == before + 1
    listed = await stub.ListSetAside(outbox_pb2.ListSetAsideRequest(), timeout=10)
    staged = {r.id: r.created_unix_ms / 1000 for r in listed.rows}
    assert abs(staged[first.id] - time.time()) < 60, "the resend did not restart the row's clock"
    assert abs(staged[second.id] - six_days_ago.timestamp()) < 5

    # Two days on: the row not resent is 8 days old and pruned; the resent one is 2 days old.
    await svc.outbox.prune(dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2))
    left = await stub.ListSetAside(outbox_pb2.ListSetAsideRequest(), timeout=10)
    assert [r.id for r in left.rows] == [first.id]

    assert list((await stub.Resend(outbox_pb2.ResendRequest(all=True), timeout=10)).ids) == [first.id]
    [by_all] = await _audits(svc)
    for audit, which in ((by_ids, "ids"), (by_all, "all")):
        assert audit.actor.startswith("cli/") and audit.door == "grpc"
        assert audit.target == f"keymanager/{svc.node}"
        assert audit.detail == f"{which}: 1 set-aside row(s) re-queued: {first.id}"
    entry = owner_change_entry(events_pb2.Event(owner_change=by_all), "keymanager")
    assert (entry.action, entry.target) == ("outbox.resend", f"keymanager/{svc.node}")
    assert entry.actor == by_all.actor and "(by keymanager)" in entry.detail

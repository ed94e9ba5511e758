"""The event-bus attacks of issue 9 §3–4, replayed on the running cluster (`ccmsec up`) as a process
on the same host would, with what it can read: no credentials, or one service's identity folder.

* BUS-1: an anonymous connection to the cluster's NATS is refused;
* BUS-2: phone-sim's credentials cannot publish `device.reset`, nor forge callmanager's subject;
* BUS-4: callmanager's credentials cannot delete the `CCMSEC` stream;
* BUS-5: when the stream is lost and cannot come back, `ccmsec status` says DEGRADED with the reason
  and exits 4; once it can, the services heal, status is SERVING again (exit 0) and a reset
  published by the administrator's CLI reaches call control.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from ccmsec.cluster.pki import nats_admin_seed_path
from ccmsec.runtime.bus import STREAM, BusError, EventBus, make_event, read_seed
from ccmsec.runtime.grpcio import secure_channel
from ccmsec.runtime.identity import client_identity
from ccmsec_proto import callmanager_pb2_grpc, common_pb2, events_pb2
from tests.conftest import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def _service_bus(cluster, role: str, *, as_role: str | None = None) -> EventBus:
    folder = Path(cluster["data"]) / "identities" / "services" / role
    return EventBus(cluster["endpoints"]["nats_url"], f"attacker-{role}", role=as_role or role,
                    seed=read_seed(folder), connect_timeout=10)


def _reset() -> events_pb2.Event:
    return make_event("device.reset", "attacker", device_reset=events_pb2.DeviceReset(all=True, rule="RST-3"))


async def test_no_credentials_no_bus_BUS_1(cluster):
    """BUS-1: "any local process could publish on NATS (no credentials)" — refused at connect."""
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(cluster["endpoints"]["nats_url"], allow_reconnect=False, connect_timeout=3)


async def test_phone_sim_cannot_reset_phones_nor_forge_call_control_BUS_2(cluster):
    """BUS-2: with phone-sim's folder, publishing `device.reset` (its own prefix, or callmanager's)
    is refused by the server; the stream never gets the event."""
    operator = EventBus(cluster["endpoints"]["nats_url"], "operator",
                        seed=nats_admin_seed_path(cluster["data"]).read_bytes().strip(), connect_timeout=10)
    await operator.connect()
    before = (await operator.js.stream_info(STREAM)).state.last_seq
    for as_role in ("phone-sim", "callmanager"):
        attacker = _service_bus(cluster, "phone-sim", as_role=as_role)
        await attacker.connect()
        try:
            with pytest.raises(BusError, match=rf"ccmsec\.{as_role}\.device\.reset.*[Pp]ermissions [Vv]iolation"):
                await attacker.publish(_reset())
        finally:
            await attacker.close()
    try:
        info = await operator.js.stream_info(STREAM)
        last = await operator.js.get_msg(STREAM, info.state.last_seq) if info.state.last_seq > before else None
        assert last is None or "device.reset" not in last.subject or "phone-sim" not in last.subject
    finally:
        await operator.close()


async def test_a_service_cannot_delete_the_stream_BUS_4(cluster):
    """BUS-4: even call control's credentials cannot delete the stream (issue 9: "delete the CCMSEC
    stream through the JetStream API")."""
    attacker = _service_bus(cluster, "callmanager")
    await attacker.connect()
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await attacker.js.delete_stream(STREAM)
        assert attacker._refusal(f"$JS.API.STREAM.DELETE.{STREAM}", 0.0)
        assert (await attacker.js.stream_info(STREAM)).config.name == STREAM
    finally:
        await attacker.close()


def _status(data) -> tuple[int, str]:
    res = run_cli("status", "--data", str(data), timeout=60)
    return res.returncode, res.stdout + res.stderr


async def _squat_the_stream(operator: EventBus) -> None:
    """Delete the stream and let another stream hold its subjects. A service's watchdog may
    recreate the stream between the two steps (that is its job): then delete it again."""
    for _ in range(20):
        try:
            await operator.js.delete_stream(STREAM)
        except NotFoundError:
            pass
        try:
            await operator.js.add_stream(StreamConfig(name="SQUAT", subjects=["ccmsec.>"]))
            return
        except BadRequestError:  # subjects overlap: CCMSEC was recreated in between
            await asyncio.sleep(0.05)
    raise AssertionError("could not take the stream's subjects away from the services")


async def test_lost_stream_status_degraded_then_healed_and_resets_flow_BUS_5(cluster):
    """BUS-5: the operator removes the stream and lets another hold its subjects: every service
    says DEGRADED with the reason and `ccmsec status` exits 4; when the way is free the services
    recreate the stream, status exits 0, and the CLI's reset reaches call control."""
    data = cluster["data"]
    operator = EventBus(cluster["endpoints"]["nats_url"], "operator",
                        seed=nats_admin_seed_path(data).read_bytes().strip(), connect_timeout=10)
    await operator.connect()
    try:
        await _squat_the_stream(operator)
        deadline = time.monotonic() + 60  # every service's watchdog, seen through `status` on a loaded machine
        while True:
            code, out = await asyncio.to_thread(_status, data)
            if code == 4 and out.count("DEGRADED:") >= 8:
                break
            assert time.monotonic() < deadline, out
            await asyncio.sleep(0.5)
        assert "callmanager: DEGRADED: event stream CCMSEC missing" in out and "SERVING" not in out, out
        await operator.js.delete_stream("SQUAT")
        deadline = time.monotonic() + 60
        while (result := await asyncio.to_thread(_status, data))[0] != 0:
            assert time.monotonic() < deadline, result[1]
            await asyncio.sleep(0.5)
        assert "DEGRADED" not in result[1]
    finally:
        await operator.close()
    bus = EventBus.for_cli(data, cluster["endpoints"]["nats_url"], "e2e-bus")
    await bus.connect()
    event = make_event("device.reset", "cli", device_reset=events_pb2.DeviceReset(
        devices=["SEP0000000B5E01"], kind=events_pb2.RESET, reason="after healing"))
    await bus.publish(event)
    await bus.close()
    svc = cluster["endpoints"]["services"]["callmanager"]
    deadline = time.monotonic() + 30
    async with secure_channel(client_identity(data), svc["host"], svc["grpc_port"], "callmanager") as ch:
        stub = callmanager_pb2_grpc.CallManagerStub(ch)
        while (st := await stub.Status(common_pb2.Empty(), timeout=5)).details.get("last_event_id") != event.id:
            assert time.monotonic() < deadline, dict(st.details)
            await asyncio.sleep(0.2)
    assert st.state == "serving"

"""Issue 2 end to end: a real local cluster of eight services over mTLS, NATS and a database."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ccmsec.cluster.state import read_state
from ccmsec.cluster.topology import ROLES
from ccmsec.runtime.bus import EventBus, make_event
from ccmsec.runtime.grpcio import check_health, secure_channel
from ccmsec.runtime.identity import client_identity
from ccmsec_proto import common_pb2, events_pb2
from tests.conftest import run_cli

pytestmark = pytest.mark.e2e


def _status(data):
    res = run_cli("status", "--json", "--data", str(data))
    return {r["service"]: r for r in json.loads(res.stdout)}, res.returncode


def _wait(predicate, timeout=30.0, interval=0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def test_every_service_serving_over_mtls(cluster):
    rows, code = _status(cluster["data"])
    assert code == 0
    assert set(ROLES) <= set(rows)
    assert all(rows[r]["state"] == "SERVING" for r in ROLES), rows
    ident = client_identity(cluster["data"])

    async def check_all():
        return {r: await check_health(ident, s["host"], s["grpc_port"], r)
                for r, s in cluster["endpoints"]["services"].items()}

    assert set(asyncio.run(check_all()).values()) == {"SERVING"}


def test_client_without_cluster_certificate_is_refused(cluster):
    ca_pem = (cluster["data"] / "pki" / "cluster-ca.crt").read_bytes()
    svc = cluster["endpoints"]["services"]["keymanager"]

    async def call():
        creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)  # no client certificate
        async with grpc.aio.secure_channel(f"{svc['host']}:{svc['grpc_port']}", creds,
                                           options=[("grpc.ssl_target_name_override", "keymanager")]) as ch:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(call())
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_durable_event_published_and_handled_by_every_service(cluster):
    ident = client_identity(cluster["data"])
    services = cluster["endpoints"]["services"]

    async def scenario():
        bus = EventBus.for_cli(cluster["data"], cluster["endpoints"]["nats_url"], "e2e-test")
        await bus.connect()
        event = make_event("device.reset", "e2e-test",
                           device_reset=events_pb2.DeviceReset(devices=["SEP000000000001"], rule="RST-1",
                                                               kind=events_pb2.RESET))
        seq = await bus.publish(event)
        again = await bus.publish(event)  # same id: JetStream drops the duplicate
        await bus.close()
        assert seq == again
        deadline = time.monotonic() + 20
        handled = {}
        while time.monotonic() < deadline and len(handled) < len(services):
            for role, s in services.items():
                async with secure_channel(ident, s["host"], s["grpc_port"], role) as ch:
                    st = await ch.unary_unary(
                        f"/ccmsec.v1.{_service_name(role)}/Status",
                        request_serializer=common_pb2.Empty.SerializeToString,
                        response_deserializer=common_pb2.ServiceStatus.FromString,
                    )(common_pb2.Empty(), timeout=3)
                    if st.details.get("last_event_id") == event.id:
                        handled[role] = st
            await asyncio.sleep(0.3)
        return event, handled

    event, handled = asyncio.run(scenario())
    assert set(handled) == set(services), f"not handled by {set(services) - set(handled)}"


def _service_name(role: str) -> str:
    return {"ctl-provider": "CtlProvider", "capf": "Capf", "tftp-signer": "TftpSigner",
            "callmanager": "CallManager", "keymanager": "KeyManager", "srtp-gateway": "SrtpGateway",
            "srst": "Srst", "phone-sim": "PhoneSim"}[role]


def test_killed_service_is_restarted_and_restart_is_logged(cluster):
    data = cluster["data"]
    before = read_state(data)["children"]["srtp-gateway"]
    os.kill(before["pid"], signal.SIGKILL)

    def back():
        rows, _ = _status(data)
        row = rows["srtp-gateway"]
        return row if row["pid"] != before["pid"] and row["state"] == "SERVING" else None

    row = _wait(back, timeout=40)
    assert row, "srtp-gateway not restarted"
    assert row["restarts"] >= before["restarts"] + 1
    log = (data / "logs" / "supervisor.log").read_text()
    assert "restarting with back-off" in log and "srtp-gateway" in log


def _children(pid: int) -> list[int]:
    from pathlib import Path

    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def test_kill_9_of_tftp_signer_takes_its_signing_workers_with_it(cluster):
    """Every child dies with its service: after `kill -9` of tftp-signer none of its signing-pool
    workers (they hold the signing key) survives, and the supervisor starts a fresh service."""
    from ccmsec.cluster.state import cluster_processes, pid_belongs_to

    from tests.ownerdb import owner_sql

    data = cluster["data"]

    def set_mode(mode):  # straight into its owner's database: no events, the other services stay put
        owner_sql(data, "ctl-provider", "UPDATE cluster_settings SET value = ? WHERE key = 'security_mode'", mode)

    set_mode("mixed")  # a tftp-signer starting in mixed mode starts its signing pool
    try:
        res = run_cli("restart", "tftp-signer", "--data", str(data), timeout=120)
        assert res.returncode == 0, res.stderr
        before = read_state(data)["children"]["tftp-signer"]
        workers = _wait(lambda: _children(before["pid"]), timeout=30)
        assert workers, "tftp-signer has no signing workers to check"
        os.kill(before["pid"], signal.SIGKILL)
        gone = _wait(lambda: not any(pid_belongs_to(w, data) for w in workers), timeout=10,
                     interval=0.05)
        assert gone, [w for w in workers if pid_belongs_to(w, data)]

        def back():
            rows, _ = _status(data)
            row = rows["tftp-signer"]
            return row if row["pid"] != before["pid"] and row["state"] == "SERVING" else None

        assert _wait(back, timeout=60), "tftp-signer not restarted"
        assert not set(workers) & set(cluster_processes(data))
    finally:
        set_mode("non-secure")


def test_restart_event_restarts_the_service_cleanly(cluster):
    data = cluster["data"]
    before = read_state(data)["children"]["keymanager"]

    async def send():
        bus = EventBus.for_cli(data, cluster["endpoints"]["nats_url"], "e2e-test")
        await bus.connect()
        await bus.publish(make_event("service.restart", "e2e-test",
                                     service_restart=events_pb2.ServiceRestart(role="keymanager", rule="RST-test")),
                          target="keymanager")
        await bus.close()

    asyncio.run(send())

    def back():
        rows, _ = _status(data)
        row = rows["keymanager"]
        return row if row["pid"] != before["pid"] and row["state"] == "SERVING" else None

    assert _wait(back, timeout=40), "keymanager did not come back after a restart event"
    log = (data / "logs" / "keymanager.log").read_text()
    assert "restart requested" in log and '"msg": "stopped"' in log


def test_second_up_on_same_data_dir_is_refused(cluster):
    res = run_cli("up", "-d", "--data", str(cluster["data"]), timeout=30)
    assert res.returncode != 0
    assert "already running" in res.stderr
    assert "Traceback" not in res.stderr


def test_every_service_publishes_prometheus_metrics(cluster):
    import urllib.request

    for role, svc in cluster["endpoints"]["services"].items():
        with urllib.request.urlopen(f"http://{svc['host']}:{svc['metrics_port']}/metrics", timeout=5) as r:
            body = r.read().decode()
        assert "ccmsec_service_up" in body, role
        assert "ccmsec_grpc_requests_total" in body, role


def test_reflection_lists_the_role_service_and_health(cluster):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    ident = client_identity(cluster["data"])
    svc = cluster["endpoints"]["services"]["capf"]

    async def list_services():
        async with secure_channel(ident, svc["host"], svc["grpc_port"], "capf") as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            async for reply in call:
                return [s.name for s in reply.list_services_response.service]

    names = asyncio.run(list_services())
    assert "ccmsec.v1.Capf" in names and "grpc.health.v1.Health" in names


def test_chk14_restart_every_server_through_events(cluster):
    """CHK-14: `ccmsec restart` restarts every service (new PIDs) and each serves again."""
    data = cluster["data"]
    before = {k: v["pid"] for k, v in read_state(data)["children"].items()}
    res = run_cli("restart", "--data", str(data), timeout=180)
    assert res.returncode == 0, res.stderr
    after = {k: v["pid"] for k, v in read_state(data)["children"].items()}
    for role in ROLES:
        assert after[role] != before[role], role
        assert f"{role}" in res.stdout
    assert after["nats"] == before["nats"]
    rows, code = _status(data)
    assert code == 0 and all(rows[r]["state"] == "SERVING" for r in ROLES)


def test_restart_refuses_unknown_role(cluster):
    res = run_cli("restart", "pbx", "--data", str(cluster["data"]))
    assert res.returncode != 0 and "unknown role" in res.stderr and "Traceback" not in res.stderr

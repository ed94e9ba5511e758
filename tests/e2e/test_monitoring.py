"""Issue 16, metrics, dashboards and logs, on the running local cluster (real scrapes of every
service's metrics port, real phones over SCCP, real TFTP, the real administration API).

- every service exports the process and Python collectors and the domain families, with values
  that follow real traffic (a phone registered, a refusal by its rule, TFTP transfers by kind of
  file, administration API requests by route);
- every ccmsec metric the shipped Grafana dashboard and Prometheus alert rules use is exported by
  a running service, and `promtool check rules` passes on the rules;
- `ccmsec status` shows each service's metrics endpoint, and it answers;
- every line of every service's log is JSON, the administration API writes an access log, a
  request's trace id (X-Request-Id) reaches the services that handle the event it published, and a
  gRPC caller's trace id (metadata) reaches the service it called.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from ccmsec.adminclient import AdminClient, discover
from ccmsec.aio.sccp import SccpRegistrationRejected, connect_phone
from ccmsec.aio.tftp import TftpError, tftp_get
from ccmsec.db.devices import Device
from ccmsec.pki.ca import Issued, load_pair, new_key
from ccmsec.pki.lsc import issue_lsc
from ccmsec.pki.tls import sccp_phone_context
from ccmsec.runtime.database import create_engine, sessionmaker
from ccmsec.runtime.logs import bind_trace_id
from ccmsec.wire import sccp as s
from tests.conftest import ROOT, run_cli
from tests.ownerdb import owner_url

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "prometheus" / "ccmsec-rules.yml"
DASHBOARD = MONITORING / "grafana" / "ccmsec-dashboard.json"
PHONE = "SEP00E2E00AA001"
TLS_PHONE = "SEP00E2E00AA002"   # configured non-secure, comes over TLS: refused (DEV-1)


def scrape(svc: dict) -> dict[str, list]:
    """sample name -> [(labels, value)] from one service's /metrics."""
    url = f"http://{svc['host']}:{svc['metrics_port']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def scrape_all(cluster) -> dict[str, dict[str, list]]:
    return {node: scrape(svc) for node, svc in cluster["endpoints"]["services"].items()}


def value(samples: dict[str, list], metric: str, **labels) -> float | None:
    for have, v in samples.get(metric, []):
        if all(have.get(k) == want for k, want in labels.items()):
            return v
    return None


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


async def _add_devices(data: Path) -> None:
    engine = create_engine(owner_url(data, "callmanager"))  # the owner's own database
    async with sessionmaker(engine)() as session, session.begin():
        for name, model in ((PHONE, "7970"), (TLS_PHONE, "7970")):
            if await session.scalar(select(Device.id).where(Device.name == name)) is None:
                session.add(Device(name=name, model=model, security_mode="non-secure"))
    await engine.dispose()


async def _denied_call(cluster, trace: str) -> None:
    """The command line's identity may not ask keymanager for call keys (PERMISSION_DENIED); the
    call is made under `trace`, which the channel sends as gRPC metadata."""
    import grpc

    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import keymanager_pb2, keymanager_pb2_grpc

    svc = cluster["endpoints"]["services"]["keymanager"]
    async with secure_channel(client_identity(cluster["data"]), svc["host"], svc["grpc_port"], "keymanager") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err, bind_trace_id(trace):
            await keymanager_pb2_grpc.KeyManagerStub(ch).GenerateCallKeys(
                keymanager_pb2.CallKeysRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="module")
def traffic(cluster):
    """Real traffic once for the module: a registered phone (kept), a refused one, TFTP reads,
    administration API requests with a known request id (one publishes a reset event)."""
    services = cluster["endpoints"]["services"]
    cm, tftp = services["callmanager"], services["tftp-signer"]
    before = scrape(cm)
    trace = f"e2e-{uuid.uuid4().hex[:12]}"
    loop = asyncio.new_event_loop()

    async def start():
        await _add_devices(cluster["data"])
        phone = await connect_phone(cm["host"], cm["sccp_port"], s.Register(PHONE, cm["host"]), timeout=30)
        await phone.wait_registered(15)
        data = cluster["data"]
        ccm = x509.load_der_x509_certificate((data / "servers" / "callmanager" / "ccmserver.cer").read_bytes())
        capf = load_pair(data / "pki" / "capf.crt", data / "pki" / "capf.key")
        key = new_key()
        ctx = sccp_phone_context("encrypted", [ccm], lsc=Issued(issue_lsc(capf, TLS_PHONE, key.public_key()), key))
        bad = await connect_phone(cm["host"], cm["sccp_tls_port"], s.Register(TLS_PHONE, cm["host"]),
                                  ssl_context=ctx, pinned_ccm_certificates=[ccm], timeout=30)
        with pytest.raises(SccpRegistrationRejected) as err:
            await bad.wait_registered(15)
        assert err.value.text.startswith("DEV-1"), err.value.text
        await bad.close()
        got = await tftp_get(tftp["host"], tftp["tftp_port"], "XMLDefault.cnf.xml", timeout=2)
        with pytest.raises(TftpError):
            await tftp_get(tftp["host"], tftp["tftp_port"], "SEP00E2E00AAFFF.cnf.xml", timeout=2)
        return phone, got

    phone, got = loop.run_until_complete(start())
    assert got
    loop.run_until_complete(_denied_call(cluster, trace))
    with AdminClient(discover(cluster["data"])) as admin:
        http = admin._http
        answer = http.get("/api/v1/devices", headers={"X-Request-Id": trace})
        assert answer.status_code == 200 and answer.headers["x-request-id"] == trace
        reset = http.post(f"/api/v1/devices/{PHONE}/reset", json={"kind": "reset"},
                          headers={"X-Request-Id": trace})
        assert reset.status_code in (200, 201, 202), reset.text
        missing = http.get("/api/v1/devices/SEP00E2E00AAEEE")
        assert missing.status_code == 404 and re.fullmatch(r"[0-9a-f]{32}", missing.headers["x-request-id"])
    yield {"trace": trace, "before": before}
    loop.run_until_complete(phone.close())
    loop.close()
    with AdminClient(discover(cluster["data"])) as admin:  # leave the shared cluster as found
        for name in (PHONE, TLS_PHONE):
            admin.remove_device(name)


def test_every_service_exports_process_python_and_domain_metrics(cluster, traffic):
    def ready():
        scraped = scrape_all(cluster)
        # the periodic samples (identity certificate, bus) have been taken everywhere
        return scraped if all("ccmsec_certificate_expiry_timestamp_seconds" in m for m in scraped.values()) else None

    scraped = wait_for(ready, timeout=40)
    assert scraped, "periodic metric samples missing"
    for node, m in scraped.items():
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                     "python_info", "python_gc_collections_total", "ccmsec_event_bus_connected"):
            assert name in m, f"{node} does not export {name}"
        assert value(m, "ccmsec_service_up", node=node) == 1.0, node
        assert value(m, "ccmsec_event_bus_connected") == 1.0, node
        expiry = value(m, "ccmsec_certificate_expiry_timestamp_seconds", kind="identity", name=node)
        assert expiry and expiry > time.time(), node

    cm = scraped["callmanager"]
    before = traffic["before"]
    assert value(cm, "ccmsec_phones_registered", node="callmanager", mode="non-secure") >= 1
    assert value(cm, "ccmsec_phones_registered", node="callmanager", mode="encrypted") is not None
    accepted = value(cm, "ccmsec_phone_registrations_total", node="callmanager", mode="non-secure")
    assert accepted >= (value(before, "ccmsec_phone_registrations_total", node="callmanager",
                              mode="non-secure") or 0) + 1
    # The refused phone is counted under the rule that refused it (DEV-1: TLS for a non-secure phone).
    refused = value(cm, "ccmsec_phone_registration_refusals_total", node="callmanager", rule="DEV-1")
    assert refused >= (value(before, "ccmsec_phone_registration_refusals_total", node="callmanager",
                             rule="DEV-1") or 0) + 1
    assert value(cm, "ccmsec_phone_resets_in_flight", node="callmanager") is not None
    assert value(cm, "ccmsec_calls_in_progress", node="callmanager", security="encrypted") is not None
    assert value(cm, "ccmsec_certificate_expiry_timestamp_seconds", kind="server", name="callmanager/sccp")
    assert value(cm, "ccmsec_certificate_expiry_timestamp_seconds", kind="server", name="callmanager/admin-api")
    assert value(tftp_metrics := scraped["tftp-signer"], "ccmsec_certificate_expiry_timestamp_seconds",
                 kind="server", name="tftp-signer/tftp-signing")

    tftp = tftp_metrics
    assert value(tftp, "ccmsec_tftp_transfers_total", kind="default-config", outcome="completed") >= 1
    assert value(tftp, "ccmsec_tftp_sent_bytes_total", kind="default-config") > 0
    assert value(tftp, "ccmsec_tftp_errors_total", kind="device-config", error="not_found") >= 1

    assert value(scraped["keymanager"], "ccmsec_grpc_denied_total",
                 method="/ccmsec.v1.KeyManager/GenerateCallKeys", caller_role="cli") >= 1
    assert value(scraped["ctl-provider"], "ccmsec_ctl_version", node="ctl-provider") is not None
    # the roles without phones, files or certificates to show have their own figures too
    assert value(scraped["keymanager"], "ccmsec_call_keys_total", suite="AES_CM_128_HMAC_SHA1_80",
                 outcome="issued") is not None
    assert value(scraped["srtp-gateway"], "ccmsec_gateway_connections", media="srtp") is not None
    assert value(scraped["phone-sim"], "ccmsec_simulated_phones", node="phone-sim", state="registered") is not None

    capf = scraped["capf"]
    assert value(capf, "ccmsec_certificate_expiry_timestamp_seconds", kind="capf", name="capf")
    assert value(capf, "ccmsec_lsc_expiring", within="30d") is not None

    # Administration API: counted by route template, the unmatched device by its 404.
    assert value(cm, "ccmsec_admin_api_requests_total", method="GET", route="/api/v1/devices",
                 status="200") >= 1
    assert value(cm, "ccmsec_admin_api_requests_total", method="GET", route="/api/v1/devices/{name}",
                 status="404") >= 1
    assert value(cm, "ccmsec_admin_api_request_seconds_count", method="GET", route="/api/v1/devices") >= 1

    # The reset event was handled everywhere: lag observed. gRPC latency is recorded per method.
    lagged = wait_for(lambda: all(value(scrape(svc), "ccmsec_event_lag_seconds_count", kind="device.reset")
                                  for svc in cluster["endpoints"]["services"].values()), timeout=30)
    assert lagged, "device.reset lag not observed by every service"


def test_failed_grpc_calls_are_timed_too(cluster):
    """A call that fails (NOT_FOUND) is counted with its code and its latency is observed."""
    import grpc

    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import capf_pb2, capf_pb2_grpc

    svc = cluster["endpoints"]["services"]["capf"]
    method = "/ccmsec.v1.Capf/SetThirdPartyCa"
    before = scrape(svc)

    async def call():
        async with secure_channel(client_identity(cluster["data"]), svc["host"], svc["grpc_port"], "capf") as ch:
            stub = capf_pb2_grpc.CapfStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.SetThirdPartyCa(capf_pb2.ThirdPartyCaRequest(certificate=b"not a certificate"),
                                           timeout=10)
            return err.value.code()

    code = asyncio.run(call())
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    after = scrape(svc)
    assert value(after, "ccmsec_grpc_requests_total", method=method, code=code.name) == \
        (value(before, "ccmsec_grpc_requests_total", method=method, code=code.name) or 0) + 1
    assert value(after, "ccmsec_grpc_request_seconds_count", method=method) == \
        (value(before, "ccmsec_grpc_request_seconds_count", method=method) or 0) + 1


def test_streaming_calls_are_timed_until_the_stream_ends(cluster):
    """WatchCalls (server streaming): a stream the client closes after two seconds is counted
    with its end code (CANCELLED) and its whole duration observed."""
    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import callmanager_pb2_grpc, common_pb2

    svc = cluster["endpoints"]["services"]["callmanager"]
    method = "/ccmsec.v1.CallManager/WatchCalls"
    before = scrape(svc)

    async def watch():
        async with secure_channel(client_identity(cluster["data"]), svc["host"], svc["grpc_port"],
                                  "callmanager") as ch:
            call = callmanager_pb2_grpc.CallManagerStub(ch).WatchCalls(common_pb2.Empty())
            # No calls: the server sends nothing and keeps the stream open, waiting for a change.
            await asyncio.sleep(2.0)
            call.cancel()

    asyncio.run(watch())

    def observed():
        after = scrape(svc)
        count = value(after, "ccmsec_grpc_request_seconds_count", method=method) or 0
        return after if count >= (value(before, "ccmsec_grpc_request_seconds_count", method=method) or 0) + 1 else None

    after = wait_for(observed, timeout=20)
    assert after, "the closed stream was not timed"
    total = value(after, "ccmsec_grpc_request_seconds_sum", method=method) - \
        (value(before, "ccmsec_grpc_request_seconds_sum", method=method) or 0)
    assert total >= 0.2  # timed until the client closed it, not until its first message
    assert value(after, "ccmsec_grpc_requests_total", method=method, code="CANCELLED") >= 1


def _used_metrics() -> set[str]:
    exprs = [r["expr"] for g in _rules()["groups"] for r in g["rules"]]
    dash = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 20
    names = set()
    for expr in exprs:
        names |= set(re.findall(r"\b((?:ccmsec|process|python)_[a-z0-9_]+)", expr))
    return names


def _rules() -> dict:
    import yaml

    return yaml.safe_load(RULES.read_text())


def test_every_metric_the_dashboard_and_rules_use_is_exported(cluster, traffic):
    used = _used_metrics()
    exported: set[str] = set()

    def all_there():
        exported.clear()
        for m in scrape_all(cluster).values():
            exported.update(m)
        return not (used - exported)

    wait_for(all_there, timeout=40)
    assert not (used - exported), f"used by deploy/monitoring but exported by no service: {sorted(used - exported)}"
    # and the check itself is not vacuous: a misspelt name is caught
    assert "ccmsec_phones_registred" not in exported


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.skip("promtool not installed (Debian package `prometheus`; scripts/test installs it "
                    "with CCMSEC_INSTALL_TOOLS=1)")
    return found


def test_promtool_accepts_the_rules_and_the_example_configuration(tmp_path):
    tool = promtool()
    res = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr
    # The example Prometheus configuration, with the rule file where it would be mounted.
    config = (MONITORING / "prometheus" / "prometheus.yml").read_text()
    (tmp_path / "ccmsec-rules.yml").write_text(RULES.read_text())
    # and the targets folder (file-based discovery) where the rendered targets file is
    targets = tmp_path / "targets"
    targets.mkdir()
    (targets / "ccmsec.yml").write_text((MONITORING / "prometheus" / "targets" / "ccmsec.yml").read_text())
    (tmp_path / "prometheus.yml").write_text(
        config.replace("/etc/prometheus/rules/ccmsec-rules.yml", str(tmp_path / "ccmsec-rules.yml"))
        .replace("/etc/prometheus/targets", str(targets)))
    res = subprocess.run([tool, "check", "config", str(tmp_path / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    # and promtool does refuse a broken rule (the check is real)
    broken = tmp_path / "broken.yml"
    broken.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(x[5m])\n")
    res = subprocess.run([tool, "check", "rules", str(broken)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0


def test_status_shows_each_metrics_endpoint_and_it_answers(cluster):
    res = run_cli("status", "--json", "--data", str(cluster["data"]))
    assert res.returncode == 0, res.stderr
    rows = {r["service"]: r for r in json.loads(res.stdout)}
    for node, svc in cluster["endpoints"]["services"].items():
        url = rows[node]["metrics"]
        assert url == f"http://{svc['host']}:{svc['metrics_port']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert b"ccmsec_service_up" in r.read()
    res = run_cli("status", "--data", str(cluster["data"]))
    assert "METRICS" in res.stdout.splitlines()[0]


def test_every_log_line_is_json_with_access_log_and_trace_ids(cluster, traffic):
    logs = cluster["data"] / "logs"
    trace = traffic["trace"]

    def records(name: str) -> list[dict]:
        out = []
        for number, line in enumerate((logs / name).read_text().splitlines(), 1):
            try:
                out.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"{name}:{number} is not JSON: {line[:200]!r}") from None
        return out

    def traced_everywhere():
        seen = set()
        for node in cluster["endpoints"]["services"]:
            if any(r.get("trace_id") == trace for r in records(f"{node}.log")):
                seen.add(node)
        return seen if {"callmanager", "keymanager", "tftp-signer"} <= seen else None

    # The reset's event carried the request id to the services that handled it.
    assert wait_for(traced_everywhere, timeout=30), "request id not seen in the handlers' logs"
    # gRPC metadata carried the same id to keymanager, whose refusal line names it.
    refusals = [r for r in records("keymanager.log") if r["logger"] == "ccmsec.authz"
                and "GenerateCallKeys" in r["msg"] and r.get("trace_id") == trace]
    assert refusals and refusals[0]["level"] == "warning"
    for path in logs.glob("*.log"):
        if path.name == "nats.log":
            continue  # nats-server's own log (not a ccmsec service)
        found = records(path.name)
        assert found, path.name
        for r in found:
            assert {"ts", "level", "service", "node", "logger", "msg"} <= set(r), (path.name, r)
    access = [r for r in records("callmanager.log") if r["logger"] == "ccmsec.admin.access"]
    mine = [r for r in access if r.get("trace_id") == trace]
    assert {(r["method"], r["route"], r["status"]) for r in mine} >= {("GET", "/api/v1/devices", 200)}
    assert all(isinstance(r["duration_ms"], float | int) and r["client"] for r in mine)
    assert any(r["route"] == "/api/v1/devices/{name}" and r["status"] == 404 for r in access)


def test_a_command_line_request_carries_its_trace_id_to_the_api_log(cluster):
    """`ccmsec` binds one trace id per command (CCMSEC_TRACE_ID when given, checked for form):
    the administration API's access log shows it; a malformed one is replaced, never logged."""
    trace = f"cli-{uuid.uuid4().hex[:12]}"
    res = run_cli("device", "list", "--data", str(cluster["data"]), env={"CCMSEC_TRACE_ID": trace})
    assert res.returncode == 0, res.stderr
    res = run_cli("device", "list", "--data", str(cluster["data"]), env={"CCMSEC_TRACE_ID": "bad id\n{x}"})
    assert res.returncode == 0, res.stderr
    log = cluster["data"] / "logs" / "callmanager.log"

    def access():
        return [json.loads(line) for line in log.read_text().splitlines()
                if '"ccmsec.admin.access"' in line]

    found = wait_for(lambda: [r for r in access() if r.get("trace_id") == trace], timeout=10)
    assert found and found[0]["route"] == "/api/v1/devices" and found[0]["status"] == 200
    assert not [r for r in access() if "bad id" in str(r.get("trace_id"))]


"""`--json` against a running cluster (issue 16): the read commands print JSON a script can use,
`status` with structured ports, and refusals of the administration API come back as JSON errors
carrying the HTTP status and the rule ID. gRPC reflection answers in v1 and v1alpha."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from ccmsec.cluster.topology import ROLES
from ccmsec.runtime.grpcio import secure_channel
from ccmsec.runtime.identity import client_identity
from tests.conftest import run_cli

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def answers(cluster):
    d = ("--data", str(cluster["data"]))
    calls = {
        "status": ("status", "--json", *d),
        "mode": ("mode", "show", "--json", *d),
        "phones": ("phones", "list", "--json", *d),
        "tftp_clusters": ("tftp", "clusters", "--json", *d),
        "ctl_clusters": ("ctl", "tftp-clusters", "list", "--json", *d),
        "provider": ("ctl", "provider", "show", "--json", *d),
        "devices": ("device", "list", "--json", *d),
        "no_device": ("device", "show", "SEP00000000DEAD", "--json", *d),
        "refused": ("device", "add", "SEP0000000BAD12", "--model", "7912", "--security",
                    "encrypted", "--json", *d),
        "no_phone": ("phones", "show", "SEP0000000FFFFF", "--json", *d),
        "tls": ("--json", "tls", "show", *d),
        "capf_check": ("capf", "check", "--json", *d),
        "capf_cert": ("capf", "cert", "--json", *d),
    }
    with ThreadPoolExecutor(4) as pool:
        futures = {k: pool.submit(run_cli, *v, timeout=120) for k, v in calls.items()}
        return {k: f.result() for k, f in futures.items()}


def _ok(r):
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_status_json_has_structured_ports(answers, cluster):
    rows = {r["service"]: r for r in _ok(answers["status"])}
    assert set(ROLES) <= set(rows)
    for role in ROLES:
        ports = {p["name"]: p for p in rows[role]["ports"]}
        svc = cluster["endpoints"]["services"][role]
        assert ports["grpc"]["port"] == svc["grpc_port"] and ports["grpc"]["protocol"] == "tcp"
        assert ports["metrics"]["port"] == svc["metrics_port"]
        assert all(isinstance(p["port"], int) and p["purpose"] for p in ports.values())
    tftp = {p["name"]: p for p in rows["tftp-signer"]["ports"]}
    assert tftp["tftp"]["protocol"] == "udp"


def test_read_commands_print_json(answers):
    mode = _ok(answers["mode"])
    assert mode["security_mode"] in ("non-secure", "mixed") and isinstance(mode["ctl_present"], bool)
    assert isinstance(_ok(answers["phones"]), list)
    assert isinstance(_ok(answers["tftp_clusters"]), list)
    assert "clusters" in _ok(answers["ctl_clusters"]) or _ok(answers["ctl_clusters"]) == {}
    assert "listening_port" in _ok(answers["provider"])
    assert isinstance(_ok(answers["devices"]), list)
    assert _ok(answers["tls"]) == {"legacy_tls": False}
    check = answers["capf_check"]  # exit 3 when a phone lacks its LSC, with the same JSON
    assert check.returncode in (0, 3), check.stderr
    shown = json.loads(check.stdout)
    assert set(shown) == {"installed", "missing"} and (check.returncode == 3) == bool(shown["missing"])
    cert = _ok(answers["capf_cert"])
    assert cert["subject"].endswith("CN=CAPF") and len(cert["fingerprint_sha256"]) == 64 and "der" not in cert


def test_refusals_are_json_with_status_and_rule(answers):
    missing = answers["no_device"]
    assert missing.returncode == 1 and missing.stdout == ""
    error = json.loads(missing.stderr)
    assert error["http_status"] == 404 and error["exit_code"] == 1 and "SEP00000000DEAD" in error["error"]
    refused = json.loads(answers["refused"].stderr)
    assert refused["http_status"] in (409, 422) and refused["rule"] in ("DEV-3", "MODE-3", "MODE-5")
    phone = json.loads(answers["no_phone"].stderr)
    assert phone["grpc_status"] == "NOT_FOUND"


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_v1_and_v1alpha_on_a_service(cluster, version):
    from grpc_reflection.v1alpha import reflection_pb2

    ident = client_identity(cluster["data"])
    svc = cluster["endpoints"]["services"]["keymanager"]
    method = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"

    async def list_services():
        async with secure_channel(ident, svc["host"], svc["grpc_port"], "keymanager") as ch:
            call = ch.stream_stream(method, request_serializer=lambda m: m.SerializeToString(),
                                    response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
            async for reply in call(iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
                return [s.name for s in reply.list_services_response.service]

    names = asyncio.run(list_services())
    assert "ccmsec.v1.KeyManager" in names and "grpc.reflection.v1.ServerReflection" in names

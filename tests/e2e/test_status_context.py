"""`ccmsec status` through a named context (issue 13 §4): with a context made from a client bundle
in use and no --data, status asks every service the bundle publishes for its gRPC health over
mutual TLS with the context's own `cli` identity — the same answer the local runner's status gives,
for a cluster this machine does not run (compose). The bundle here describes the local e2e cluster,
so the services are real; its bad cases: a service that does not answer, and a bundle whose
identity the cluster's CA never issued."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ccmsec import contexts
from ccmsec.cluster.topology import ROLES
from ccmsec.runtime.identity import client_identity, client_identity_dir
from tests.conftest import free_port

pytestmark = pytest.mark.e2e


def _admin_url(cluster) -> str:
    cm = cluster["endpoints"]["services"]["callmanager"]
    return cluster["endpoints"].get("admin_url") or f"https://{cm['host']}:{cm['admin_port']}"


def _bundle(cluster) -> dict:
    data = cluster["data"]
    client_identity(data)  # the cli identity exists (issued once by the cluster's own tooling)
    ident = client_identity_dir(data, "cli")
    files = {p.name: p.read_text() for p in sorted(ident.iterdir()) if p.is_file()}
    services = {role: {"host": svc["host"], "grpc_port": svc["grpc_port"]}
                for role, svc in cluster["endpoints"]["services"].items()}
    return {"format": contexts.BUNDLE_FORMAT, "admin_url": _admin_url(cluster),
            "user": "admin", "password": (data / "admin-password").read_text().strip(),
            "ca": (data / "pki" / "cluster-ca.crt").read_text(), "identity": files, "services": services}


def _status(config, name, *extra):
    """`ccmsec status` as a user with only the context would run it: no --data, no $CCMSEC_DATA_DIR."""
    env = {k: v for k, v in os.environ.items() if k != "CCMSEC_DATA_DIR"}
    env.update(CCMSEC_CONFIG_DIR=str(config), CCMSEC_CONTEXT=name)
    return subprocess.run([sys.executable, "-m", "ccmsec.cli.main", "status", *extra], capture_output=True,
                          text=True, timeout=120, env=env)


def test_status_through_a_context_reports_every_published_service(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("CCMSEC_CONFIG_DIR", str(tmp_path))
    contexts.save_bundle("far", _bundle(cluster))
    res = _status(tmp_path, "far", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    rows = {r["service"]: r for r in json.loads(res.stdout)}
    assert set(ROLES) <= set(rows), rows
    assert all(r["state"] == "SERVING" and r["pid"] is None for r in rows.values()), rows
    text = _status(tmp_path, "far")
    assert text.returncode == 0 and "context far: services reached through their published gRPC ports" \
        in text.stdout, text.stdout + text.stderr


def test_status_through_a_context_names_a_service_that_does_not_answer(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("CCMSEC_CONFIG_DIR", str(tmp_path))
    bundle = _bundle(cluster)
    bundle["services"]["keymanager"]["grpc_port"] = free_port()  # nothing listens there
    contexts.save_bundle("gap", bundle)
    res = _status(tmp_path, "gap")
    assert res.returncode == 3, res.stdout + res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("keymanager"))
    assert "UNREACHABLE" in line and "Traceback" not in res.stderr


def test_status_through_a_context_with_a_broken_endpoints_file_is_a_clear_error(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("CCMSEC_CONFIG_DIR", str(tmp_path))
    ctx = contexts.save_bundle("torn", _bundle(cluster))
    (ctx.cluster_dir / "run" / "endpoints.json").write_text("{\"services\": ")  # cut short
    res = _status(tmp_path, "torn")
    assert res.returncode not in (0, 3, 4) and "no usable endpoints" in res.stderr, res.stdout + res.stderr
    assert "Traceback" not in res.stderr

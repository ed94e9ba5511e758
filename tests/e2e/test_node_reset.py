"""RST-9 on a running cluster with a subscriber (`ccmsec up --subscribers 1`): "reset devices on a
server" reboots exactly the phones registered to the node it names — they re-register there —
and leaves every other phone alone; a server that is no call-control node (`srst`) is refused."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from ccmsec.cluster.runner import cluster_pids
from ccmsec.runtime.grpcio import secure_channel
from ccmsec.runtime.identity import client_identity
from ccmsec_proto import phone_sim_pb2, phone_sim_pb2_grpc
from tests.conftest import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def two_nodes():
    data = Path(tempfile.mkdtemp(prefix="ccmsec-e2e-rst9-"))
    res = run_cli("up", "-d", "--subscribers", "1", "--data", str(data), timeout=300)
    if res.returncode != 0:
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in (data / "logs").glob("*.log"))
        run_cli("down", "--data", str(data))
        shutil.rmtree(data, ignore_errors=True)
        pytest.fail(f"ccmsec up failed: {res.stderr}\n{logs}")
    yield {"data": data, "endpoints": json.loads((data / "run" / "endpoints.json").read_text())}
    down = run_cli("down", "--data", str(data), timeout=300)
    left = cluster_pids(data)
    shutil.rmtree(data, ignore_errors=True)
    assert down.returncode == 0, down.stderr
    assert left == [], f"processes left after ccmsec down: {left}"


def _cli(cluster, *args, timeout=120):
    return run_cli(*args, "--data", str(cluster["data"]), timeout=timeout)


def _phones(cluster, names) -> dict[str, phone_sim_pb2.PhoneState]:
    svc = cluster["endpoints"]["services"]["phone-sim"]

    async def call():
        async with secure_channel(client_identity(cluster["data"]), svc["host"], svc["grpc_port"],
                                  "phone-sim") as ch:
            stub = phone_sim_pb2_grpc.PhoneSimStub(ch)
            return {n: await stub.GetPhone(phone_sim_pb2.PhoneName(name=n), timeout=10) for n in names}

    return asyncio.run(call())


def _registered_nodes(cluster) -> dict[str, str]:
    """device → the node it is registered to, as call control reports it (every node's rows)."""
    res = _cli(cluster, "device", "registrations", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    rows = rows["registrations"] if isinstance(rows, dict) else rows
    return {r["device"]: r["server"] for r in rows}


def _settled(cluster, names, timeout=90.0) -> dict[str, phone_sim_pb2.PhoneState]:
    deadline = time.monotonic() + timeout
    while True:
        phones = _phones(cluster, names)
        if all(p.state == "registered" and not p.booting for p in phones.values()):
            return phones
        assert time.monotonic() < deadline, {n: (p.state, p.last_failure_reason) for n, p in phones.items()}
        time.sleep(0.3)


def test_rst9_reset_by_node_reboots_only_that_nodes_phones_and_srst_is_refused(two_nodes):
    cluster = two_nodes
    services = cluster["endpoints"]["services"]
    sub = services["callmanager-sub1"]
    added = _cli(cluster, "phones", "add", "--count", "4", "--model", "7960", "--name-prefix", "SEP0E59")
    assert added.returncode == 0, added.stderr
    names = re.findall(r"^(SEP[0-9A-F]{12})", added.stdout, re.M)
    assert len(names) == 4
    on_pub, on_sub = names[:2], names[2:]
    # Every phone registers with the publisher first (only it auto-registers a new device, MODE-4);
    # then two phones list the subscriber alone as their call control and boot again there, the
    # others keep the cluster's group, whose first node is the publisher.
    booted = _cli(cluster, "phones", "boot", *names, "--wait", "--timeout", "90", timeout=150)
    assert booted.returncode == 0, booted.stdout + booted.stderr
    pointed = _cli(cluster, "phones", "set-servers", *on_sub, "--call-control",
                   f"{sub['host']}:{sub['sccp_port']}")
    assert pointed.returncode == 0, pointed.stderr
    moved = _cli(cluster, "phones", "boot", *on_sub, "--wait", "--timeout", "90", timeout=150)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    before = _settled(cluster, names)
    nodes = _registered_nodes(cluster)
    assert {n: nodes.get(n) for n in names} == {**{n: "callmanager" for n in on_pub},
                                                **{n: "callmanager-sub1" for n in on_sub}}, nodes

    # The bad case first: the SRST reference is no call-control node — refused, nothing reset.
    refused = _cli(cluster, "device", "reset", "--server", "srst")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "server 'srst' is no call-control node" in refused.stderr, refused.stderr
    # A well-formed subscriber this cluster does not run: refused (the runner tells callmanager
    # every node it runs, CCMSEC_CLUSTER_CALL_CONTROL_NODES), not accepted to reset nothing.
    missing = _cli(cluster, "device", "reset", "--server", "callmanager-sub2")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "server 'callmanager-sub2' is no node of this cluster" in missing.stderr, missing.stderr

    reset = _cli(cluster, "device", "reset", "--server", "callmanager-sub1", "--wait", "--timeout", "90",
                 timeout=150)
    assert reset.returncode == 0, reset.stdout + reset.stderr
    deadline = time.monotonic() + 90
    while True:   # the subscriber's phones rebooted (phone-sim's own reset) and registered again
        after = _phones(cluster, names)
        if all(after[n].boots > before[n].boots and after[n].state == "registered" and not after[n].booting
               for n in on_sub):
            break
        assert time.monotonic() < deadline, {n: (after[n].boots, after[n].state) for n in on_sub}
        time.sleep(0.3)
    time.sleep(3)   # a reset that reached the publisher's phones too would show by now
    after = _phones(cluster, names)
    for n in on_pub:   # untouched: no boot since, still registered with the same node
        assert after[n].boots == before[n].boots, (n, after[n].history)
        assert after[n].state == "registered" and after[n].registered_with == before[n].registered_with
    for n in on_sub:
        assert after[n].registered_with == before[n].registered_with   # back on the subscriber
    nodes = _registered_nodes(cluster)
    assert {n: nodes.get(n) for n in names} == {**{n: "callmanager" for n in on_pub},
                                                **{n: "callmanager-sub1" for n in on_sub}}, nodes

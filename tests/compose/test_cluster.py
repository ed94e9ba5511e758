"""The compose cluster as deployed (DEPLOY-1…4, BUS-1): up and healthy, each container only its
own identity, no password in the environment, non-root hardened containers on loopback ports from
the env file, NATS with per-container credentials; used through the published administration API
and the CLI's named contexts, rule refusals included; the checklist from the `cli` container
(tokens, CTL client to mixed mode, CAPF, devices, phones of each mode booting TFTP → CAPF →
registration) and a call; the failover of those phones to the call-control subscriber and back
(docker kill and pause of the publisher, an encrypted call across the kill; figures printed); then
faults — kill, restart, pause, network disconnect — phones recover, nothing lost."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
import yaml

from ccmsec.adminclient import AdminClient, discover
from ccmsec.cluster import compose
from ccmsec.cluster.topology import ROLES
from tests.compose.conftest import ROOT
from tests.conftest import run_cli

# bring-up, the whole checklist and four faults on a loaded 2-core machine: bounded, generously
pytestmark = pytest.mark.timeout(1800)



def admin(cluster) -> AdminClient:
    ca, pw = cluster.fetch_admin_credentials()
    return AdminClient(discover(cluster.workdir, url=cluster.admin_url(), cafile=ca,
                                password=pw.read_text().strip()), timeout=30)


def wait_until(predicate, timeout: float, what: str, step: float = 2.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # the service is coming back: keep asking until the deadline
            last = exc
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


# --- the deployment itself ---------------------------------------------------------------------

def test_every_container_is_healthy_and_hardened(cluster):
    """DEPLOY-4: non-root, every capability dropped, no new privileges, limits; our images tagged
    with the project version and sharing one runtime layer stack."""
    version = os.environ.get(compose.IMAGE_TAG_VARIABLE) or compose.project_version()
    layers = {}
    for role in ROLES:
        info = cluster.inspect(role)
        assert info["State"]["Health"]["Status"] == "healthy"
        assert info["Config"]["User"] == "ccmsec", role
        host = info["HostConfig"]
        assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd"), role
        assert "no-new-privileges:true" in host["SecurityOpt"], role
        assert host["Memory"] > 0 and host["NanoCpus"] > 0 and host["PidsLimit"] > 0, role
        assert info["Config"]["Image"] == f"ccmsec/{role}:{version}"
        image = json.loads(cluster.docker("image", "inspect", info["Config"]["Image"]).stdout)[0]
        layers[role] = image["RootFS"]["Layers"]
        assert cluster.exec(role, "id", "-u").stdout.strip() == str(compose.APP_UID)
    shared = set.intersection(*(set(v) for v in layers.values()))
    assert all(set(v) == shared for v in layers.values()), "role images differ in their layers"
    for infra in ("nats", "postgres"):
        assert cluster.inspect(infra)["HostConfig"]["CapDrop"] == ["ALL"]


def test_published_ports_are_on_loopback_and_from_the_env_file(cluster):
    """DEPLOY-3: every published port listens on 127.0.0.1, on the host port the env file chose."""
    seen = 0
    for role, entries in compose.host_ports().items():
        if not entries:
            continue
        bindings = cluster.inspect(role)["HostConfig"]["PortBindings"]
        for name, _default, target, proto in entries:
            (binding,) = bindings[f"{target}/{proto}"]
            assert binding["HostIp"] == "127.0.0.1"
            assert int(binding["HostPort"]) == cluster.ports[name]
            seen += 1
    assert seen == sum(len(e) for e in compose.host_ports().values()) > 0


def test_each_container_holds_only_its_own_identity(cluster):
    """DEPLOY-1: the cluster CA key is only in the init step's volume; a service sees its own
    identity folder and no other's. Issue 9 §1: and no container can write what call control
    trusts — the CAPF certificate (/data/pki) and the manufacturer CA (/data/manufacturer) are
    volumes only their owners (capf, phone-sim) mount read-write; phone-sim, the gateway and every
    other role get them read-only or not at all, and a file written at the old third-party CA
    path never reaches call control."""
    for role in ROLES:
        mounts = {m["Destination"]: m.get("Name", "") for m in cluster.inspect(role)["Mounts"]}
        assert mounts[compose.IDENTITY_DIR].endswith(compose.identity_volume(role))
        others = {compose.identity_volume(r) for r in ROLES if r != role}
        assert not any(name.endswith(tuple(others)) for name in mounts.values()), role
        assert not any(name.endswith(compose.CA_VOLUME) for name in mounts.values()), role
        found = cluster.exec(role, "find", "/", "-name", "cluster-ca.key", "-not", "-path", "/proc/*",
                             check=False).stdout.strip()
        assert found == "", f"{role} can read the cluster CA key: {found}"
        ident = cluster.exec(role, "ls", compose.IDENTITY_DIR).stdout.split()
        assert {"tls.crt", "tls.key", "ca.crt"} <= set(ident)
        uri = cluster.exec(role, "python3", "-c",
                           "import sys; from ccmsec.runtime.identity import load_identity; "
                           f"print(load_identity('{compose.IDENTITY_DIR}').identity.uri)").stdout.strip()
        assert uri == f"spiffe://ccmsec/{role}/{role}"
    # the search above does find the key where it is: in the init step's own volume
    volume = f"{cluster.project}_{compose.CA_VOLUME}"
    found = cluster.docker("run", "--rm", "-v", f"{volume}:/ca:ro", "--user", "0",
                           f"ccmsec/tools:{os.environ.get(compose.IMAGE_TAG_VARIABLE) or compose.project_version()}", "find", "/ca", "-name",
                           "cluster-ca.key").stdout.strip()
    assert found == "/ca/pki/cluster-ca.key"
    _no_container_writes_call_controls_trust_inputs(cluster)


TRUST_INPUTS = {  # call control's files (mount point -> (volume, its one writer)); the rest is CAPF's RPC
    "/data/pki": (compose.PKI_VOLUME, "capf"),
    compose.MANUFACTURER_DIR: (compose.MANUFACTURER_VOLUME, "phone-sim"),
}


def _no_container_writes_call_controls_trust_inputs(cluster):
    planted = "/data/pki/lsc-third-party-ca.crt"  # where call control used to read the third-party CA
    for role in (*ROLES, *compose.call_control_nodes()[1:]):
        mounts = {m["Destination"]: m for m in cluster.inspect(role)["Mounts"]}
        assert mounts["/data"]["Name"].endswith(f"_{compose.data_volume(role)}"), role  # its own /data
        assert not any(m.get("Name", "").endswith("_ccmsec-data") for m in mounts.values()), role
        for path, (volume, owner) in TRUST_INPUTS.items():
            mount = mounts.get(path)
            if role == owner:
                assert mount is not None and mount["RW"], (role, path)
                continue
            assert mount is not None, (role, path)  # read-only in every container but its owner's
            assert mount["Name"].endswith(f"_{volume}") and not mount["RW"], (role, path, mount)
            attempt = cluster.exec(role, "sh", "-c", f"echo attacker > {path}/intruder.crt", check=False)
            assert attempt.returncode != 0 and "Read-only file system" in attempt.stderr, (role, attempt)
    # The attack itself, from phone-sim and the gateway: a CA written where call control used to
    # read it, the CAPF certificate replaced, the manufacturer CA replaced (not phone-sim's to try:
    # it is that CA's owner) — each refused.
    for role in ("phone-sim", "srtp-gateway"):
        targets = [planted, "/data/pki/capf.crt"]
        if role != "phone-sim":
            targets.append(f"{compose.MANUFACTURER_DIR}/manufacturer-ca.crt")
        for target in targets:
            attempt = cluster.exec(role, "sh", "-c", f"echo attacker > {target}", check=False)
            assert attempt.returncode != 0 and "Read-only file system" in attempt.stderr, (role, target, attempt)
    for node in compose.call_control_nodes():
        seen = cluster.exec(node, "sh", "-c", f"cat {planted} {compose.MANUFACTURER_DIR}/manufacturer-ca.crt"
                            " /data/pki/capf.crt 2>&1; true").stdout
        assert "attacker" not in seen and "BEGIN CERTIFICATE" in seen, (node, seen[:200])
        attempt = cluster.exec(node, "sh", "-c", "echo x > /data/pki/capf.crt", check=False)
        assert attempt.returncode != 0 and "Read-only file system" in attempt.stderr, (node, attempt)
    # the owner does write its own (the control: the refusals above are the mounts, not the paths)
    proc = cluster.exec("capf", "sh", "-c", "echo probe > /data/pki/.write-probe && rm /data/pki/.write-probe")
    assert proc.returncode == 0


def test_no_password_in_any_environment_or_in_the_compose_file(cluster):
    """DEPLOY-2: the database password is generated at the first start and handed over as files;
    it is in no container's environment and not in the rendered compose configuration."""
    password = cluster.file("callmanager", compose.DB_PASSWORD_FILE).strip()
    assert len(password) >= 24
    config = cluster.dc("config").stdout
    assert password not in config and "POSTGRES_PASSWORD:" not in config
    for service in ("nats", "postgres", *ROLES):
        env = cluster.inspect(service)["Config"]["Env"] or []
        assert not any(password in e for e in env), service
        assert not any(e.split("=", 1)[0] in ("POSTGRES_PASSWORD", "CCMSEC_ADMIN_PASSWORD") for e in env)
    mode = cluster.exec("callmanager", "stat", "-c", "%a %u", compose.DB_PASSWORD_FILE).stdout.split()
    assert mode == ["600", str(compose.APP_UID)]
    admin_pw = cluster.exec("callmanager", "stat", "-c", "%a %u",
                            f"{compose.ADMIN_SECRET_DIR}/admin-password").stdout.split()
    assert admin_pw == ["600", str(compose.APP_UID)]
    # the bad case: a database without a password is refused, not started open
    image = cluster.inspect("postgres")["Config"]["Image"]
    proc = cluster.docker("run", "--rm", "-e", "POSTGRES_USER=ccmsec", image, check=False, timeout=120)
    assert proc.returncode != 0
    assert "password" in (proc.stdout + proc.stderr).lower()


# What a compromised container holding call control's database credential tries (issue 9 §5): its
# connection has no write guard — only PostgreSQL's privileges stand in the way.
_DB_ATTEMPTS = r"""
import asyncio, json
from sqlalchemy import text
from sqlalchemy.engine import make_url
from ccmsec.runtime.database import create_engine
from ccmsec.runtime.settings import load_settings

STATEMENTS = {
    "capf_table": "INSERT INTO ccmsec_capf.capf_settings (key, value, updated_at) VALUES ('forged', 'x', now())",
    "capf_outbox": "INSERT INTO ccmsec_capf.event_outbox (event_id, origin, kind, target, payload, created_at, "
                   "attempts, last_error) VALUES ('forged', 'capf', 'device.reset', NULL, decode('00', 'hex'), "
                   "now(), 0, '')",
    "ctl_table": "UPDATE ccmsec_ctl_provider.cluster_settings SET value = 'non-secure'",
    "own_table": "UPDATE devices SET name = name WHERE false",
}

async def attempt(url, sql):
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(sql))
        return "ok"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await engine.dispose()

async def main():
    url = load_settings().db_url
    out = {k: await attempt(url, sql) for k, sql in STATEMENTS.items()}
    out["user"] = make_url(url).username
    # its password does not open CAPF's role either
    out["as_capf"] = await attempt(make_url(url).set(username="ccmsec_capf").render_as_string(hide_password=False),
                                   "SELECT 1")
    print(json.dumps(out))

asyncio.run(main())
"""


def test_each_stateful_role_writes_only_its_own_schema_and_the_others_hold_no_db_secret(cluster):
    """Issue 9 §5 in the database itself: each stateful role connects as its own PostgreSQL role
    with a password only its containers mount; with call control's credential an insert into
    CAPF's table or CAPF's outbox (which CAPF's relay would publish under CAPF's NATS identity) is
    refused by PostgreSQL, while its own table takes the write. phone-sim, keymanager, srtp-gateway
    and srst hold no database credential at all, and none but PostgreSQL the bootstrap one."""
    from ccmsec.db.roles import uses_database

    # (Debian's own /var/lib/pam/password is PAM bookkeeping, no secret)
    find_secrets = ("find / \\( -path /proc -o -path /sys -o -path /usr -o -path /var/lib/pam \\) -prune -o "
                    "-type f \\( -name password -o -name roles.json \\) -print 2>/dev/null; true")
    for role in ROLES:
        env = dict(e.split("=", 1) for e in cluster.inspect(role)["Config"]["Env"] or [])
        mounts = [m.get("Name", "") for m in cluster.inspect(role)["Mounts"]]
        assert not any(m.endswith(f"_{compose.PG_SECRET_VOLUME}") for m in mounts), role
        found = cluster.exec(role, "sh", "-c", find_secrets).stdout.split()
        if uses_database(role):
            assert env["CCMSEC_DATABASE_URL"].startswith(f"postgresql://ccmsec_{role.replace('-', '_')}@"), role
            assert [m for m in mounts if "_db-secret-" in m] == [f"{cluster.project}_{compose.db_secret_volume(role)}"]
            mode = cluster.exec(role, "stat", "-c", "%a %u", compose.DB_PASSWORD_FILE).stdout.split()
            assert mode == ["600", str(compose.APP_UID)], role
            assert found == [compose.DB_PASSWORD_FILE], role  # its own, and no one else's
        else:
            assert "CCMSEC_DATABASE_PASSWORD_FILE" not in env and env["CCMSEC_DATABASE_URL"].startswith("sqlite:"), role
            assert not any("_db-secret-" in m for m in mounts), role
            assert found == [], f"{role} holds a secret it should not: {found}"
            # (the image has the empty mount point; nothing is mounted or written there)
            assert cluster.exec(role, "sh", "-c", f"ls -A {compose.DB_PASSWORD_DIR} 2>/dev/null; true").stdout == ""
    passwords = {role: cluster.file(role, compose.DB_PASSWORD_FILE).strip() for role in ROLES if uses_database(role)}
    assert len(set(passwords.values())) == len(passwords), "two roles share a database password"
    out = json.loads(cluster.exec("callmanager", "python3", "-c", _DB_ATTEMPTS).stdout.strip().splitlines()[-1])
    assert out["user"] == "ccmsec_callmanager"
    assert out["own_table"] == "ok", out
    for key, schema in (("capf_table", "ccmsec_capf"), ("capf_outbox", "ccmsec_capf"),
                        ("ctl_table", "ccmsec_ctl_provider")):
        assert out[key].startswith("WriteRefused: PostgreSQL refused role 'ccmsec_callmanager'"), (key, out[key])
        assert f"permission denied for schema {schema}" in out[key], (key, out[key])
    assert "password authentication failed" in out["as_capf"], out["as_capf"]
    # nothing forged got into CAPF's outbox (the bootstrap user looks, in the postgres container)
    rows = cluster.exec("postgres", "psql", "-q", "-U", compose.PG_BOOTSTRAP_USER, "-d", compose.PG_DATABASE, "-At",
                        "-c", "SELECT count(*) FROM ccmsec_capf.event_outbox WHERE event_id = 'forged'").stdout
    assert rows.strip() == "0"


# --- using it ----------------------------------------------------------------------------------

def test_rst9_a_reset_on_a_node_compose_does_not_run_is_refused(cluster):
    """RST-9 in the compose cluster (callmanager and callmanager-sub1): compose tells callmanager
    every node it runs (CCMSEC_CLUSTER_CALL_CONTROL_NODES). A well-formed name it does not run,
    callmanager-sub3, was accepted (202) and reached no phone; now the API answers 404 and gRPC
    (`ccmsec device reset --server`) NOT_FOUND, naming the nodes there are — nothing published,
    the refusal audited; a node it runs is taken. Before any phone boots: nothing to disturb."""
    from ccmsec.adminclient import AdminApiError

    why = ("server 'callmanager-sub3' is no node of this cluster: its call-control nodes are "
           "callmanager, callmanager-sub1; a reset on it would reach no phone")
    with admin(cluster) as api:
        with pytest.raises(AdminApiError) as refused:
            api.reset_server("callmanager-sub3")
        assert (refused.value.status, refused.value.error) == (404, why)
        taken = api.reset_server("callmanager-sub1")
        assert (taken["rule"], taken["targeted"]) == ("RST-9", 0), taken
        rows = [(e.get("outcome"), e.get("status"), e.get("target")) for e in api.audit()
                if e.get("action") == "device.reset_many"]
        assert ("refused", 404, "server:callmanager-sub3") in rows, rows
        assert [r for r in rows if r[0] == "ok"] == [("ok", 202, "server:callmanager-sub1")], rows
    grpc_refused = cluster.cli("device", "reset", "--server", "callmanager-sub3", check=False)
    assert grpc_refused.returncode != 0 and "Traceback" not in grpc_refused.stderr
    assert why in grpc_refused.stderr, grpc_refused.stdout + grpc_refused.stderr


def test_admin_api_through_the_published_port(cluster):
    """The administration API from the host: verified with the cluster CA, the generated password;
    a wrong password is refused."""
    with admin(cluster) as api:
        assert api.whoami()["username"] == "admin"
        api.add_device("SEP00C0FFEE0001", "7960", "non-secure")
        assert "SEP00C0FFEE0001" in {d["name"] for d in api.list_devices()}
    ca, pw = cluster.fetch_admin_credentials()
    # the README's commands from the host through a named context (issue 13 item 4)
    env = {"CCMSEC_CONFIG_DIR": str(cluster.workdir / "config"), "CCMSEC_CONTEXT": "compose",
           "CCMSEC_DATA_DIR": str(cluster.workdir / "no-local-cluster"), "CCMSEC_ADMIN_TIMEOUT": "90"}
    added = run_cli("context", "add", "compose", "--url", cluster.admin_url(), "--ca-file", str(ca),
                    "--password-file", str(pw), env=env)
    assert added.returncode == 0, added.stderr
    listed = run_cli("device", "list", env=env)
    assert listed.returncode == 0 and "SEP00C0FFEE0001" in listed.stdout, listed.stderr
    added = run_cli("device", "add", "SEP00C0FFEE0002", "--model", "7970", env=env)
    assert added.returncode == 0, added.stderr
    # a rule refusal comes back through the context like any other (MODE-5: no CTL yet)
    refused = run_cli("device", "set-security", "SEP00C0FFEE0002", "encrypted", env=env)
    assert refused.returncode != 0 and "MODE-5" in refused.stderr, refused.stdout + refused.stderr
    bad = AdminClient(discover(cluster.workdir, url=cluster.admin_url(), cafile=ca,
                               password="not-the-password-at-all"), timeout=30)
    with bad, pytest.raises(Exception, match="401"):
        bad.whoami()


def test_monitoring_profile_prometheus_loads_the_rules_and_scrapes_every_service(cluster):
    """Issue 16 in compose: `--profile monitoring` Prometheus (the official image by default; the
    Debian stand-in here) loads the shipped alert rules and finds every service's metrics `up`.
    Grafana is not run (no Debian package, no registry): its files are checked by the unit tests."""
    import urllib.request

    rules_file = yaml.safe_load((ROOT / "deploy/monitoring/prometheus/ccmsec-rules.yml").read_text())
    shipped = {g["name"] for g in rules_file["groups"]}
    cluster.dc("--profile", "monitoring", "up", "-d", "--no-build", "prometheus", timeout=300)
    port = cluster.ports["CCMSEC_PUBLISH_PROMETHEUS"]

    def api(path):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return json.loads(reply.read())["data"]

    try:
        wait_until(lambda: cluster.health("prometheus") == "healthy", 180, "prometheus healthy")
        loaded = wait_until(lambda: {g["name"] for g in api("/api/v1/rules")["groups"]}, 60, "rules loaded")
        assert loaded == shipped

        # every role and each call-control subscriber of the compose file (the rendered targets)
        nodes = {t.split(":")[0] for t in compose.scrape_targets()}
        assert set(ROLES) < nodes and "callmanager-sub1" in nodes

        def all_up():
            targets = api("/api/v1/targets")["activeTargets"]
            state = {t["labels"]["instance"].split(":")[0]: t["health"] for t in targets}
            return state if set(state) == nodes and set(state.values()) == {"up"} else None

        state = wait_until(all_up, 240, "every service target up", step=5)
        assert set(state) == nodes
        # the rules evaluate against real series: the services' own metric is there for every node
        up = api("/api/v1/query?query=up%7Bjob%3D%22ccmsec%22%7D")["result"]
        assert {r["metric"]["instance"].split(":")[0] for r in up if r["value"][1] == "1"} == nodes
    finally:
        cluster.dc("--profile", "monitoring", "rm", "-sfv", "prometheus", check=False)


def test_checklist_through_the_cli_and_a_call(cluster):
    """The checklist from the `cli` container (CHK-1, CHK-2, CHK-4, CHK-6, CHK-8, CHK-9): tokens, the
    CTL client to mixed mode, CAPF, devices, phones of each mode booting TFTP → CAPF →
    registration, encrypted calls; a call between two more phone-sim phones."""
    run = cluster.cli("demo", "--attach", timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "mixed" in run.stdout
    # the TFTP step runs in compose too: real downloads from tftp-signer inside the cluster's
    # network, the firmware's signature and the mixed-mode .sgn checked against the certificate the
    # signer gave over mutual TLS (AUTH-1, AUTH-3, CERT-5)
    assert "signature valid (AUTH-1)" in run.stdout, run.stdout[-4000:]
    assert "RingList.xml.sgn: signed by the TFTP certificate" in run.stdout, run.stdout[-4000:]

    # a call: two phones of phone-sim's container call each other through call control
    caller, callee = "SEP00CA11E0C001", "SEP00CA11E0C002"
    with admin(cluster) as api:
        for name, model, dn in ((caller, "7960", "5201"), (callee, "7970", "5202")):
            api.add_device(name, model, "non-secure")
            api.add_line(dn, name)
    for name, model in ((caller, "7960"), (callee, "7970")):
        cluster.cli("phones", "add", "--name", name, "--model", model)
    booted = cluster.cli("phones", "boot", caller, callee, "--wait", "--timeout", "240", timeout=400)
    assert "registered" in booted.stdout, booted.stdout + booted.stderr

    def call_state(name):
        reply = json.loads(cluster.cli("phones", "calls", name, "--json").stdout)
        return {c.get("state") for c in reply.get("calls", [])}

    cluster.cli("phones", "dial", caller, "5202")
    wait_until(lambda: "ring-in" in call_state(callee), 120, "the callee ringing")
    cluster.cli("phones", "answer", callee)
    wait_until(lambda: "connected" in call_state(caller), 120, "the call connected")
    cluster.cli("phones", "hangup", caller)


# --- failover to a call-control subscriber and back (LATER-7, issue 12) -------------------------

FLEET_PREFIX = "SEP0DE7"  # the demo's fleet, booted by the checklist: 7970 encrypted (MIC → LSC),
#                           7960 authenticated, 7940 encrypted (string → LSC), 7912 non-secure
REGISTER_ALLOWANCE = 10.0  # on top of 3 keepalives: a TLS registration on the loaded 2-core host


def _phone_sim(cluster, workdir):
    """phone-sim's gRPC API from the host (its published mutual-TLS port, the `cli` identity of
    `compose client-bundle`): polled every 0.2 s, where a `docker-compose run` takes seconds."""
    import grpc

    from ccmsec_proto import phone_sim_pb2_grpc

    bundle = json.loads(cluster.cli("compose", "client-bundle").stdout)
    ident = bundle["identity"]
    creds = grpc.ssl_channel_credentials(root_certificates=bundle["ca"].encode(),
                                         private_key=ident["tls.key"].encode(),
                                         certificate_chain=ident["tls.crt"].encode())
    port = cluster.ports[compose.publish_variable("phone-sim", "grpc_port")]
    channel = grpc.secure_channel(f"127.0.0.1:{port}", creds,
                                  options=[("grpc.ssl_target_name_override", "phone-sim")])
    return channel, phone_sim_pb2_grpc.PhoneSimStub(channel)


def test_failover_to_the_subscriber_and_back_LATER_7(cluster, tmp_path, capsys):
    """Issue 12 in compose: the cluster runs a call-control subscriber (`callmanager-sub1`, its own
    identity); a phone's configuration lists the publisher, then the subscriber, then SRST. The
    demo's fleet (secure phones with their LSCs) is registered with the publisher; `docker kill` of
    the publisher's container → every phone on the subscriber within 3 keepalives + a registration,
    the secure ones still over TLS with the same LSC; an encrypted call set up by the publisher
    keeps its SRTP media both ways across the kill, and a new one is placed on the subscriber.
    The publisher started again → the phones return only after the stable period. Then `docker
    pause` of the publisher (hung) → noticed by missed keepalives, all on the subscriber;
    unpaused → back after the stable period. Nothing lost: every device, line and LSC as before.
    Convergence figures are printed."""
    from ccmsec.formats.cnfxml import parse_cnf_xml
    from ccmsec.demo import fleet_number
    from ccmsec_proto import phone_sim_pb2
    from tests.compose.conftest import FAILOVER_SETTINGS, SUBSCRIBERS

    keepalive = float(FAILOVER_SETTINGS["CCMSEC_SCCP_KEEPALIVE"])
    stable = float(FAILOVER_SETTINGS["CCMSEC_PHONE_FAILBACK_STABLE"])
    bound = 3 * keepalive + REGISTER_ALLOWANCE
    sub = SUBSCRIBERS[0]
    # the subscriber: a container of its own, hardened, its own identity (not the publisher's)
    info = cluster.inspect(sub)
    assert info["State"]["Health"]["Status"] == "healthy"
    assert info["Config"]["User"] == "ccmsec" and info["HostConfig"]["CapDrop"] == ["ALL"]
    uri = cluster.exec(sub, "python3", "-c",
                       "from ccmsec.runtime.identity import load_identity; "
                       f"print(load_identity('{compose.IDENTITY_DIR}').identity.uri)").stdout.strip()
    assert uri == f"spiffe://ccmsec/callmanager/{sub}"
    # a node as phones know it: its compose name (resolved when they connect) or its address
    pub, on_sub, srst = ({name, cluster.address(name)} for name in ("callmanager", sub, "srst"))

    channel, sim = _phone_sim(cluster, tmp_path)
    with channel:
        def phones() -> dict:
            return {p.name: p for p in sim.ListPhones(phone_sim_pb2.PhoneSelector(all=True), timeout=20).phones
                    if p.name.startswith(FLEET_PREFIX)}

        fleet = sorted(phones())
        assert len(fleet) == 4, fleet
        # the configuration lists publisher, subscriber, SRST (the non-secure phone's, over TFTP)
        config = parse_cnf_xml(cluster.cli("tftp", "get", f"{fleet[3]}.cnf.xml").stdout.encode())
        group = [m.host for m in config.call_managers]
        assert len(group) == 2 and group[0] in pub and group[1] in on_sub, group
        assert config.srst is not None and config.srst.addresses[0] in srst, config.srst

        def where() -> dict[str, str]:
            return {n: (p.registered_with.rsplit(":", 1)[0] if p.state == "registered" else "")
                    for n, p in phones().items()}

        def until_all_on(host: set[str], since: float, timeout: float, what: str) -> dict[str, float]:
            seen: dict[str, float] = {}
            deadline = time.monotonic() + timeout
            while len(seen) < len(fleet):
                try:
                    now = where()
                except Exception:  # noqa: BLE001 — phone-sim busy: ask again
                    now = {}
                for name, at in now.items():
                    if at in host and name not in seen:
                        seen[name] = time.monotonic() - since
                if time.monotonic() > deadline:
                    raise AssertionError(f"{what}: not all on {sorted(host)} within {timeout:.0f} s: {where()}")
                time.sleep(0.2)
            return seen

        # the checklist booted the fleet with both nodes up: every phone on the publisher
        until_all_on(pub, time.monotonic(), 120 + stable, "phones on the publisher before the fault")
        before = phones()
        lscs = {n: p.lsc.der for n, p in before.items()}
        transports = {n: p.transport for n, p in before.items()}
        secure = [n for n in fleet if transports[n] == "encrypted"]
        assert len(secure) == 2 and all(lscs[n] for n in secure), transports
        with admin(cluster) as api:
            devices = {d["name"] for d in api.list_devices()}
            lines = {(ln.get("dn"), ln.get("device")) for ln in api.lines()}
        assert {(fleet_number(i), n) for i, n in enumerate(fleet)} <= lines, lines

        a, b = secure

        def calls(name):
            return sim.GetPhoneCalls(phone_sim_pb2.PhoneName(name=name), timeout=20)

        def act(name, action, number=""):
            return sim.PhoneAction(phone_sim_pb2.PhoneActionRequest(name=name, action=action, number=number),
                                   timeout=30)

        def call_up(where: str):
            """a calls b, b answers, audio flows: (icon, SRTP both ways) as a's display shows them."""
            wait_until(lambda: calls(a).ready and calls(a).lines, 60, f"{a} ready on {where}", step=0.5)
            act(a, "dial", fleet_number(fleet.index(b)))
            wait_until(lambda: any(c.state == "ring-in" for c in calls(b).calls), 60, f"{b} ringing", step=0.5)
            act(b, "answer")
            wait_until(lambda: any(c.state == "connected" for c in calls(a).calls), 60, "call connected",
                       step=0.5)
            flowing(25, 60)
            shown = calls(a)
            return shown.calls[0].icon, shown.media.srtp_both_ways

        def flowing(packets: int, timeout: float) -> bool:
            """Audio received by both phones (`packets` more each), SRTP both ways on both."""
            start = {n: calls(n).media.received for n in (a, b)}
            wait_until(lambda: all((r := calls(n)).media.received - start[n] >= packets
                                   and r.media.srtp_both_ways for n in (a, b)),
                       timeout, f"SRTP audio both ways on {a} and {b}", step=0.5)
            return True

        def hang_up():
            act(a, "hangup")
            wait_until(lambda: not calls(b).calls and not calls(a).calls, 60, "the call cleared", step=0.5)

        # an encrypted call on the publisher, up across the kill (call preservation)
        held_icon, held_srtp = call_up("the publisher")
        assert held_icon == "lock" and held_srtp, (held_icon, held_srtp)

        # docker kill of the publisher: the phones' connections are reset, the standby takes over
        killed = time.monotonic()
        cluster.docker("kill", cluster.container("callmanager"))
        moved = until_all_on(on_sub, killed, bound, "failover to the subscriber")
        there = phones()
        for name in fleet:
            assert there[name].transport == transports[name], (name, there[name].transport)
            assert there[name].lsc.der == lscs[name], f"{name}: LSC changed on failover"
        # the call set up by the dead node keeps its SRTP media both ways; hung up, both ends clear
        try:
            dropped = not flowing(25, 20)
        except AssertionError:
            dropped = True
        hang_up()
        assert not dropped, "the encrypted call did not survive the publisher's kill"

        # a new encrypted call between the two secure phones, set up by the subscriber
        icon, srtp = call_up("the subscriber")
        hang_up()
        assert icon == "lock" and srtp, (icon, srtp)

        # the publisher back (the operator starts it: a kill is not restarted by the policy)
        started = time.monotonic()
        cluster.docker("start", cluster.container("callmanager"))
        healthy = started + wait_until_healthy(cluster, "callmanager")
        pub |= {cluster.address("callmanager")}
        back = until_all_on(pub, started, 300 + stable, "fail-back to the publisher")
        # never before the stable period: the publisher cannot have answered before its start
        assert min(back.values()) >= stable, back

        # docker pause of the publisher (a hung node: connections stay open, nothing answers) →
        # noticed by missed keepalives: the third unanswered is seen when the fourth is due, and
        # the pause falls anywhere in an interval — up to 5 keepalives, then a registration
        hung_bound = 5 * keepalive + REGISTER_ALLOWANCE
        paused = time.monotonic()
        cluster.docker("pause", cluster.container("callmanager"))
        try:
            hung = until_all_on(on_sub, paused, hung_bound, "failover from the paused publisher")
        finally:
            unpaused = time.monotonic()
            cluster.docker("unpause", cluster.container("callmanager"))
        assert min(hung.values()) >= keepalive, f"moved before a keepalive was missed: {hung}"
        resumed = until_all_on(pub, unpaused, 120 + stable, "fail-back after docker unpause")
        assert min(resumed.values()) >= stable, resumed
        after = phones()
        for name in fleet:
            assert after[name].transport == transports[name]
            assert after[name].lsc.der == lscs[name], f"{name}: LSC changed on fail-back"
        with admin(cluster) as api:
            assert devices <= {d["name"] for d in api.list_devices()}
            assert lines <= {(ln.get("dn"), ln.get("device")) for ln in api.lines()}

    def stats(times: dict[str, float]) -> str:
        import statistics

        return f"median {statistics.median(times.values()):.2f} s, worst {max(times.values()):.2f} s"

    report = (f"\ncompose failover ({len(fleet)} phones, {len(secure)} encrypted with LSC; keepalive "
              f"{keepalive:g} s, stable period {stable:g} s, probes every "
              f"{FAILOVER_SETTINGS['CCMSEC_PHONE_PROBE_INTERVAL']} s):\n"
              f"  docker kill publisher -> all re-registered on {sub}: {stats(moved)} (bound {bound:g} s); "
              f"calls dropped: {int(dropped)} of 1 (encrypted, up across the kill)\n"
              f"  new encrypted call on {sub}: icon {icon}, SRTP both ways {srtp}\n"
              f"  docker start publisher -> healthy after {healthy - started:.1f} s; phones back "
              f"(from the start): {stats(back)}; from healthy: "
              f"{stats({n: t - (healthy - started) for n, t in back.items()})}\n"
              f"  docker pause publisher -> all on {sub}: {stats(hung)} (bound {hung_bound:g} s); "
              f"docker unpause -> back: {stats(resumed)}\n"
              f"  lost: 0 devices, 0 lines, 0 LSCs changed\n")
    with capsys.disabled():  # the figures belong in the suite's output, pass or not
        print(report)


def wait_until_healthy(cluster, service: str, timeout: float = 300) -> float:
    start = time.monotonic()
    wait_until(lambda: cluster.health(service) == "healthy", timeout, f"{service} healthy", step=1.0)
    return time.monotonic() - start


def test_faults_phones_recover_nothing_lost(cluster):
    """Faults after the checklist and the failover test: docker kill and restart of a service and
    of NATS, pause and network disconnect of call control; phones come back, nothing is lost."""
    with admin(cluster) as api:
        devices = {d["name"] for d in api.list_devices()}
        registered = lambda: {r["device"] for r in api.registrations()}  # noqa: E731
        before = registered()
    assert before, "no phone registered after the checklist"
    assert before <= devices

    def phones_back():
        with admin(cluster) as api:
            return before <= registered_now(api)

    def registered_now(api):
        return {r["device"] for r in api.registrations()}

    def check_nothing_lost():
        with admin(cluster) as api:
            assert devices <= {d["name"] for d in api.list_devices()}

    # docker kill of a service, then of NATS: the restart policy does not apply to a kill, so the
    # operator starts them again (`docker-compose up -d`), and everything comes back.
    for service in ("callmanager", "nats"):
        cluster.docker("kill", cluster.container(service))
        cluster.dc("up", "-d", "--no-build", timeout=300)
        cluster.wait_healthy()
        wait_until(phones_back, 180, f"phones registered again after docker kill {service}")
        check_nothing_lost()

    # docker restart of a service and of NATS
    for service in ("capf", "nats"):
        cluster.docker("restart", "-t", "5", cluster.container(service), timeout=120)
        cluster.wait_healthy()
        wait_until(phones_back, 180, f"phones registered again after docker restart {service}")
        check_nothing_lost()

    # docker pause of call control long enough for phones to notice, then unpause
    cluster.docker("pause", cluster.container("callmanager"))
    time.sleep(10)
    cluster.docker("unpause", cluster.container("callmanager"))
    cluster.wait_healthy()
    wait_until(phones_back, 240, "phones registered again after docker pause callmanager")
    check_nothing_lost()

    # network disconnect of call control, then reconnect
    net = f"{cluster.project}_default"
    cm = cluster.container("callmanager")
    cluster.docker("network", "disconnect", net, cm)
    time.sleep(10)
    cluster.docker("network", "connect", "--alias", "callmanager", net, cm)
    cluster.wait_healthy()
    wait_until(phones_back, 240, "phones registered again after network disconnect of callmanager")
    check_nothing_lost()


def test_grpc_commands_from_the_host_through_a_named_context(cluster, tmp_path):
    """Issue 13 item 4: from the host, `phones`, `capf`, `ctl`, `tftp` reach the compose cluster's
    services through their published gRPC ports — mutual TLS with the cli identity the context got
    from `compose client-bundle`. The bad cases: no client certificate, and a certificate from
    another CA, are refused at the published port."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from ccmsec.cluster import pki

    bundle = cluster.cli("compose", "client-bundle").stdout
    # no CCMSEC_DATA_DIR: the context's own folder is the gRPC commands' data folder
    env = {"CCMSEC_CONFIG_DIR": str(tmp_path / "config"), "CCMSEC_CONTEXT": "compose-grpc",
           "CCMSEC_DATA_DIR": "", "CCMSEC_ADMIN_TIMEOUT": "90"}
    added = run_cli("context", "add", "compose-grpc", "--client-bundle", "-", env=env, input=bundle)
    assert added.returncode == 0, added.stderr
    listed = run_cli("phones", "list", "--json", env=env, timeout=240)
    assert listed.returncode == 0, listed.stderr
    assert "SEP00CA11E0C001" in listed.stdout  # the phones the checklist test booted in phone-sim
    for args in (("capf", "status"), ("ctl", "provider", "show"), ("tftp", "ls"), ("device", "list")):
        proc = run_cli(*args, env=env, timeout=240)
        assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "CTLFile.tlv" in run_cli("tftp", "ls", env=env, timeout=240).stdout
    # `status` through the context: every service the bundle publishes answers its health (no PID:
    # the processes are the engine's). Bounded wait: an earlier fault test may still be healing.
    deadline = time.monotonic() + 90
    while (st := run_cli("status", "--json", env=env, timeout=120)).returncode != 0 and time.monotonic() < deadline:
        time.sleep(3)
    assert st.returncode == 0, st.stdout[-2000:] + st.stderr[-2000:]
    rows = {r["service"]: r for r in json.loads(st.stdout)}
    assert set(ROLES) <= set(rows) and "callmanager-sub1" in rows, rows
    assert all(r["state"] == "SERVING" and r["pid"] is None for r in rows.values()), rows

    # the bad cases, at the published gRPC port of phone-sim
    port = cluster.ports[compose.publish_variable("phone-sim", "grpc_port")]
    ca = json.loads(bundle)["ca"].encode()
    anonymous = grpc.ssl_channel_credentials(root_certificates=ca)
    with grpc.secure_channel(f"127.0.0.1:{port}", anonymous,
                             options=[("grpc.ssl_target_name_override", "phone-sim")]) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=20)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
    intruder = pki.issue_client_identity(tmp_path / "other-ca", "cli", out_dir=tmp_path / "intruder")
    forged = json.loads(bundle)
    forged["identity"] = {p.name: p.read_text() for p in (tmp_path / "intruder").iterdir() if p.is_file()}
    # an identity not from the bundle's CA is refused when the context is added
    mixed = run_cli("context", "add", "mixed", "--client-bundle", "-", env=env, input=json.dumps(forged))
    assert mixed.returncode != 0 and "not the bundle's CA" in mixed.stderr, mixed.stderr
    forged["ca"] = forged["identity"]["ca.crt"]  # a consistent bundle of another CA: the port refuses it
    env_bad = {**env, "CCMSEC_CONTEXT": "intruder"}
    assert run_cli("context", "add", "intruder", "--client-bundle", "-", env=env_bad,
                   input=json.dumps(forged)).returncode == 0
    bad = run_cli("phones", "list", env=env_bad, timeout=240)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stdout + bad.stderr
    assert intruder.identity.uri == "spiffe://ccmsec/cli/cli"  # same name, wrong issuer: refused


def test_the_bus_refuses_a_connection_without_credentials(cluster):
    """BUS-1 in compose: NATS knows only the containers' public nkeys (rendered by init); a client
    without credentials on the cluster's network is refused."""
    code = ("import asyncio, nats\n"
            "async def main():\n"
            "    try:\n"
            "        nc = await nats.connect('nats://nats:4222', connect_timeout=10, allow_reconnect=False)\n"
            "    except Exception as exc:\n"
            "        print('refused:', type(exc).__name__, exc)\n"
            "        return\n"
            "    print('CONNECTED')\n"
            "    await nc.close()\n"
            "asyncio.run(main())\n")
    out = cluster.dc("run", "--rm", "-T", "--entrypoint", "python", "cli", "-c", code, timeout=180).stdout
    assert "CONNECTED" not in out and "refused:" in out, out


# --- private keys per service (DEPLOY-1) --------------------------------------------------------

OWN_KEYS = {  # role -> the private keys it alone holds, in its own volume keys-<role>
    "capf": ["capf.key"],
    "phone-sim": ["manufacturer-ca.key"],
    "callmanager": ["ccmserver.key"],
    "tftp-signer": ["ccmserver.key"],
    "srst": ["ccmserver.key"],
}


def test_each_private_key_is_readable_only_in_its_own_container(cluster):
    """DEPLOY-1: the CAPF CA key, phone-sim's manufacturer CA key and the server keys of
    callmanager, tftp-signer and srst are each in a volume only their role mounts; the shared data
    volume carries certificates only. Run last: after the checklist, CAPF enrolments and faults,
    nothing has put a key back on the shared volume."""
    grep = ("grep -rlI -- 'PRIVATE KEY' /data /run/ccmsec 2>/dev/null; "
            "find /data /run/ccmsec -name '*.key' 2>/dev/null; true")
    for role in ROLES:
        found = set(cluster.exec(role, "sh", "-c", grep).stdout.split())
        allowed = (f"{compose.KEY_DIR}/", f"{compose.IDENTITY_DIR}/")
        if role == "phone-sim":
            allowed += ("/data/phone-sim/",)  # its phones' own keys, on its private tmpfs
        stray = sorted(p for p in found if not p.startswith(allowed))
        assert stray == [], f"{role} can read private keys that are not its own: {stray}"
        own = sorted(p.rsplit("/", 1)[-1] for p in found if p.startswith(compose.KEY_DIR + "/"))
        assert own == sorted(set(OWN_KEYS.get(role, []))), (role, own)
    # the keys are where they belong, matching the certificates everyone reads
    for role, cert in (("capf", "/data/pki/capf.crt"), ("phone-sim", f"{compose.MANUFACTURER_DIR}/manufacturer-ca.crt")):
        check = ("from cryptography import x509; from cryptography.hazmat.primitives import serialization as s; "
                 f"c = x509.load_pem_x509_certificate(open('{cert}','rb').read()); "
                 f"k = s.load_pem_private_key(open('{compose.KEY_DIR}/{OWN_KEYS[role][0]}','rb').read(), None); "
                 "P = s.PublicFormat.SubjectPublicKeyInfo; E = s.Encoding.DER; "
                 "print(c.public_key().public_bytes(E, P) == k.public_key().public_bytes(E, P))")
        assert cluster.exec(role, "python3", "-c", check).stdout.strip() == "True", role
    # the bad case: from callmanager's container, CAPF's key path holds nothing, and CAPF's volume
    # is mounted nowhere but in capf
    proc = cluster.exec("callmanager", "cat", f"{compose.KEY_DIR}/capf.key", check=False)
    assert proc.returncode != 0 and "No such file" in proc.stderr
    for role in ROLES:
        mounts = [m.get("Name", "") for m in cluster.inspect(role)["Mounts"]]
        foreign = [m for m in mounts if "_keys-" in m and not m.endswith(f"_{compose.key_volume(role)}")]
        assert foreign == [], (role, foreign)


def test_two_clusters_side_by_side_each_its_own_ports_ca_and_phones(cluster, neighbour, tmp_path):
    """Issue 13 item 3: a second cluster beside this one — a copy of this one's env file (every
    host port in it taken by this cluster), fixed by `ccmsec compose ports --fix`, then `up`. Both
    healthy at the same time; each administration API answers with its own cluster CA (the other's
    CA does not verify it); a phone of this cluster (its MIC, from this cluster's phone-sim) is
    accepted by this cluster's SCCP/TLS port and refused by the other's. Only reads the neighbour:
    it is the next module's cluster, which must reach that module as it came up."""
    import socket
    import ssl

    from ccmsec.adminclient import AdminClientError

    # the bad case first: the unfixed copy — every taken port named with a free alternative
    copy = tmp_path / "copy.env"
    copy.write_text(cluster.env_file.read_text().replace(f"={cluster.project}\n", "=anotherproject\n"))
    checked = run_cli("compose", "ports", "--env-file", str(copy), timeout=120)
    # every port the compose file publishes: the roles' and the event bus's (NATS, BUS-1)
    published = {name for entries in compose.host_ports().values() for name, *_ in entries}
    published.add(compose.NATS_PUBLISH_VARIABLE)
    assert checked.returncode != 0 and "Traceback" not in checked.stderr, checked.stdout + checked.stderr
    named = dict(re.findall(r"a free one: (CCMSEC_PUBLISH_\w+)=(\d+)", checked.stderr))
    assert set(named) == published, (published - set(named), checked.stderr)
    assert f"run `ccmsec compose ports --env-file {copy} --fix`" in checked.stderr
    ours = set(cluster.ports.values())
    assert not ours & {int(v) for v in named.values()}, "an alternative is one of the running cluster's ports"

    # the neighbour was made that way, and `up` worked: both healthy now, on disjoint host ports
    assert neighbour.beside == cluster.project and neighbour.project != cluster.project
    assert set(re.findall(r"compose ports: (\w+): \S+ is taken; now \d+", neighbour.fixed)) == published, \
        neighbour.fixed
    for c in (cluster, neighbour):
        c.wait_healthy(timeout=120)
    assert all(cluster.health(s) == neighbour.health(s) == "healthy" for s in ("nats", "postgres", *ROLES))
    for name in published:
        assert neighbour.ports[name] != cluster.ports[name], name
    bindings = neighbour.inspect("callmanager")["HostConfig"]["PortBindings"]
    assert {int(b[0]["HostPort"]) for b in bindings.values()} <= set(neighbour.ports.values())

    # each administration API with its own CA; the other cluster's CA does not verify it
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    creds = {}
    for c, sub in ((cluster, "a"), (neighbour, "b")):
        ca, pw = c.fetch_admin_credentials()
        creds[c.project] = ((tmp_path / sub / "ca.crt"), pw.read_text().strip())
        creds[c.project][0].write_text(ca.read_text())
    assert creds[cluster.project][0].read_text() != creds[neighbour.project][0].read_text()
    for c, other in ((cluster, neighbour), (neighbour, cluster)):
        ca, password = creds[c.project]
        with AdminClient(discover(tmp_path, url=c.admin_url(), cafile=ca, password=password), timeout=30) as api:
            assert api.whoami()["username"] == "admin"
        wrong_ca = creds[other.project][0]
        with AdminClient(discover(tmp_path, url=c.admin_url(), cafile=wrong_ca, password=password),
                         timeout=30) as api, pytest.raises((AdminClientError, OSError), match="(?i)certificate"):
            api.whoami()

    # a phone of this cluster: its MIC (issued by this cluster's phone-sim manufacturer CA) is
    # accepted at this cluster's SCCP/TLS port and refused at the neighbour's
    name = "SEP00B0B0B0B001"
    cluster.cli("phones", "add", "--name", name, "--model", "7970")
    store = wait_until(lambda: next((p for p in json.loads(cluster.file("phone-sim", "/data/phone-sim/phones.json"))
                                     ["phones"] if p["name"] == name and p.get("mic")), None), 30,
                       "the phone's MIC in phone-sim's store")
    (tmp_path / "mic.crt").write_text(store["mic"]["cert"])
    (tmp_path / "mic.key").write_text(store["mic"]["key"])

    def handshake(c) -> str:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the server's side is not the question
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(tmp_path / "mic.crt", tmp_path / "mic.key")
        port = c.ports[compose.publish_variable("callmanager", "sccp_tls_port")]
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
            try:
                tls = ctx.wrap_socket(raw)
            except (ssl.SSLError, ConnectionResetError) as exc:  # an alert, or the server just closes
                return f"refused in the handshake: {exc}"
            with tls:
                tls.settimeout(3)
                try:
                    tls.recv(1)  # the server waits for the phone's registration
                except (TimeoutError, socket.timeout):
                    pass
                except (ssl.SSLError, ConnectionResetError) as exc:
                    return f"refused after the handshake: {exc}"
                return "accepted"

    assert handshake(cluster) == "accepted"   # the same MIC and key: it is the cluster that differs
    refused = handshake(neighbour)
    assert refused.startswith("refused in the handshake"), refused

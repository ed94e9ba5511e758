"""Issue 3 end to end: tokens → CTL Provider → CTL client → CTLFile.tlv over TFTP → mixed mode.

These tests switch the cluster to mixed mode, which changes what every other test would see, so
they run on a cluster of their own (module scope) and in file order.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ccmsec.aio.tftp import tftp_get
from ccmsec.cluster.runner import cluster_pids
from ccmsec.formats.ctl import Role, parse_ctl, verify_ctl
from ccmsec.pki.tokens import MAX_PASSWORD_FAILURES, TokenError, open_token
from ccmsec.pki.truststore import CtlRejected, TrustStore
from ccmsec.runtime.bus import EventBus, make_event
from ccmsec.runtime.bus_policy import parse_subject
from ccmsec.runtime.grpcio import check_health, secure_channel
from ccmsec.runtime.identity import client_identity
from ccmsec_proto import callmanager_pb2_grpc, common_pb2, events_pb2
from tests.conftest import run_cli

pytestmark = pytest.mark.e2e
RELEVANT = ("ccmsec.device.reset", "ccmsec.service.restart", "ccmsec.mode.changed", "ccmsec.ctl.updated")


@pytest.fixture(scope="module")
def tc():
    data = Path(tempfile.mkdtemp(prefix="ccmsec-e2e-trust-"))
    result = run_cli("up", "-d", "--data", str(data), timeout=240)
    if result.returncode != 0:
        run_cli("down", "--data", str(data))
        pytest.fail(f"ccmsec up failed: {result.stderr}")
    endpoints = json.loads((data / "run" / "endpoints.json").read_text())
    pw = data / "pw"
    pw.write_text("token-password\n")
    yield {"data": data, "endpoints": endpoints, "pw": pw, "ctl": {}}
    res = run_cli("down", "--data", str(data))
    left = cluster_pids(data)
    shutil.rmtree(data, ignore_errors=True)
    assert res.returncode == 0, res.stderr
    assert left == [], f"processes left after ccmsec down: {left}"


def cli(tc, *args, timeout=240):  # restarts take minutes on a loaded two-core machine
    return run_cli(*args, "--data", str(tc["data"]), timeout=timeout)


def update(tc, *args):
    # waits until the services the update restarts (RST-3, RST-4) serve again: minutes on a
    # loaded two-core machine
    return cli(tc, "ctl", "update", "--password-file", str(tc["pw"]), "-q", *args, timeout=240)


async def wait_serving(tc, *roles, timeout=30.0):
    ident = client_identity(tc["data"])
    deadline = time.monotonic() + timeout
    for role in roles:
        svc = tc["endpoints"]["services"][role]
        while True:
            try:
                if await check_health(ident, svc["host"], svc["grpc_port"], role, timeout=1) == "SERVING":
                    break
            except grpc.aio.AioRpcError:
                pass
            assert time.monotonic() < deadline, f"{role} not serving after {timeout}s"
            await asyncio.sleep(0.3)


async def observe(tc, *args, settle=2.0):
    """Run the CLI while recording every event on the bus; returns (result, [(subject, event)])."""
    seen: list = []
    bus = EventBus.for_cli(tc["data"], tc["endpoints"]["nats_url"], "e2e-observer")
    await bus.connect()
    nc = bus.nc

    async def collect(msg):
        # ccmsec.<publisher>.<kind>[.<target>], kept as ccmsec.<kind>[.<target>] (who published
        # is the bus policy's business, proved in tests/integration/test_bus_auth.py)
        parsed = parse_subject(msg.subject)
        subject = f"ccmsec.{parsed.kind}" + (f".{parsed.target}" if parsed.target else "")
        if subject.startswith(RELEVANT):
            seen.append((subject, events_pb2.Event.FromString(msg.data)))

    await nc.subscribe("ccmsec.>", cb=collect)
    try:
        result = await asyncio.to_thread(cli, tc, *args)
        await asyncio.sleep(settle)
    finally:
        await bus.close()
    return result, seen


def rules(events) -> list[tuple[str, str]]:
    return sorted((s, e.device_reset.rule or e.service_restart.rule) for s, e in events)


async def fetch_ctl(tc) -> bytes:
    svc = tc["endpoints"]["services"]["tftp-signer"]
    deadline = time.monotonic() + 30
    while True:  # the tftp-signer restarts after a CTL update (RST-4)
        try:
            return await tftp_get(svc["host"], svc["tftp_port"], "CTLFile.tlv", timeout=0.5, retries=2)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


def _der(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw.startswith(b"-----"):
        return x509.load_pem_x509_certificate(raw).public_bytes(serialization.Encoding.DER)
    return raw


# --- before any CTL ---------------------------------------------------------------------------------
def test_mode1_fresh_cluster_is_non_secure_and_mode5_refuses_mixed_without_ctl(tc):
    shown = cli(tc, "mode", "show")
    assert shown.returncode == 0 and "non-secure" in shown.stdout and "none (MODE-5)" in shown.stdout
    refused = cli(tc, "mode", "set", "mixed")
    assert refused.returncode != 0 and "MODE-5" in refused.stderr
    # The administration API reads the same state: no CTL, no authenticated device (MODE-5).
    device = cli(tc, "device", "add", "SEP0000000E2E01", "--model", "7970", "--security", "authenticated")
    assert device.returncode != 0 and "MODE-5" in (device.stderr + device.stdout)


def test_chk2_capf_not_activated_names_the_fix_and_activation_advises_the_ctl_client(tc):
    """CHK-2: a CAPF refusal says how to activate it; activating before any CTL says the CTL
    client will list the CAPF certificate (later, once a CTL exists, it checks that CTL)."""
    refused = cli(tc, "capf", "schedule", "SEP0000000E2E01", "--op", "install", "--auth", "null")
    assert refused.returncode == 1 and "not activated" in refused.stderr
    assert "`ccmsec capf activate`" in refused.stderr
    activated = cli(tc, "capf", "activate")
    assert activated.returncode == 0, activated.stderr
    assert "no CTL yet: the CTL client (`ccmsec ctl update" in activated.stdout
    assert "will list this CAPF certificate" in activated.stdout


def test_chk1_ctl_client_refused_while_the_provider_is_not_activated(tc):
    for name in ("t1", "t2", "t3", "lockme"):
        made = cli(tc, "token", "create", "--name", name, "--password-file", str(tc["pw"]))
        assert made.returncode == 0, made.stderr
    refused = update(tc, "--token", "t1", "--token", "t2", "--mode", "mixed")
    assert refused.returncode == 1 and "not activated" in refused.stderr and "CHK-1" in refused.stderr
    activated = cli(tc, "ctl", "provider", "activate")
    assert activated.returncode == 0 and "activated" in activated.stdout


def test_ctl1_one_token_is_refused(tc):
    res = update(tc, "--token", "t1", "--mode", "mixed")
    assert res.returncode == 1 and "CTL-1" in res.stderr and "at least two" in res.stderr


def test_unreachable_provider_is_refused_clearly(tc):
    res = update(tc, "--token", "t1", "--token", "t2", "--provider", "127.0.0.1:1", "--timeout", "2")
    assert res.returncode == 1 and "cannot connect to the CTL Provider at 127.0.0.1:1" in res.stderr


def test_locked_token_and_wrong_password_are_refused(tc):
    tokens = tc["data"] / "tokens"
    for _ in range(MAX_PASSWORD_FAILURES):
        with pytest.raises(TokenError):
            open_token(tokens, "lockme", "wrong")
    locked = update(tc, "--token", "lockme", "--token", "t2")
    assert locked.returncode == 1 and "locked" in locked.stderr
    bad = tc["data"] / "bad-pw"
    bad.write_text("not-the-password\n")
    wrong = cli(tc, "ctl", "update", "--token", "t1", "--token", "t2", "--password-file", str(bad), "-q")
    assert wrong.returncode == 1 and f"{MAX_PASSWORD_FAILURES - 1} attempts left" in wrong.stderr


# --- the first CTL ----------------------------------------------------------------------------------------
async def test_ctl_update_publishes_a_verified_ctl_switches_to_mixed_and_emits_rst3_rst4(tc):
    """CHK-6, CTL-3, RST-3, RST-4: exactly the events the two changes require."""
    cm_cert = tc["data"] / "servers" / "callmanager" / "ccmserver.cer"
    tftp_cert = tc["data"] / "servers" / "tftp-signer" / "ccmserver.cer"
    before = {"cm": cm_cert.read_bytes(), "tftp": tftp_cert.read_bytes()}
    result, events = await observe(tc, "ctl", "update", "--token", "t1", "--token", "t2", "--mode",
                                   "mixed", "--password-file", str(tc["pw"]), "-q")
    assert result.returncode == 0, result.stderr
    assert "CTL version 1 published" in result.stdout and "mixed (was non-secure)" in result.stdout
    assert rules(events) == sorted([
        ("ccmsec.mode.changed", ""), ("ccmsec.device.reset", "RST-3"),
        ("ccmsec.service.restart.callmanager", "RST-3"), ("ccmsec.ctl.updated", ""),
        ("ccmsec.device.reset", "RST-4"), ("ccmsec.service.restart.callmanager", "RST-4"),
        ("ccmsec.service.restart.tftp-signer", "RST-4")])
    resets = {e.device_reset.rule: e.device_reset for s, e in events if s == "ccmsec.device.reset"}
    assert resets["RST-3"].all and resets["RST-3"].kind == events_pb2.RESET
    assert resets["RST-4"].all and resets["RST-4"].kind == events_pb2.RESTART

    served = await fetch_ctl(tc)
    ctl_file = parse_ctl(served)
    assert verify_ctl(ctl_file).subject == "CN=SAST-t1;OU=SAST;O=ccmsec"
    assert [r.role for r in ctl_file.records] == [Role.TOKEN, Role.TOKEN, Role.CCM, Role.TFTP, Role.CAPF]
    by_role = {r.role: r for r in ctl_file.records}
    services = tc["endpoints"]["services"]
    assert by_role[Role.CCM].certificate_der == _der(cm_cert)        # CERT-5
    assert by_role[Role.TFTP].certificate_der == _der(tftp_cert)     # CERT-5
    assert by_role[Role.CAPF].certificate_der == _der(tc["data"] / "pki" / "capf.crt")  # CERT-3
    assert str(by_role[Role.CCM].ipv4) == services["callmanager"]["host"]
    assert by_role[Role.TFTP].dns_name == "tftp-signer"
    tc["ctl"]["v1"] = served

    await wait_serving(tc, "callmanager", "tftp-signer")
    # CERT-5: the restarts RST-4 caused did not re-issue the server certificates.
    assert cm_cert.read_bytes() == before["cm"] and tftp_cert.read_bytes() == before["tftp"]
    shown = cli(tc, "mode", "show")
    assert "mixed" in shown.stdout and "version 1" in shown.stdout
    # MODE-5 lifted: the administration API now sees the CTL (cluster_settings.ctl_version).
    await wait_serving(tc, "callmanager")
    for _ in range(40):  # the HTTPS API comes back with callmanager after RST-3/RST-4
        device = await asyncio.to_thread(cli, tc, "device", "add", "SEP0000000E2E01", "--model",
                                         "7970", "--security", "authenticated")
        if device.returncode == 0 or "MODE-5" in device.stderr:
            break
        await asyncio.sleep(0.5)
    assert device.returncode == 0, device.stderr


def test_chk2_capf_activation_after_the_ctl_checks_the_ctl_lists_capf(tc):
    again = cli(tc, "capf", "activate")
    assert again.returncode == 0, again.stderr
    assert "the current CTL (version 1) already lists this CAPF certificate" in again.stdout
    assert "no CTL update is needed" in again.stdout


async def test_ctl2_signer_outside_the_current_ctl_refused_unless_new_trust(tc):
    """CTL-2 at the CTL client, and the phone's trust store agreeing with it both ways."""
    phone = TrustStore()
    phone.offer(tc["ctl"]["v1"])
    await wait_serving(tc, "tftp-signer", "callmanager")
    again = update(tc, "--token", "t1", "--token", "t2", "--sign-with", "t2")  # t2 is trusted
    assert again.returncode == 0, again.stderr
    v2 = await fetch_ctl(tc)
    # Same tokens and servers: an equivalent file (same records; only the header differs).
    assert [r.encode() for r in parse_ctl(v2).records] == \
        [r.encode() for r in parse_ctl(tc["ctl"]["v1"]).records]
    phone.offer(v2)  # signed by a token of the phone's CTL: accepted

    refused = update(tc, "--token", "t3", "--token", "t2", "--sign-with", "t3")
    assert refused.returncode == 1 and "CTL-2" in refused.stderr and "--new-trust" in refused.stderr
    await wait_serving(tc, "tftp-signer", "callmanager")
    forced = update(tc, "--token", "t3", "--token", "t2", "--sign-with", "t3", "--new-trust")
    assert forced.returncode == 0, forced.stderr
    v3 = await fetch_ctl(tc)
    for _ in range(50):  # the tftp-signer may still hold the old file for an instant
        if v3 != v2:
            break
        await asyncio.sleep(0.3)
        v3 = await fetch_ctl(tc)
    with pytest.raises(CtlRejected, match="CTL-2"):
        phone.offer(v3)  # a phone that kept the old CTL refuses it: hence the explicit flag
    assert verify_ctl(parse_ctl(v3)).subject == "CN=SAST-t3;OU=SAST;O=ccmsec"


MODE2_DEVICES = {"SEP0000000E2E2A": "non-secure", "SEP0000000E2E2B": "authenticated",
                 "SEP0000000E2E2C": "encrypted"}


async def _register(tc, name: str, transport: str) -> str:
    """Register `name` over `transport` with an LSC of this cluster's CAPF; empty when accepted,
    else the RegisterReject text."""
    from ccmsec.aio.sccp import SccpRegistrationRejected, connect_phone
    from ccmsec.pki.ca import Issued, load_pair, new_key
    from ccmsec.pki.lsc import issue_lsc
    from ccmsec.pki.tls import sccp_phone_context
    from ccmsec.wire import sccp as s

    data = tc["data"]
    svc = tc["endpoints"]["services"]["callmanager"]
    ccm = x509.load_der_x509_certificate((data / "servers" / "callmanager" / "ccmserver.cer").read_bytes())
    capf = load_pair(data / "pki" / "capf.crt", data / "pki" / "capf.key")
    key = new_key("ec256")
    ctx = None
    if transport != "non-secure":
        ctx = sccp_phone_context(transport, [ccm], lsc=Issued(issue_lsc(capf, name, key.public_key()), key))
    port = svc["sccp_tls_port"] if ctx else svc["sccp_port"]
    phone = await connect_phone(svc["host"], port, s.Register(name, svc["host"]), ssl_context=ctx,
                                pinned_ccm_certificates=[ccm] if ctx else None, timeout=15)
    try:
        await phone.wait_registered(15)
        return ""
    except SccpRegistrationRejected as exc:
        return exc.text
    finally:
        await phone.close()


async def _served_in_own_mode(tc) -> None:
    """MODE-2's observable half: each device registers in its own stored mode, and only in it."""
    for name, mode in MODE2_DEVICES.items():
        assert await _register(tc, name, mode) == "", f"{name} refused in its own mode {mode}"
    assert (await _register(tc, "SEP0000000E2E2B", "encrypted")).startswith("DEV-1")      # AES: not its mode
    assert (await _register(tc, "SEP0000000E2E2C", "authenticated")).startswith("ENC-1")  # NULL: not its mode
    assert (await _register(tc, "SEP0000000E2E2B", "non-secure")).startswith("DEV-1")


async def _callmanager_answers(tc, timeout: float = 60.0):
    """(Status, GetClusterMode) once call control answers its own RPCs — health may say SERVING a
    moment before, which made this test flaky (UNAVAILABLE right after start)."""
    svc = tc["endpoints"]["services"]["callmanager"]
    ident = client_identity(tc["data"])
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with secure_channel(ident, svc["host"], svc["grpc_port"], "callmanager") as ch:
                stub = callmanager_pb2_grpc.CallManagerStub(ch)
                return (await stub.Status(common_pb2.Empty(), timeout=5),
                        await stub.GetClusterMode(common_pb2.Empty(), timeout=5))
        except grpc.aio.AioRpcError:
            assert time.monotonic() < deadline, "callmanager does not answer"
            await asyncio.sleep(0.3)


async def test_mode2_cluster_mode_and_each_devices_own_mode_survive_a_callmanager_restart(tc):
    """MODE-2 on the running cluster: after call control restarts, the cluster is still mixed with
    its CTL, and each device is served in its own stored mode — a non-secure one on 2000, an
    authenticated one only over a NULL cipher, an encrypted one only over AES (the wrong transport
    refused with DEV-1/ENC-1), exactly as before the restart."""
    await wait_serving(tc, "callmanager")
    for name, mode in MODE2_DEVICES.items():
        added = await asyncio.to_thread(cli, tc, "device", "add", name, "--model", "7970", "--security", mode)
        assert added.returncode == 0, added.stderr
    await _served_in_own_mode(tc)
    before, _ = await _callmanager_answers(tc)
    bus = EventBus.for_cli(tc["data"], tc["endpoints"]["nats_url"], "e2e-trust")
    await bus.connect()
    await bus.publish(make_event("service.restart", "e2e-trust", service_restart=events_pb2.ServiceRestart(
        role="callmanager", rule="MODE-2 test", reason="restart to check the modes survive")), "callmanager")
    await bus.close()
    deadline = time.monotonic() + 60
    while True:
        after, mode = await _callmanager_answers(tc)
        if after.details["pid"] != before.details["pid"]:
            break
        assert time.monotonic() < deadline, "callmanager did not restart"
        await asyncio.sleep(0.3)
    assert mode.mode == common_pb2.CLUSTER_MIXED and mode.ctl_present
    await wait_serving(tc, "callmanager")
    await _served_in_own_mode(tc)


# The revisions of the schema's branches that an earlier build shipped: the upgrade test takes the
# database back to them (each later revision's own downgrade), then lets the current build start.
EARLIER_BUILD = {"core": "core_0001", "capf": "capf_0002", "runtime": "runtime_0001"}


# Each owner's database holds its own branches and the runtime branch (ccmsec/cluster/databases.py).
EARLIER_FILES = {"callmanager": ("core", "runtime"), "capf": ("capf", "runtime")}


def _schema_revisions(data: Path) -> set[str]:
    import sqlite3

    from ccmsec.cluster.databases import database_path

    found = set()
    for role in EARLIER_FILES:
        with sqlite3.connect(database_path(data, role)) as conn:
            found |= {row[0] for row in conn.execute("SELECT version_num FROM alembic_version")}
    return found


def _downgrade_to_earlier_build(data: Path) -> None:
    from alembic import command
    from sqlalchemy import create_engine

    from ccmsec.cluster.databases import database_path
    from ccmsec.runtime.database import _alembic_config

    for role, branches in EARLIER_FILES.items():
        engine = create_engine(f"sqlite:///{database_path(data, role)}")
        try:
            with engine.begin() as conn:
                cfg = _alembic_config()
                cfg.attributes["connection"] = conn
                for branch in branches:
                    command.downgrade(cfg, EARLIER_BUILD[branch])
        finally:
            engine.dispose()


async def test_mode2_each_devices_own_mode_survives_an_upgrade(tc):
    """MODE-2 across an upgrade: the cluster is stopped, its database taken back to the schema an
    earlier build shipped (the later revisions of the core, CAPF and runtime branches undone), and
    the current build started on it — its migrations bring the schema up to date, and the cluster
    is still mixed with its CTL and every device is served in its own mode, not a default."""
    await _served_in_own_mode(tc)  # the devices of the restart test, before the upgrade
    data = tc["data"]
    db = data  # the owners' databases in it (EARLIER_FILES)
    down = await asyncio.to_thread(cli, tc, "down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert cluster_pids(data) == []
    await asyncio.to_thread(_downgrade_to_earlier_build, db)
    later = {"core_0002", "capf_0003", "runtime_0002"}
    assert not later & _schema_revisions(db)  # (a branch's base may not be listed: not a head)
    up = await asyncio.to_thread(cli, tc, "up", "-d", timeout=240)
    assert up.returncode == 0, up.stderr
    tc["endpoints"] = json.loads((data / "run" / "endpoints.json").read_text())
    assert later <= _schema_revisions(db)  # migrated on start
    _, mode = await _callmanager_answers(tc)
    assert mode.mode == common_pb2.CLUSTER_MIXED and mode.ctl_present
    await wait_serving(tc, "callmanager")
    await _served_in_own_mode(tc)


def test_mode6_clusters_sharing_the_tftp_server(tc):
    same_path = cli(tc, "ctl", "tftp-clusters", "add", "other", "--path", "cluster1", "--mode", "mixed")
    assert same_path.returncode == 1 and "MODE-6" in same_path.stderr and "already used" in same_path.stderr
    other_mode = cli(tc, "ctl", "tftp-clusters", "add", "other", "--path", "other", "--mode", "non-secure")
    assert other_mode.returncode == 1 and "same security mode" in other_mode.stderr
    ok = cli(tc, "ctl", "tftp-clusters", "add", "other", "--path", "other", "--alternate", "other-alt",
             "--mode", "mixed")
    assert ok.returncode == 0 and "(this cluster)" in ok.stdout and "other-alt" in ok.stdout
    # Our cluster alone may not leave mixed mode while it shares the TFTP server with a mixed one.
    switch = cli(tc, "mode", "set", "non-secure")
    assert switch.returncode == 1 and "MODE-6" in switch.stderr
    assert cli(tc, "ctl", "tftp-clusters", "remove", "other").returncode == 0


async def test_rst7_provider_port_change_restarts_only_the_ctl_provider(tc):
    new_port = tc["endpoints"]["services"]["ctl-provider"]["ctl_provider_port"] + 7
    result, events = await observe(tc, "ctl", "provider-port", str(new_port))
    assert result.returncode == 0, result.stderr
    assert rules(events) == [("ccmsec.service.restart.ctl-provider", "RST-7")]
    deadline = time.monotonic() + 30
    while True:
        shown = cli(tc, "ctl", "provider", "show")
        if shown.returncode == 0 and f":{new_port}" in shown.stdout:
            break
        assert time.monotonic() < deadline, shown.stdout + shown.stderr
        time.sleep(0.5)
    assert "activated:      yes" in shown.stdout


async def test_later8_tls10_phones_only_with_the_cluster_legacy_tls_setting(tc):
    """LATER-8 on the running cluster: a phone limited to TLS 1.0 (AES128-SHA for an encrypted
    device, NULL-SHA for an authenticated one) is refused on 2443 by default; `ccmsec tls legacy
    on` (ctl-provider stores it, callmanager and capf restart and learn it) lets it register;
    `off` shuts it out again."""
    import ssl
    import warnings

    from ccmsec.aio.sccp import SccpConnectError, connect_phone
    from ccmsec.pki.ca import Issued, load_pair, new_key
    from ccmsec.pki.lsc import issue_lsc
    from ccmsec.pki.tls import sccp_phone_context
    from ccmsec.wire import sccp as s

    data = tc["data"]
    services = tc["endpoints"]["services"]
    cm = services["callmanager"]
    await wait_serving(tc, "callmanager", "capf", "ctl-provider")
    devices = {"SEP0000000E2E1A": ("encrypted", "AES128-SHA"),
               "SEP0000000E2E1B": ("authenticated", "NULL-SHA")}
    for name, (mode, _) in devices.items():
        added = await asyncio.to_thread(cli, tc, "device", "add", name, "--model", "7970",
                                        "--security", mode)
        assert added.returncode == 0, added.stderr
    ccm = x509.load_der_x509_certificate((data / "servers" / "callmanager" / "ccmserver.cer").read_bytes())
    capf = load_pair(data / "pki" / "capf.crt", data / "pki" / "capf.key")

    def tls10(name):
        mode, cipher = devices[name]
        key = new_key()
        ctx = sccp_phone_context(mode, [ccm], lsc=Issued(issue_lsc(capf, name, key.public_key()), key))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1
        ctx.set_ciphers(f"{cipher}:@SECLEVEL=0")
        return ctx

    async def register(name):
        phone = await connect_phone(cm["host"], cm["sccp_tls_port"], s.Register(name, cm["host"]),
                                    ssl_context=tls10(name), pinned_ccm_certificates=[ccm])
        try:
            await phone.wait_registered(10)
            return phone._writer.get_extra_info("ssl_object").version()
        finally:
            await phone.close()

    assert "legacy TLS (TLS 1.0 on 2443 and 3804): off" in (await asyncio.to_thread(cli, tc, "tls", "show")).stdout
    for name in devices:
        with pytest.raises((SccpConnectError, ssl.SSLError, ConnectionError)):
            await register(name)

    on = await asyncio.to_thread(cli, tc, "tls", "legacy", "on")
    assert on.returncode == 0, on.stderr
    assert "TLS 1.0 has known weaknesses" in on.stderr
    assert "restarting callmanager, capf: 2/2 serving again" in on.stderr
    for name in devices:
        assert await register(name) == "TLSv1"

    off = await asyncio.to_thread(cli, tc, "tls", "legacy", "off")
    assert off.returncode == 0 and "accept TLS 1.2 only" in off.stdout, off.stderr
    for name in devices:
        with pytest.raises((SccpConnectError, ssl.SSLError, ConnectionError)):
            await register(name)


def test_changes_that_restart_services_wait_until_they_serve_again(tc):
    """`mode set` and `ctl update` wait, with progress, until the services their change restarts
    (RST-3, RST-4) serve again, so the very next command works; `--no-wait` returns at once."""
    switched = cli(tc, "mode", "set", "non-secure")
    assert switched.returncode == 0, switched.stderr
    assert "restarting callmanager: 1/1 serving again" in switched.stderr
    listed = cli(tc, "device", "list")  # the HTTPS API of the restarted callmanager, at once
    assert listed.returncode == 0, listed.stderr
    both = update(tc, "--token", "t3", "--token", "t2", "--sign-with", "t3", "--mode", "mixed")
    assert both.returncode == 0, both.stderr
    assert "restarting callmanager, tftp-signer: 2/2 serving again" in both.stderr
    assert cli(tc, "device", "list").returncode == 0
    shown = cli(tc, "mode", "show")
    assert shown.returncode == 0 and "mixed" in shown.stdout
    quick = cli(tc, "mode", "set", "non-secure", "--no-wait")
    assert quick.returncode == 0 and "serving again" not in quick.stderr

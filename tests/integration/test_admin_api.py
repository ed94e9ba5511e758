"""The administration API over real HTTPS (uvicorn on 127.0.0.1) against a real database."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ccmsec.db.devices import HARDENING_FIELDS, SETTING_CTL_VERSION, set_setting
from ccmsec.pki import ca as pki
from tests.integration.test_admin_support import (  # noqa: F401  (fixtures)
    READONLY_PASSWORD,
    cheap_argon2,
    assert_json_error,
    config_changes,
    device_resets,
    server_context,
    stack,
    start_stack,
)

SEP = "SEP001122334455"
BOTH_BACKENDS = pytest.mark.parametrize("stack", ["sqlite", "postgres"], indirect=True)


async def _peer_certificate_der(host: str, port: int, ctx: ssl.SSLContext) -> bytes:
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)
    try:
        return writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        await writer.wait_closed()


# --- CERT-4 --------------------------------------------------------------------------------------

async def test_cert4_server_presents_the_https_certificate_we_issued(stack):
    issued = x509.load_pem_x509_certificate(stack.certfile.read_bytes())
    der = await _peer_certificate_der("127.0.0.1", stack.server.port, stack.ssl_context)
    assert der == issued.public_bytes(serialization.Encoding.DER)
    # The bad case: a client trusting some other CA refuses the server.
    other = pki.create_ca(pki.name("someone else"))
    other_file = stack.data_dir / "other-ca.crt"
    other_file.write_bytes(other.pem)
    with pytest.raises(ssl.SSLCertVerificationError):
        await _peer_certificate_der("127.0.0.1", stack.server.port,
                                    ssl.create_default_context(cafile=str(other_file)))


async def test_cert4_https_server_presents_the_admin_api_identity_from_the_cluster_ca(tmp_path):
    """In a cluster the API serves HTTPS with the `admin-api` identity the runner issued; clients
    verify it with cluster-ca.crt, and the CA key is not needed to serve (it is not even there)."""
    from ccmsec.runtime.identity import load_identity, service_identity
    from ccmsec_callmanager.admin import AdminServer, ensure_https_certificate
    from fastapi import FastAPI

    data = tmp_path / "data"
    service_identity(data, "callmanager", "callmanager", "127.0.0.1")
    (data / "pki" / "cluster-ca.key").unlink()
    admin = load_identity(data / "identities" / "services" / "callmanager" / "admin-api")
    certfile, keyfile = ensure_https_certificate(data, "127.0.0.1", admin)
    server = AdminServer(FastAPI(), "127.0.0.1", 0, certfile, keyfile)
    await server.start()
    try:
        ctx = ssl.create_default_context(cafile=str(data / "pki" / "cluster-ca.crt"))
        der = await _peer_certificate_der("127.0.0.1", server.port, ctx)
    finally:
        await server.stop()
    cert = x509.load_der_x509_certificate(der)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate((data / "pki" / "cluster-ca.crt").read_bytes()))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://ccmsec/admin-api/callmanager"]
    assert not (data / "callmanager" / "https.crt").exists()


# --- authentication, roles ------------------------------------------------------------------------

async def test_login_required_missing_credentials_get_401_and_are_audited(stack):
    anon = stack.client()
    r = await anon.get("/api/v1/devices")
    assert_json_error(r, 401)
    assert "Basic" in r.headers["www-authenticate"]
    assert_json_error(await anon.post("/api/v1/devices", json={"name": SEP, "model": "7970"}), 401)
    assert_json_error(await anon.post("/api/v1/devices", content=b"{not json",
                                      headers={"content-type": "application/json"}), 401)
    assert_json_error(await anon.get("/api/v1/devices",
                                     headers={"Authorization": "Basic !!!notbase64"}), 401)
    rows = await stack.audit_rows()
    assert [(r.action, r.outcome, r.actor) for r in rows][:2] == [
        ("device.list", "unauthenticated", None), ("device.create", "unauthenticated", None)]


async def test_wrong_password_gets_401_and_the_attempt_is_audited(stack):
    bad = stack.client(auth=("admin", "not-the-password"))
    assert_json_error(await bad.get("/api/v1/devices"), 401)
    r = await stack.client().post("/api/v1/login", json={"username": "admin", "password": "nope"})
    assert_json_error(r, 401)
    r = await stack.client().post("/api/v1/login",
                                  json={"username": "nobody", "password": "nope"})
    assert_json_error(r, 401)
    bogus = stack.client(headers={"Authorization": "Bearer made-up-token"})
    assert_json_error(await bogus.get("/api/v1/devices"), 401)
    rows = await stack.audit_rows()
    assert [(r.actor, r.action, r.outcome) for r in rows] == [
        ("admin", "device.list", "unauthenticated"),
        ("admin", "login", "unauthenticated"),
        ("nobody", "login", "unauthenticated"),
        (None, "device.list", "unauthenticated"),
    ]
    assert (await stack.admin().get("/api/v1/devices")).status_code == 200


async def test_login_token_works_until_logout_revokes_it(stack):
    admin = await stack.token_client("admin", stack.admin_password)
    assert (await admin.get("/api/v1/whoami")).json() == {"username": "admin", "role": "admin"}
    assert (await admin.post("/api/v1/logout")).status_code == 200
    assert_json_error(await admin.get("/api/v1/whoami"), 401)


async def test_expired_token_is_refused(stack):
    import datetime as dt

    stack.app.state.token_ttl = dt.timedelta(seconds=-1)
    admin = await stack.token_client("admin", stack.admin_password)
    assert_json_error(await admin.get("/api/v1/whoami"), 401)


async def test_repeated_failures_from_one_address_are_throttled(stack):
    from ccmsec_callmanager.admin.auth import FailureThrottle

    stack.app.state.throttle = FailureThrottle(limit=3, window=60)
    bad = stack.client(auth=("admin", "wrong"))
    for _ in range(3):
        assert_json_error(await bad.get("/api/v1/whoami"), 401)
    assert_json_error(await bad.get("/api/v1/whoami"), 429)
    # even the right password waits until the window has passed
    assert_json_error(await stack.admin().get("/api/v1/whoami"), 429)


async def test_forged_bearer_tokens_are_throttled_like_wrong_passwords(stack):
    """Guessing bearer tokens from one address ends in 429 like guessing passwords; a real token
    from that address waits too, and an oversized token is refused without a lookup."""
    from ccmsec_callmanager.admin.auth import FailureThrottle

    stack.app.state.throttle = FailureThrottle(limit=3, window=60)
    real = await stack.token_client("admin", stack.admin_password)
    for forged in ("A" * 43, "B" * 43, "x" * 5000):
        guess = stack.client(headers={"Authorization": f"Bearer {forged}"})
        assert_json_error(await guess.get("/api/v1/whoami"), 401)
    r = await stack.client(headers={"Authorization": "Bearer " + "C" * 43}).get("/api/v1/whoami")
    assert_json_error(r, 429)
    assert "passwords or tokens" in r.json()["error"]
    assert_json_error(await real.get("/api/v1/whoami"), 429)
    stack.app.state.throttle = FailureThrottle(limit=3, window=60)  # the window passed
    assert (await real.get("/api/v1/whoami")).status_code == 200


async def test_audit_paging_id_beyond_64_bits_is_a_422_not_a_500(stack):
    admin = stack.admin()
    for before in ("9223372036854775808", "99999999999999999999999", "-1", "0", "x"):
        assert_json_error(await admin.get(f"/api/v1/audit?before_id={before}"), 422)
    assert (await admin.get("/api/v1/audit?before_id=9223372036854775807")).status_code == 200


async def test_readonly_user_reads_but_gets_403_on_every_mutation(stack):
    admin = await stack.token_client("admin", stack.admin_password)
    assert (await admin.post("/api/v1/devices", json={"name": SEP, "model": "7970"})).status_code == 201
    viewer = await stack.token_client("viewer", READONLY_PASSWORD)
    assert (await viewer.get("/api/v1/devices")).json()["total"] == 1
    assert (await viewer.get(f"/api/v1/devices/{SEP}")).status_code == 200
    assert_json_error(await viewer.post("/api/v1/devices", json={"name": "X1", "model": "7970"}), 403)
    assert_json_error(await viewer.patch(f"/api/v1/devices/{SEP}", json={"description": "x"}), 403)
    assert_json_error(await viewer.delete(f"/api/v1/devices/{SEP}"), 403)
    assert_json_error(await viewer.get("/api/v1/audit"), 403)
    assert_json_error(await viewer.post("/api/v1/accounts", json={
        "username": "evil", "password": "x" * 20, "role": "admin"}), 403)
    assert (await admin.get(f"/api/v1/devices/{SEP}")).json()["config_version"] == 1
    denied = [(r.actor, r.action, r.target) for r in await stack.audit_rows() if r.outcome == "denied"]
    assert denied == [("viewer", "device.create", None), ("viewer", "device.update", SEP),
                      ("viewer", "device.delete", SEP), ("viewer", "audit.list", None),
                      ("viewer", "account.create", None)]


async def test_admin_creates_accounts_and_duplicates_are_refused(stack):
    admin = await stack.token_client("admin", stack.admin_password)
    r = await admin.post("/api/v1/accounts", json={"username": "ops", "password": "p" * 16,
                                                   "role": "readonly"})
    assert r.status_code == 201 and r.json()["role"] == "readonly"
    assert_json_error(await admin.post("/api/v1/accounts", json={
        "username": "ops", "password": "p" * 16, "role": "readonly"}), 409)
    assert_json_error(await admin.post("/api/v1/accounts", json={
        "username": "short", "password": "short", "role": "readonly"}), 422)
    assert_json_error(await admin.post("/api/v1/accounts", json={
        "username": "x", "password": "p" * 16, "role": "root"}), 422)
    names = [a["username"] for a in (await admin.get("/api/v1/accounts")).json()["accounts"]]
    assert names == ["admin", "ops", "viewer"]


# --- devices ----------------------------------------------------------------------------------

@BOTH_BACKENDS
async def test_device_crud_bumps_config_version_and_announces_changes(stack):
    admin = await stack.token_client("admin", stack.admin_password)
    # a device names only a pool that exists (as PUT /devices/{name}/pool): nothing half-made
    assert_json_error(await admin.post("/api/v1/devices", json={"name": SEP, "model": "7960",
                                                                "device_pool": "HQ"}), 404)
    assert (await admin.get("/api/v1/devices")).json()["total"] == 0
    assert (await admin.post("/api/v1/pools", json={"name": "HQ", "cm_group": ["cm1"]})).status_code == 201
    r = await admin.post("/api/v1/devices", json={"name": SEP, "model": "7960",
                                                  "description": "lobby", "device_pool": "HQ"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["security_mode"] == "non-secure"  # MODE-1 / DEV-1 default
    # DEV-4 factory behaviour: every feature on, except mirroring to the PC port.
    assert {f: created[f] for f in HARDENING_FIELDS} == {
        **{f: True for f in HARDENING_FIELDS}, "span_to_pc_port": False}
    assert created["config_version"] == 1
    assert_json_error(await admin.post("/api/v1/devices", json={"name": SEP, "model": "7960"}), 409)

    listing = (await admin.get("/api/v1/devices")).json()
    assert listing["total"] == 1 and listing["devices"][0]["name"] == SEP
    assert_json_error(await admin.patch(f"/api/v1/devices/{SEP}", json={"device_pool": "NOPE"}), 404)
    assert (await admin.get(f"/api/v1/devices/{SEP}")).json()["device_pool"] == "HQ"
    r = await admin.patch(f"/api/v1/devices/{SEP}", json={"description": "hall", "device_pool": None})
    assert r.status_code == 200 and r.json()["config_version"] == 2
    assert r.json()["device_pool"] is None and r.json()["description"] == "hall"
    again = await admin.patch(f"/api/v1/devices/{SEP}", json={"description": "hall"})
    assert again.json()["config_version"] == 2, "no change, no new version"

    assert (await admin.delete(f"/api/v1/devices/{SEP}")).json() == {"deleted": SEP}
    assert_json_error(await admin.get(f"/api/v1/devices/{SEP}"), 404)
    assert_json_error(await admin.delete(f"/api/v1/devices/{SEP}"), 404)
    assert config_changes(stack.events) == [
        ([SEP], "created"), ([SEP], "updated:description,device_pool"), ([SEP], "deleted")]
    assert [k for k, _, _ in stack.events.published] == ["config.changed"] * 3
    ok = [(r.actor, r.action, r.target) for r in await stack.audit_rows() if r.outcome == "ok"]
    assert ok[1:] == [("admin", "pool.create", "HQ"), ("admin", "device.create", SEP),
                      ("admin", "device.update", SEP), ("admin", "device.delete", SEP)]


@BOTH_BACKENDS
async def test_dev3_refuses_security_a_model_cannot_do(stack):
    await stack.set_ctl_present()  # so only the model is at fault
    admin = await stack.token_client("admin", stack.admin_password)
    for model in ("7912", "7910", "7905G", "7902"):
        r = await admin.post("/api/v1/devices", json={"name": f"P{model}", "model": model,
                                                      "security_mode": "authenticated"})
        assert model in assert_json_error(r, 422, "DEV-3")["error"]
    assert (await admin.post("/api/v1/devices", json={"name": "P7912", "model": "7912"})).status_code == 201
    assert_json_error(await admin.patch("/api/v1/devices/P7912", json={"security_mode": "encrypted"}),
                      422, "DEV-3")
    assert_json_error(await admin.patch("/api/v1/devices/P7912", json={"web_access": False}),
                      422, "DEV-3")
    assert (await admin.get("/api/v1/devices/P7912")).json()["security_mode"] == "non-secure"
    for model in ("7970", "7960", "7940"):
        r = await admin.post("/api/v1/devices", json={"name": f"S{model}", "model": model,
                                                      "security_mode": "encrypted",
                                                      "web_access": False})
        assert r.status_code == 201, r.text
    refused = [(r.action, r.rule, r.status) for r in await stack.audit_rows() if r.outcome == "refused"]
    assert refused == [("device.create", "DEV-3", 422)] * 4 + [("device.update", "DEV-3", 422)] * 2
    assert not stack.events.of_kind("device.reset")


@BOTH_BACKENDS
async def test_mode5_refuses_authentication_and_encryption_without_a_ctl(stack):
    admin = await stack.token_client("admin", stack.admin_password)
    for mode in ("authenticated", "encrypted"):
        r = await admin.post("/api/v1/devices", json={"name": SEP, "model": "7970",
                                                      "security_mode": mode})
        assert "CTL" in assert_json_error(r, 409, "MODE-5")["error"]
    assert (await admin.post("/api/v1/devices", json={"name": SEP, "model": "7970"})).status_code == 201
    assert_json_error(await admin.patch(f"/api/v1/devices/{SEP}", json={"security_mode": "encrypted"}),
                      409, "MODE-5")
    rows = [(r.action, r.target, r.rule) for r in await stack.audit_rows() if r.outcome == "refused"]
    assert rows == [("device.create", SEP, "MODE-5")] * 2 + [("device.update", SEP, "MODE-5")]
    async with stack.sessionmaker() as session, session.begin():  # a CTL, cluster still non-secure
        await set_setting(session, SETTING_CTL_VERSION, "1")
    assert_json_error(await admin.patch(f"/api/v1/devices/{SEP}", json={"security_mode": "encrypted"}),
                      409, "MODE-3")
    await stack.set_ctl_present()
    r = await admin.patch(f"/api/v1/devices/{SEP}", json={"security_mode": "encrypted"})
    assert r.status_code == 200 and r.json()["security_mode"] == "encrypted"


async def test_rst1_rst2_security_and_hardening_changes_reset_the_device(stack):
    await stack.set_ctl_present()
    admin = await stack.token_client("admin", stack.admin_password)
    await admin.post("/api/v1/devices", json={"name": SEP, "model": "7970"})
    await admin.patch(f"/api/v1/devices/{SEP}", json={"description": "no reset for this"})
    await admin.patch(f"/api/v1/devices/{SEP}", json={"security_mode": "authenticated"})
    await admin.patch(f"/api/v1/devices/{SEP}", json={"pc_port": False, "garp": False})
    r = await admin.patch(f"/api/v1/devices/{SEP}", json={"security_mode": "encrypted",
                                                          "settings_access": False})
    assert r.json()["config_version"] == 5
    await admin.patch(f"/api/v1/devices/{SEP}", json={"security_mode": "encrypted"})  # no-op
    # Exactly required_actions(...) per change; both at once reset the phone once, naming both rules.
    assert device_resets(stack.events) == [([SEP], "RST-1", "reset"), ([SEP], "RST-2", "reset"),
                                           ([SEP], "RST-1,RST-2", "reset")]
    assert [b.request_id for b in stack.events.bodies("device.reset")] == ["", "", ""]
    assert len(stack.events.of_kind("config.changed")) == 5


async def test_publish_failure_keeps_the_change_and_is_audited(stack):
    class Down:
        async def publish(self, kind, target, payload):
            raise ConnectionError("bus down")

    class Stuck:
        async def publish(self, kind, target, payload):
            await asyncio.sleep(3600)

    from ccmsec_callmanager.admin import announce as announce_module

    stack.app.state.events = Down()
    admin = await stack.token_client("admin", stack.admin_password)
    assert (await admin.post("/api/v1/devices", json={"name": SEP, "model": "7970"})).status_code == 201
    assert (await admin.get(f"/api/v1/devices/{SEP}")).status_code == 200
    stack.app.state.events = Stuck()
    announce_module.PUBLISH_TIMEOUT = 0.2
    try:
        r = await admin.patch(f"/api/v1/devices/{SEP}", json={"description": "x"})
    finally:
        announce_module.PUBLISH_TIMEOUT = 5.0
    assert r.status_code == 200 and r.json()["description"] == "x"
    rows = [(r.action, r.target, r.outcome) for r in await stack.audit_rows()]
    assert rows.count(("event.publish", SEP, "error")) == 2


# --- bad input -------------------------------------------------------------------------------------

BAD_CREATE_BODIES = [
    {"name": "SEP00112233445G", "model": "7970"},        # SEP + non-hex
    {"name": "sep001122334455", "model": "7970"},        # SEP lowercase
    {"name": "SEP0011223344", "model": "7970"},          # SEP too short
    {"name": "bad name", "model": "7970"},               # space
    {"name": "X" * 16, "model": "7970"},                 # too long
    {"name": "", "model": "7970"},
    {"name": "P1", "model": "7971"},                     # unknown model
    {"name": "P1", "model": 7970},                       # wrong type
    {"name": 12, "model": "7970"},
    {"name": "P1", "model": "7970", "security_mode": "paranoid"},
    {"name": "P1", "model": "7970", "web_access": "no"},
    {"name": "P1", "model": "7970", "web_access": 0},
    {"name": "P1", "model": "7970", "admin": True},      # unknown field
    {"name": "P1", "model": "7970", "description": "d" * 129},
    {"name": "P1", "model": "7970", "device_pool": "x\n"},
    {"model": "7970"},
]


async def test_bad_input_gets_4xx_json_never_500(stack):
    admin = await stack.token_client("admin", stack.admin_password)
    for body in BAD_CREATE_BODIES:
        assert_json_error(await admin.post("/api/v1/devices", json=body), 422)
    for raw, ctype, status in [(b"[1,2]", "application/json", 422), (b"{", "application/json", 422),
                               (b"", "application/json", 422), (b"\xff\xfe", "application/json", 422),
                               (b"[" * 5000 + b"]" * 5000, "application/json", 422),
                               (b"name=x", "application/x-www-form-urlencoded", 415)]:
        r = await admin.post("/api/v1/devices", content=raw, headers={"content-type": ctype})
        assert_json_error(r, status)
    huge = b'{"name": "P1", "model": "7970", "description": "' + b"x" * 200_000 + b'"}'
    assert_json_error(await admin.post("/api/v1/devices", content=huge,
                                       headers={"content-type": "application/json"}), 413)

    async def chunks():
        for _ in range(100):
            yield b"x" * 1024

    assert_json_error(await admin.post("/api/v1/devices", content=chunks(),
                                       headers={"content-type": "application/json"}), 413)
    await admin.post("/api/v1/devices", json={"name": SEP, "model": "7970"})
    for body in [{}, {"security_mode": None}, {"web_access": None}, {"model": "7960"},
                 {"security_mode": 3}, {"garp": "false"}]:
        assert_json_error(await admin.patch(f"/api/v1/devices/{SEP}", json=body), 422)
    assert_json_error(await admin.get("/api/v1/devices/bad%20name"), 422)
    assert_json_error(await admin.get("/api/v1/devices/" + "A" * 300), 422)
    assert_json_error(await admin.get("/api/v1/devices?limit=0"), 422)
    assert_json_error(await admin.get("/api/v1/devices?limit=abc"), 422)
    assert_json_error(await admin.get("/api/v1/nothing-here"), 404)
    assert_json_error(await admin.put(f"/api/v1/devices/{SEP}", json={}), 405)
    assert (await admin.get("/api/v1/devices")).json()["total"] == 1
    assert config_changes(stack.events) == [([SEP], "created")]
    assert len(stack.events.published) == 1


async def test_errors_quote_huge_or_nasty_input_escaped_and_bounded(stack):
    """A refusal that names the input (an unknown field, an unknown path) quotes it escaped and
    bounded (ccmsec/textsafe.py): no 60 kB error body, no ESC or newline in it or in the audit."""
    admin = await stack.token_client("admin", stack.admin_password)
    nasty = "x\x1b[2J\x1b]0;owned\x07\nFAKE LOG LINE\u202e"
    for field in ("F" * 60_000, nasty):
        body = assert_json_error(await admin.post("/api/v1/devices", json={
            "name": SEP, "model": "7970", field: 1}), 422)
        assert len(body["detail"]) < 300, len(body["detail"])  # the field quoted, cut
        assert body["detail"].isprintable() and body["detail"].isascii(), body["detail"][:300]
        assert ("more characters)" if len(field) > 100 else "\\x1b[2J") in body["detail"], body["detail"][:300]
    body = assert_json_error(await admin.get("/api/v1/%1b[2J%07FAKE%20LINE"), 404)
    assert body["detail"] == "no such endpoint: GET /api/v1/\\x1b[2J\\x07FAKE LINE", body
    assert body["instance"].isprintable(), body
    body = assert_json_error(await admin.get("/api/v1/" + "z" * 20_000), 404)
    assert len(body["detail"]) < 400 and "more characters)" in body["detail"], body["detail"][:300]
    # a validator's refusal quotes the value cut, and still says what a valid one is
    for name in ("p" * 10_000, "p%1b[2J"):
        body = assert_json_error(await admin.patch(f"/api/v1/pools/{name}", json={"srst": ""}), 422)
        assert body["detail"].startswith("device pool name 'p") and len(body["detail"]) < 300, body
        assert body["detail"].endswith("': 1-64 of letters, digits, ' _.-'"), body
        assert body["detail"].isascii() and body["detail"].isprintable(), body
    # a failed login's user name and a refused path's name reach the audit escaped and cut
    for user in ("u\x1b[2J\nFAKE", "u" * 5000):
        assert_json_error(await stack.client(auth=(user, "wrong")).get("/api/v1/devices"), 401)
    from sqlalchemy import select

    from ccmsec.db.admin import AuditEntry

    async with stack.sessionmaker() as session:
        rows = (await session.execute(select(AuditEntry.actor, AuditEntry.target, AuditEntry.detail))).all()
    assert all(d is None or (d.isprintable() and len(d) < 1200) for _, _, d in rows)
    actors = {a for a, _, _ in rows if a and a.startswith("u")}
    assert "u\\x1b[2J\\nFAKE" in actors, actors
    assert all(len(a) <= 64 and a.isprintable() for a in actors), actors
    assert "p\\x1b[2J" in {t for _, t, _ in rows}, rows


# --- audit, openapi, shutdown ---------------------------------------------------------------------

async def test_audit_endpoint_lists_changes_and_refusals_newest_first(stack):
    admin = await stack.token_client("admin", stack.admin_password)
    await admin.post("/api/v1/devices", json={"name": SEP, "model": "7970"})
    await admin.post("/api/v1/devices", json={"name": SEP, "model": "7970", "security_mode": "encrypted"})
    entries = (await admin.get("/api/v1/audit", params={"limit": 2})).json()["entries"]
    assert [(e["action"], e["outcome"], e["rule"], e["target"], e["actor"]) for e in entries] == [
        ("device.create", "refused", "MODE-5", SEP, "admin"),
        ("device.create", "ok", None, SEP, "admin"),
    ]
    assert entries[0]["at"] and entries[0]["remote"].startswith("127.0.0.1:")
    older = (await admin.get("/api/v1/audit", params={"before_id": entries[1]["id"]})).json()
    assert [e["action"] for e in older["entries"]] == ["login"]
    only = (await admin.get("/api/v1/audit", params={"action": "login"})).json()["entries"]
    assert {e["action"] for e in only} == {"login"}


async def test_openapi_document_is_published(stack):
    r = await stack.client().get("/api/v1/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert "/api/v1/devices/{name}" in spec["paths"]
    assert set(spec["paths"]["/api/v1/devices/{name}"]) == {"get", "patch", "delete"}
    schema = spec["paths"]["/api/v1/devices"]["post"]["requestBody"]["content"]["application/json"]
    assert "7905G" in str(schema)
    assert {"HTTPBasic", "HTTPBearer"} <= set(spec["components"]["securitySchemes"])


async def test_server_stops_cleanly_and_releases_the_port(tmp_path):
    async with await start_stack(tmp_path, with_readonly=False) as s:
        port = s.server.port
        assert (await s.client().get("/api/v1/openapi.json")).status_code == 200
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


async def test_serve_admin_runs_until_cancelled(tmp_path):
    from ccmsec_callmanager.admin import ensure_https_certificate, serve_admin
    from fastapi import FastAPI

    certfile, keyfile = ensure_https_certificate(tmp_path, "127.0.0.1")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    task = asyncio.create_task(serve_admin(FastAPI(), "127.0.0.1", port, certfile, keyfile))
    for _ in range(200):
        try:
            await _peer_certificate_der("127.0.0.1", port, server_context(certfile))
            break
        except OSError:
            await asyncio.sleep(0.02)
    else:
        pytest.fail("serve_admin did not come up")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


@BOTH_BACKENDS
async def test_audit_log_retention_by_age_and_by_count(stack, monkeypatch):
    """Retention: rows older than the configured days go, then the oldest beyond the row cap,
    in small batches; 0 keeps everything; the API then lists only what is kept."""
    import datetime as dt

    from ccmsec.db.admin import AuditEntry
    from ccmsec.db.devices import utcnow
    from ccmsec_callmanager.admin import audit

    monkeypatch.setattr(audit, "PRUNE_BATCH", 3)
    now = utcnow()
    async with stack.sessionmaker() as session, session.begin():
        for i in range(30):
            at = now - dt.timedelta(days=400 if i < 10 else 1, seconds=30 - i)
            session.add(AuditEntry(at=at, action="test.row", target=f"r{i:02d}", outcome="ok", status=200))
    async def targets():
        return [r.target for r in await stack.audit_rows() if r.action == "test.row"]

    assert await audit.prune_audit(stack.sessionmaker, max_age_days=0, max_rows=0) == 0
    assert len(await targets()) == 30
    removed = await audit.prune_audit(stack.sessionmaker, max_age_days=365, max_rows=0, now=now)
    assert removed >= 10 and await targets() == [f"r{i:02d}" for i in range(10, 30)]
    await audit.prune_audit(stack.sessionmaker, max_age_days=365, max_rows=5, now=now)
    assert await targets() == [f"r{i:02d}" for i in range(25, 30)]
    listed = (await stack.admin().get("/api/v1/audit?action=test.row")).json()["entries"]
    assert [e["target"] for e in listed] == [f"r{i:02d}" for i in range(29, 24, -1)]


def test_audit_retention_settings_are_validated(monkeypatch, tmp_path):
    from ccmsec.runtime.settings import ServiceSettings, SettingsError, load_settings

    monkeypatch.setenv("CCMSEC_SERVICE", "callmanager")
    monkeypatch.setenv("CCMSEC_DATA_DIR", str(tmp_path))
    assert load_settings(ServiceSettings).audit_retention_days == 365
    monkeypatch.setenv("CCMSEC_AUDIT_RETENTION_DAYS", "-1")
    with pytest.raises(SettingsError, match="CCMSEC_AUDIT_RETENTION_DAYS"):
        load_settings(ServiceSettings)

"""Round-two administration endpoints over real HTTPS against a migrated database: registrations,
resets (CHK-13, RST-9, one device) with progress, lines, device pools (RST-5), cluster state.
Rules: CHK-13, RST-1, RST-2, RST-5, RST-9; every endpoint login-protected, mutations admin-only
and audited, bad input answered 4xx JSON."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random

import pytest

from ccmsec.db.cluster import record_ctl
from ccmsec.db.devices import SETTING_SECURITY_MODE, set_setting
from ccmsec.runtime.grpcio import secure_channel
from ccmsec.runtime.identity import admin_api_identity_dir, load_identity, service_identity, service_identity_dir
from ccmsec_callmanager.registry import RegistrationEntry
from tests.conftest import free_port
from tests.integration.test_ctl_provider_service import _prepare as ctl_prepare
from tests.integration.test_ctl_provider_service import _start as ctl_start
from tests.ownerdb import owner_db
from tests.integration.test_admin_support import (  # noqa: F401  (fixtures)
    READONLY_PASSWORD,
    assert_json_error,
    cheap_argon2,
    config_changes,
    device_resets,
)
from tests.integration.test_admin_v2_support import (  # noqa: F401  (fixtures)
    NODE,
    add_devices,
    migrated_db,
    register,
    tracker,
    v2,
    v2_stack,
)

pytestmark = pytest.mark.timeout(60)

A, B, C = "SEP0000000000A1", "SEP0000000000B2", "SEP0000000000C3"

# Every new endpoint: (method, path, a valid admin body or None for GET).
NEW_ENDPOINTS = [
    ("GET", "/api/v1/registrations", None),
    ("GET", "/api/v1/cluster", None),
    ("GET", "/api/v1/lines", None),
    ("GET", "/api/v1/pools", None),
    ("GET", "/api/v1/capf/operations", None),
    ("GET", "/api/v1/capf/log", None),
    ("GET", "/api/v1/resets/" + "0" * 32, None),
    ("POST", f"/api/v1/devices/{A}/reset", {"kind": "reset"}),
    ("POST", "/api/v1/devices/reset", {"all": True}),
    ("POST", "/api/v1/lines", {"dn": "1000", "device": A}),
    ("POST", "/api/v1/pools", {"name": "HQ", "cm_group": ["cm1"]}),
    ("PATCH", "/api/v1/pools/HQ", {"srst": "srst1"}),
    ("PUT", f"/api/v1/devices/{A}/pool", {"pool": "HQ"}),
    ("POST", "/api/v1/capf/operations", {"device": A, "operation": "install", "auth_mode": "null"}),
    ("POST", "/api/v1/capf/activation", {"active": True}),
]


async def test_every_new_endpoint_needs_login_and_readonly_users_cannot_change_anything(v2):
    anon = v2.client()
    viewer = await v2.token_client("viewer", READONLY_PASSWORD)
    for method, path, body in NEW_ENDPOINTS:
        assert_json_error(await anon.request(method, path, json=body), 401)
        r = await viewer.request(method, path, json=body)
        if method == "GET":
            assert r.status_code not in (401, 403), (path, r.text)
        else:
            assert_json_error(r, 403)
    rows = await v2.audit_rows()
    denied = {(r.actor, r.action) for r in rows if r.outcome == "denied"}
    assert denied == {("viewer", a) for a in ("device.reset", "device.reset_many", "line.create",
                                              "pool.create", "pool.update", "device.set_pool",
                                              "capf.schedule", "capf.activate")}
    assert sum(r.outcome == "unauthenticated" for r in rows) == len(NEW_ENDPOINTS)
    assert v2.events.published == [], "no refused request announced anything"


async def test_openapi_lists_every_new_path(v2):
    spec = (await v2.client().get("/api/v1/openapi.json")).json()
    paths = spec["paths"]
    for method, path, _ in NEW_ENDPOINTS:
        template = path.replace("0" * 32, "{request_id}").replace(A, "{name}").replace("/HQ", "/{name}")
        assert method.lower() in paths[template], (method, template)
    schema = str(paths["/api/v1/capf/operations"]["post"]["requestBody"])
    assert "lsc-then-mic" in schema and "ec256" in schema


# --- registrations -----------------------------------------------------------------------------

async def test_registrations_read_the_mirrored_registry_of_every_node(v2):
    await register(v2, NODE, A, B)
    await register(v2, "cm-b", C)
    viewer = await v2.token_client("viewer", READONLY_PASSWORD)
    listing = (await viewer.get("/api/v1/registrations")).json()
    assert [(r["device"], r["node"]) for r in listing["registrations"]] == [
        (A, NODE), (B, NODE), (C, "cm-b")]
    assert listing["total"] == 3
    one = (await viewer.get("/api/v1/registrations", params={"device": C})).json()["registrations"]
    assert one[0]["transport_port"] == 2000 and one[0]["since"].endswith("+00:00")
    by_node = (await viewer.get("/api/v1/registrations", params={"node": NODE})).json()
    assert [r["device"] for r in by_node["registrations"]] == [A, B]
    assert (await viewer.get("/api/v1/registrations", params={"device": "NOPE"})).json()["total"] == 0
    assert_json_error(await viewer.get("/api/v1/registrations", params={"device": "bad name"}), 422)
    assert_json_error(await viewer.get("/api/v1/registrations", params={"node": "x" * 65}), 422)


# --- resets -------------------------------------------------------------------------------------

async def test_chk13_reset_all_publishes_one_event_and_reports_progress_until_every_phone_is_back(v2, tracker):
    """CHK-13: one device.reset (all, request id); progress names the phones not back yet."""
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    await register(v2, NODE, A, B, since=old)
    await register(v2, "cm-b", C, since=old)
    admin = v2.admin()
    r = await admin.post("/api/v1/devices/reset", json={"all": True})
    assert r.status_code == 202, r.text
    answer = r.json()
    assert answer["rule"] == "CHK-13" and answer["targeted"] == 3 and answer["kind"] == "reset"
    (body,) = v2.events.bodies("device.reset")
    assert body.all and body.rule == "CHK-13" and body.request_id == answer["request_id"]
    assert list(body.devices) == [] and body.server == ""

    progress_url = f"/api/v1/resets/{answer['request_id']}"
    progress = (await admin.get(progress_url)).json()
    assert progress["targeted"] == 3 and progress["back"] == 0 and progress["complete"] is False
    assert progress["not_back"] == [A, B, C]

    # This node sends the Resets and its phones come back; the other node's phone re-registers there.
    for device in (A, B):
        tracker.reset_sent(answer["request_id"], device)
        tracker.add(RegistrationEntry(device, "7960", "non-secure", "127.0.0.1:1", "127.0.0.1", False,
                                      2000, "", "", "", since=dt.datetime.now().timestamp() + 1))
    progress = (await admin.get(progress_url)).json()
    assert (progress["back"], progress["not_back"], progress["complete"]) == (2, [C], False)
    await register(v2, "cm-b", C)  # newer than the request
    progress = (await admin.get(progress_url)).json()
    assert (progress["back"], progress["not_back"], progress["complete"]) == (3, [], True)

    assert_json_error(await admin.get("/api/v1/resets/" + "f" * 32), 404)
    assert_json_error(await admin.get("/api/v1/resets/not-an-id"), 422)
    row = [r for r in await v2.audit_rows() if r.action == "device.reset_many"][-1]
    assert (row.outcome, row.status, row.rule, row.target) == ("ok", 202, "CHK-13", "all")
    assert answer["request_id"] in row.detail


async def test_rst9_a_reset_on_a_node_the_cluster_does_not_run_is_404_and_publishes_nothing(
        tmp_path, migrated_db, tracker):
    """RST-9: the service's CCMSEC_CLUSTER_CALL_CONTROL_NODES lists the cluster's nodes (compose
    and the local runner set it). Under compose nothing said which, so a well-formed name not among
    them (callmanager-sub3 beside callmanager and callmanager-sub1) was accepted, 202, and reset
    nothing — now 404 naming the nodes there are: nothing published, nothing tracked, the refusal
    audited; a node it runs is still reset. Without the list (the API run alone) the form decides."""
    nodes = frozenset({"callmanager", "callmanager-sub1"})
    async with v2_stack(tmp_path / "data", template=migrated_db, tracker=tracker,
                        call_control_nodes=nodes) as v2:
        await register(v2, "callmanager-sub1", B)
        admin = v2.admin()
        r = await admin.post("/api/v1/devices/reset", json={"server": "callmanager-sub3"})
        assert_json_error(r, 404)
        assert r.json()["error"] == ("server 'callmanager-sub3' is no node of this cluster: its "
                                     "call-control nodes are callmanager, callmanager-sub1; a reset "
                                     "on it would reach no phone"), r.text
        assert v2.events.published == [], "a refused request publishes nothing"
        assert tracker.resets == {}, "a refused request is not tracked"
        rows = [(r.outcome, r.status, r.target) for r in await v2.audit_rows()
                if r.action == "device.reset_many"]
        assert rows == [("refused", 404, "server:callmanager-sub3")], rows
        r = await admin.post("/api/v1/devices/reset", json={"server": "callmanager-sub1"})
        assert r.status_code == 202 and (r.json()["rule"], r.json()["targeted"]) == ("RST-9", 1), r.text
        assert len(v2.events.published) == 1
    async with v2_stack(tmp_path / "alone", template=migrated_db) as alone:   # not known: form only
        r = await alone.admin().post("/api/v1/devices/reset", json={"server": "callmanager-sub3"})
        assert r.status_code == 202 and r.json()["rule"] == "RST-9", r.text


async def test_rst9_reset_devices_on_a_server_targets_that_server_only(v2):
    """RST-9: the event names the server (required_actions(ResetDevicesOnServer)); only its phones count."""
    await register(v2, NODE, A)
    await register(v2, "callmanager-sub1", B, C)
    admin = v2.admin()
    r = await admin.post("/api/v1/devices/reset", json={"server": "callmanager-sub1", "kind": "restart"})
    assert r.status_code == 202 and r.json()["targeted"] == 2 and r.json()["rule"] == "RST-9"
    (body,) = v2.events.bodies("device.reset")
    assert (body.server, body.all, list(body.devices), body.rule) == ("callmanager-sub1", False, [], "RST-9")
    assert device_resets(v2.events) == [([], "RST-9", "restart")]
    for bad in ({}, {"all": False}, {"all": True, "server": "callmanager-sub1"}, {"server": ""},
                {"server": "bad node!"}, {"server": 3}, {"all": "yes"}, {"all": True, "kind": "reboot"},
                {"all": True, "devices": [A]}, {"server": "srst"}, {"server": "callmanager-sub9"}):
        assert_json_error(await admin.post("/api/v1/devices/reset", json=bad), 422)
    srst = await admin.post("/api/v1/devices/reset", json={"server": "srst"})
    assert srst.status_code == 422 and "is no call-control node" in srst.text   # RST-9: a node, not SRST
    assert len(v2.events.published) == 1, "refused requests publish nothing"
    rows = [(r.outcome, r.rule, r.target) for r in await v2.audit_rows() if r.action == "device.reset_many"]
    assert rows[0] == ("ok", "RST-9", "server:callmanager-sub1") and len(rows) == 13
    assert {o for o, _, _ in rows[1:]} == {"refused"}


async def test_one_device_reset_or_restart(v2, tracker):
    await add_devices(v2, (A, "7960", "non-secure"), (B, "7970", "non-secure"))
    await register(v2, NODE, A)
    admin = v2.admin()
    r = await admin.post(f"/api/v1/devices/{A}/reset", json={"kind": "restart"})
    assert r.status_code == 202, r.text
    assert (r.json()["device"], r.json()["registered"], r.json()["targeted"]) == (A, True, 1)
    r = await admin.post(f"/api/v1/devices/{B}/reset", json={})
    assert r.status_code == 202 and r.json()["registered"] is False and r.json()["kind"] == "reset"
    assert device_resets(v2.events) == [([A], "manual", "restart"), ([B], "manual", "reset")]
    assert tracker.resets[r.json()["request_id"]].targeted == set()
    assert_json_error(await admin.post(f"/api/v1/devices/{C}/reset", json={}), 404)
    assert_json_error(await admin.post(f"/api/v1/devices/{A}/reset", json={"kind": "reboot"}), 422)
    assert_json_error(await admin.post("/api/v1/devices/bad%20name/reset", json={}), 422)
    assert len(v2.events.published) == 2
    rows = [(r.action, r.target, r.outcome) for r in await v2.audit_rows() if r.action == "device.reset"]
    assert rows == [("device.reset", A, "ok"), ("device.reset", B, "ok"), ("device.reset", C, "refused"),
                    ("device.reset", A, "refused"), ("device.reset", "bad name", "refused")]


async def test_reset_not_published_is_a_503_and_audited(v2):
    class Down:
        async def publish(self, kind, target, payload):
            raise ConnectionError("bus down")

    v2.app.state.events = Down()
    assert_json_error(await v2.admin().post("/api/v1/devices/reset", json={"all": True}), 503)
    rows = [(r.action, r.outcome, r.target) for r in await v2.audit_rows()]
    assert ("event.publish", "error", "all") in rows and ("device.reset_many", "error", "all") in rows


async def test_rst1_rst2_device_changes_emit_exactly_the_policy_actions(v2):
    """RST-1 / RST-2 through required_actions: one reset per change, none for other fields."""
    async with v2.sessionmaker() as session, session.begin():
        await record_ctl(session, content=b"ctl", sha256="ab" * 32, signer="CN=t", signer_serial="1",
                         records=2, tftp_path="")
        await set_setting(session, SETTING_SECURITY_MODE, "mixed")
    admin = v2.admin()
    assert (await admin.post("/api/v1/devices", json={"name": A, "model": "7970"})).status_code == 201
    assert (await admin.post("/api/v1/pools", json={"name": "P", "cm_group": ["cm1"]})).status_code == 201
    steps = [({"description": "x", "device_pool": "P"}, []),
             ({"security_mode": "encrypted"}, [([A], "RST-1", "reset")]),
             ({"garp": False}, [([A], "RST-2", "reset")]),
             ({"web_access": False, "security_mode": "authenticated"}, [([A], "RST-1,RST-2", "reset")])]
    for change, expected in steps:
        before = len(v2.events.bodies("device.reset"))
        assert (await admin.patch(f"/api/v1/devices/{A}", json=change)).status_code == 200
        assert device_resets(v2.events)[before:] == expected, change
    # The bad case: a refused change (DEV-3 on a 7912) resets nothing.
    await admin.post("/api/v1/devices", json={"name": B, "model": "7912"})
    before = len(v2.events.published)
    assert_json_error(await admin.patch(f"/api/v1/devices/{B}", json={"security_mode": "encrypted"}),
                      422, "DEV-3")
    assert len(v2.events.published) == before
    assert [what for _, what in config_changes(v2.events)] == [
        "created", "updated:description,device_pool", "updated:security_mode", "updated:garp",
        "updated:security_mode,web_access", "created"]


# --- lines ----------------------------------------------------------------------------------------

async def test_lines_are_added_to_existing_devices_and_announced(v2):
    await add_devices(v2, (A, "7960", "non-secure"), (B, "7940", "non-secure"))
    admin = v2.admin()
    r = await admin.post("/api/v1/lines", json={"dn": "1000", "device": A, "label": "main"})
    assert r.status_code == 201 and r.json()["line_index"] == 1
    assert (await admin.post("/api/v1/lines", json={"dn": "1001", "device": A})).json()["line_index"] == 2
    shared = await admin.post("/api/v1/lines", json={"dn": "1000", "device": B, "line_index": 3})
    assert shared.status_code == 201 and shared.json()["line_index"] == 3
    assert_json_error(await admin.post("/api/v1/lines", json={"dn": "1000", "device": A}), 409)
    assert_json_error(await admin.post("/api/v1/lines", json={"dn": "2000", "device": A,
                                                              "line_index": 1}), 409)
    assert_json_error(await admin.post("/api/v1/lines", json={"dn": "2000", "device": C}), 404)
    assert (await admin.post("/api/v1/lines", json={"dn": "3400", "device": B,
                                                    "line_index": 34})).status_code == 201
    assert_json_error(await admin.post("/api/v1/lines", json={"dn": "3500", "device": B}), 409)
    for bad in ({"dn": "12a", "device": A}, {"dn": "", "device": A}, {"dn": "1" * 25, "device": A},
                {"dn": 1000, "device": A}, {"dn": "1", "device": "bad name"}, {"dn": "1"},
                {"dn": "1", "device": A, "line_index": 35}, {"dn": "1", "device": A, "line_index": -1},
                {"dn": "1", "device": A, "label": "l" * 41}, {"dn": "1", "device": A, "x": 1}):
        assert_json_error(await admin.post("/api/v1/lines", json=bad), 422)

    viewer = await v2.token_client("viewer", READONLY_PASSWORD)
    everything = (await viewer.get("/api/v1/lines")).json()["lines"]
    assert [(l["device"], l["line_index"], l["dn"]) for l in everything] == [
        (A, 1, "1000"), (A, 2, "1001"), (B, 3, "1000"), (B, 34, "3400")]
    assert [l["device"] for l in (await viewer.get("/api/v1/lines", params={"dn": "1000"})).json()["lines"]] == [A, B]
    assert len((await viewer.get("/api/v1/lines", params={"device": B})).json()["lines"]) == 2
    assert_json_error(await viewer.get("/api/v1/lines", params={"dn": "abc"}), 422)
    assert config_changes(v2.events) == [([A], "line"), ([A], "line"), ([B], "line"), ([B], "line")]
    assert not v2.events.of_kind("device.reset"), "no RST rule covers lines"
    outcomes = [(r.outcome, r.status) for r in await v2.audit_rows() if r.action == "line.create"]
    assert outcomes.count(("ok", 201)) == 4 and len(outcomes) == 4 + 4 + 10


# --- device pools ---------------------------------------------------------------------------------

async def test_pools_created_listed_and_devices_assigned(v2):
    await add_devices(v2, (A, "7960", "non-secure"))
    admin = v2.admin()
    r = await admin.post("/api/v1/pools", json={"name": "HQ", "cm_group": ["cm1", "10.0.0.2"],
                                                "srst": "srst-hq"})
    assert r.status_code == 201 and r.json() == {"name": "HQ", "cm_group": ["cm1", "10.0.0.2"],
                                                 "srst": "srst-hq"}
    assert_json_error(await admin.post("/api/v1/pools", json={"name": "HQ", "cm_group": ["cm1"]}), 409)
    for bad in ({"name": "X", "cm_group": []}, {"name": "X", "cm_group": ["a", "b", "c", "d"]},
                {"name": "X", "cm_group": ["a", "a"]}, {"name": "X", "cm_group": ["bad host"]},
                {"name": "bad/name", "cm_group": ["a"]}, {"name": "X", "cm_group": "cm1"},
                {"name": "X", "cm_group": ["a"], "srst": "bad srst"}, {"cm_group": ["a"]}):
        assert_json_error(await admin.post("/api/v1/pools", json=bad), 422)
    pools = (await v2.admin().get("/api/v1/pools")).json()["pools"]
    assert [p["name"] for p in pools] == ["HQ"]

    r = await admin.put(f"/api/v1/devices/{A}/pool", json={"pool": "HQ"})
    assert r.status_code == 200 and r.json()["device_pool"] == "HQ" and r.json()["config_version"] == 2
    again = await admin.put(f"/api/v1/devices/{A}/pool", json={"pool": "HQ"})
    assert again.json()["config_version"] == 2, "no change, no new version, no event"
    assert_json_error(await admin.put(f"/api/v1/devices/{A}/pool", json={"pool": "Nowhere"}), 404)
    assert_json_error(await admin.put(f"/api/v1/devices/{C}/pool", json={"pool": "HQ"}), 404)
    assert_json_error(await admin.put(f"/api/v1/devices/{A}/pool", json={}), 422)
    assert_json_error(await admin.put(f"/api/v1/devices/{A}/pool", json={"pool": 1}), 422)
    cleared = await admin.put(f"/api/v1/devices/{A}/pool", json={"pool": None})
    assert cleared.json()["device_pool"] is None
    assert config_changes(v2.events) == [([A], "device_pool"), ([A], "device_pool")]
    assert not v2.events.of_kind("device.reset")
    rows = [(r.action, r.target, r.outcome) for r in await v2.audit_rows() if r.outcome == "ok"]
    assert ("pool.create", "HQ", "ok") in rows and rows.count(("device.set_pool", A, "ok")) == 2


async def test_rst5_changing_a_pools_srst_reference_resets_exactly_its_devices(v2):
    """RST-5 via required_actions(SrstSecurityChanged): the pool's devices, nothing else."""
    await add_devices(v2, (A, "7960", "non-secure"), (B, "7970", "non-secure"), (C, "7940", "non-secure"))
    admin = v2.admin()
    for name in ("HQ", "Branch", "Empty"):
        await admin.post("/api/v1/pools", json={"name": name, "cm_group": ["cm1"], "srst": "srst-old"})
    for device, pool in ((A, "HQ"), (B, "HQ"), (C, "Branch")):
        await admin.put(f"/api/v1/devices/{device}/pool", json={"pool": pool})
    mark = len(v2.events.published)

    r = await admin.patch("/api/v1/pools/HQ", json={"cm_group": ["cm1", "cm2"]})
    assert r.status_code == 200 and r.json()["cm_group"] == ["cm1", "cm2"] and r.json()["devices"] == 2
    assert config_changes(v2.events)[-1] == ([A, B], "device_pool:cm_group")
    assert len(v2.events.published) == mark + 1, "a CallManager group change resets nothing"

    r = await admin.patch("/api/v1/pools/HQ", json={"srst": "srst-new"})
    assert r.status_code == 200 and r.json()["srst"] == "srst-new"
    assert device_resets(v2.events) == [([A, B], "RST-5", "reset")]
    assert config_changes(v2.events)[-1] == ([A, B], "device_pool:srst")
    assert len(v2.events.published) == mark + 3

    assert (await admin.patch("/api/v1/pools/HQ", json={"srst": "srst-new"})).status_code == 200
    assert (await admin.patch("/api/v1/pools/Empty", json={"srst": ""})).json()["srst"] == ""
    assert len(v2.events.published) == mark + 3, "no change / no dependent devices: nothing to reset"
    assert_json_error(await admin.patch("/api/v1/pools/Nope", json={"srst": "x"}), 404)
    for bad in ({}, {"srst": None}, {"cm_group": []}, {"srst": "bad srst"}, {"name": "x"}):
        assert_json_error(await admin.patch("/api/v1/pools/HQ", json=bad), 422)
    assert_json_error(await admin.patch("/api/v1/pools/bad%21name", json={"srst": "x"}), 422)
    row = [r for r in await v2.audit_rows() if r.action == "pool.update" and r.outcome == "ok"][1]
    assert row.target == "HQ" and "srst: 'srst-old' -> 'srst-new'" in row.detail


# --- cluster ---------------------------------------------------------------------------------------

@pytest.fixture
async def v2_ctl(tmp_path, nats_server, tracker):
    """The API with a real CTL Provider on the same data directory (and database): the cluster view
    asks it for the mode and the CTL over mTLS gRPC, as `admin-api` (issue 9 §5)."""
    data = tmp_path / "data"
    host = f"127.{random.randint(20, 250)}.{random.randint(0, 255)}.{random.randint(2, 250)}"
    await ctl_prepare(data)
    provider, task, own_channel, _ = await ctl_start(data, nats_server, host, free_port(host), free_port(host))
    service_identity(data, "callmanager", "callmanager", "127.0.0.1")  # admin-api is issued with it
    admin_api = load_identity(admin_api_identity_dir(service_identity_dir(data, "callmanager")))
    channel = secure_channel(admin_api, host, provider.settings.grpc_port, "ctl-provider")
    try:
        async with v2_stack(data, ctl_channel=lambda: channel, tracker=tracker) as stack:
            stack.ctl_provider, stack.ctl_provider_task = provider, task
            yield stack
    finally:
        await channel.close()
        await own_channel.close()
        if not task.done():
            provider.request_stop()
            await asyncio.wait_for(task, 10)


async def test_cluster_shows_security_mode_ctl_and_device_counts(v2_ctl):
    v2 = v2_ctl
    viewer = await v2.token_client("viewer", READONLY_PASSWORD)
    fresh = (await viewer.get("/api/v1/cluster")).json()
    assert fresh == {"security_mode": "non-secure", "ctl": None, "registered": 0,
                     "devices": {"total": 0, "by_security_mode": {
                         "non-secure": 0, "authenticated": 0, "encrypted": 0}}}
    # What the CTL client's commits leave, written as the owner (ctl-provider) would.
    async with owner_db(f"sqlite:///{v2.data_dir / 'ccmsec.db'}", "ctl-provider") as db, \
            db() as session, session.begin():
        for n in (1, 2):
            await record_ctl(session, content=b"ctl%d" % n, sha256=f"{n:02x}" * 32, signer="CN=t",
                             signer_serial="1", records=3, tftp_path="")
        await set_setting(session, SETTING_SECURITY_MODE, "mixed")
    await add_devices(v2, (A, "7970", "encrypted"), (B, "7960", "authenticated"), (C, "7912", "non-secure"),
                      ("lab1", "7940", "encrypted"))
    await register(v2, NODE, A)
    state = (await viewer.get("/api/v1/cluster")).json()
    assert state["security_mode"] == "mixed"
    assert state["ctl"]["version"] == 2 and state["ctl"]["sha256"] == "02" * 32 and state["ctl"]["records"] == 3
    created = dt.datetime.fromisoformat(state["ctl"]["created_at"])
    assert abs((dt.datetime.now(dt.timezone.utc) - created).total_seconds()) < 120
    assert state["devices"] == {"total": 4, "by_security_mode": {
        "non-secure": 1, "authenticated": 1, "encrypted": 2}}
    assert state["registered"] == 1

    # The bad case: the CTL Provider stops. The view says so (503) rather than show a mode it cannot
    # vouch for; the rest of the API is unaffected.
    v2.ctl_provider.request_stop()
    await asyncio.wait_for(v2.ctl_provider_task, 10)
    down = await viewer.get("/api/v1/cluster")
    assert_json_error(down, 503)
    assert "CTL Provider unreachable" in down.text
    assert (await viewer.get("/api/v1/registrations")).status_code == 200


async def test_cluster_view_without_a_ctl_provider_is_refused_clearly(v2):
    """No CTL Provider address given to the API: 503 naming it, never the table read instead."""
    viewer = await v2.token_client("viewer", READONLY_PASSWORD)
    answer = await viewer.get("/api/v1/cluster")
    assert_json_error(answer, 503)
    assert "no CTL Provider address configured" in answer.text

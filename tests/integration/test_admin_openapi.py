"""The OpenAPI document describes the real administration API (issue 16).

Every answer the API gives in this walk — successes and refusals, over real HTTPS against a real
database — is checked against the published document: the status is declared for that operation,
the body validates against the declared schema (JSON Schema 2020-12, `additionalProperties: false`
on every model, so an undeclared field fails), and every error is `application/problem+json`
(RFC 9457) naming the rule where one refused. Then the cursors: every list pages to the end with
`limit=1`, without gaps or repeats, and a forged cursor is a 422 problem. Finally the Python
client follows the cursors.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import jsonschema
import pytest

from ccmsec.adminclient import AdminApiError, AdminClient, discover
from tests.integration.test_admin_support import READONLY_PASSWORD, cheap_argon2  # noqa: F401
from tests.integration.test_admin_v2_support import (  # noqa: F401  (fixtures)
    NODE,
    migrated_db,
    register,
    tracker,
    v2,
    v2_stack,
)

pytestmark = pytest.mark.timeout(120)

A, B, C = "SEP0000000000A1", "SEP0000000000B2", "SEP0000000000C3"
PROBLEM = "application/problem+json"


class Checked:
    """An httpx client whose every answer is checked against the OpenAPI document."""

    def __init__(self, client: httpx.AsyncClient, spec: dict, seen: set):
        self.client, self.spec, self.seen = client, spec, seen
        self.templates = [(re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$"), p)
                          for p in spec["paths"]]

    def operation(self, method: str, path: str) -> tuple[str, dict]:
        matches = [t for rx, t in self.templates if rx.match(path) and method in self.spec["paths"][t]]
        assert matches, f"{method.upper()} {path} is not in the OpenAPI document"
        literal = [t for t in matches if "{" not in t]  # /devices/reset before /devices/{name}
        template = (literal or sorted(matches, key=lambda t: t.count("{")))[0]
        return template, self.spec["paths"][template][method]

    async def request(self, method: str, url: str, **kwargs) -> httpx.Response:
        response = await self.client.request(method, url, **kwargs)
        template, operation = self.operation(method.lower(), response.request.url.path)
        status = str(response.status_code)
        assert status in operation["responses"], (
            f"{method} {template} answered {status}, not declared: {sorted(operation['responses'])}"
            f"\n{response.text}")
        ctype = response.headers["content-type"].split(";")[0]
        content = operation["responses"][status]["content"]
        assert ctype in content, (method, template, status, ctype, list(content))
        if response.status_code >= 400:
            assert ctype == PROBLEM
        schema = {**content[ctype]["schema"], "components": self.spec["components"]}
        jsonschema.Draft202012Validator(schema).validate(response.json())
        self.seen.add((method.upper(), template, response.status_code))
        return response

    def __getattr__(self, method: str):
        return lambda url, **kwargs: self.request(method.upper(), url, **kwargs)


@pytest.fixture
async def api(v2):
    spec = (await v2.client().get("/api/v1/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    seen: set = set()
    admin = Checked(v2.admin(), spec, seen)
    viewer = Checked(await v2.token_client("viewer", READONLY_PASSWORD), spec, seen)
    anonymous = Checked(v2.client(), spec, seen)
    return v2, spec, admin, viewer, anonymous, seen


def test_every_error_is_a_declared_problem(api):
    _, spec, *_ = api
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            codes = {int(c) for c in operation["responses"]}
            assert 500 in codes and any(200 <= c < 300 for c in codes), (method, path)
            if path not in ("/api/v1/login", "/api/v1/openapi.json"):
                assert {401, 429} <= codes, (method, path)
            for code, answer in operation["responses"].items():
                (ctype,) = answer["content"]
                if int(code) >= 400:
                    assert ctype == PROBLEM and answer["content"][ctype]["schema"] == {
                        "$ref": "#/components/schemas/Problem"}
                elif ctype == "text/event-stream":  # /api/v1/calls/events
                    assert "Server-Sent Events" in answer["description"]
                else:  # a typed model, not a bare object
                    assert "$ref" in answer["content"][ctype]["schema"], (method, path, code)
            if method in ("post", "put", "patch") and "requestBody" in operation:
                (body,) = operation["requestBody"]["content"].values()  # typed request models too
                schema = body["schema"]
                schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema else schema
                assert schema["title"] and schema["properties"], (method, path)
                assert schema["additionalProperties"] is False, (method, path)


def test_every_list_declares_cursor_paging(api):
    """Every list (a GET on a collection answering an array of rows) takes `limit` and `cursor`
    and answers `next_cursor` — checked on the document, so a list added without them fails."""
    _, spec, *_ = api
    schemas = spec["components"]["schemas"]
    lists = []
    for path, operations in spec["paths"].items():
        operation = operations.get("get")
        if operation is None or "{" in path:
            continue
        ref = operation["responses"]["200"]["content"].get("application/json", {}).get("schema", {})
        model = schemas[ref["$ref"].rsplit("/", 1)[-1]] if "$ref" in ref else {}
        rows = [k for k, v in model.get("properties", {}).items() if v.get("type") == "array"]
        if not rows:
            continue
        lists.append(path)
        params = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
        assert {"limit", "cursor"} <= params, (path, sorted(params))
        assert "next_cursor" in model["properties"], path
    assert {"/api/v1/devices", "/api/v1/softkey-sets", "/api/v1/audit", "/api/v1/calls"} <= set(lists)


async def test_real_answers_match_the_document(api):
    stack, _, admin, viewer, anonymous, seen = api
    # accounts, login
    login = await anonymous.post("/api/v1/login", json={"username": "admin", "password": stack.admin_password})
    assert login.status_code == 200
    await anonymous.post("/api/v1/login", json={"username": "admin", "password": "wrong-password-1"})
    await anonymous.get("/api/v1/whoami")
    await viewer.get("/api/v1/whoami")
    await admin.get("/api/v1/accounts")
    await admin.post("/api/v1/accounts", json={"username": "ops", "password": "x" * 16, "role": "readonly"})
    assert (await admin.post("/api/v1/accounts", json={"username": "ops", "password": "x" * 16,
                                                       "role": "readonly"})).status_code == 409
    assert (await viewer.get("/api/v1/accounts")).status_code == 403
    # devices: created, refused by rules (DEV-3, MODE-5), duplicate, shown, changed, deleted
    for name, model in ((A, "7960"), (B, "7912"), (C, "7940")):
        assert (await admin.post("/api/v1/devices", json={"name": name, "model": model})).status_code == 201
    dev3 = await admin.patch(f"/api/v1/devices/{B}", json={"web_access": False})
    assert dev3.status_code == 422 and dev3.json()["rule"] == "DEV-3"
    assert dev3.json()["type"] == "urn:ccmsec:rule:DEV-3"
    mode5 = await admin.patch(f"/api/v1/devices/{A}", json={"security_mode": "encrypted"})
    assert mode5.status_code == 409 and mode5.json()["rule"] == "MODE-5"
    assert (await admin.post("/api/v1/devices", json={"name": A, "model": "7960"})).status_code == 409
    assert (await viewer.post("/api/v1/devices", json={"name": "x", "model": "7960"})).status_code == 403
    await admin.post("/api/v1/devices", content=b"name=x", headers={"content-type": "text/plain"})
    await admin.post("/api/v1/devices", content=b"{" * 70_000, headers={"content-type": "application/json"})
    await admin.get("/api/v1/devices")
    await viewer.get(f"/api/v1/devices/{A}")
    assert (await viewer.get("/api/v1/devices/SEP00000000DEAD")).status_code == 404
    await viewer.get("/api/v1/devices/bad name")
    await admin.patch(f"/api/v1/devices/{A}", json={"description": "lobby"})
    # pools, lines
    await admin.post("/api/v1/pools", json={"name": "HQ", "cm_group": ["cm1"]})
    await admin.post("/api/v1/pools", json={"name": "HQ", "cm_group": ["cm1"]})
    await admin.put(f"/api/v1/devices/{A}/pool", json={"pool": "HQ"})
    await admin.put(f"/api/v1/devices/{A}/pool", json={"pool": "NOPE"})
    await admin.patch("/api/v1/pools/HQ", json={"cm_group": ["cm1", "cm2"]})
    await admin.patch("/api/v1/pools/NOPE", json={"srst": ""})
    await viewer.get("/api/v1/pools")
    await admin.post("/api/v1/lines", json={"dn": "1000", "device": A})
    await admin.post("/api/v1/lines", json={"dn": "1000", "device": A, "line_index": 1})
    await admin.post("/api/v1/lines", json={"dn": "1001", "device": "SEP00000000DEAD"})
    await viewer.get("/api/v1/lines", params={"device": A})
    # SRST references
    await admin.post("/api/v1/srst", json={"name": "branch", "host": "127.0.0.1"})
    await admin.post("/api/v1/srst", json={"name": "branch", "host": "127.0.0.1"})
    await viewer.get("/api/v1/srst")
    await viewer.get("/api/v1/srst/branch")
    await viewer.get("/api/v1/srst/nope")
    await admin.patch("/api/v1/pools/HQ", json={"srst": "branch"})
    assert (await admin.delete("/api/v1/srst/branch")).status_code == 409  # a pool uses it
    await admin.patch("/api/v1/pools/HQ", json={"srst": ""})
    await admin.delete("/api/v1/srst/branch")
    # registrations, resets, cluster, CAPF (no CAPF here: 503), audit
    await register(stack, NODE, A, C)
    await viewer.get("/api/v1/registrations")
    reset = await admin.post(f"/api/v1/devices/{A}/reset", json={"kind": "restart"})
    assert reset.status_code == 202
    await viewer.get(f"/api/v1/resets/{reset.json()['request_id']}")
    await viewer.get(f"/api/v1/resets/{'0' * 32}")
    await admin.post("/api/v1/devices/reset", json={"all": True})
    await admin.post("/api/v1/devices/reset", json={"all": True, "server": NODE})
    await viewer.get("/api/v1/cluster")
    assert (await viewer.get("/api/v1/capf/operations")).status_code == 503
    assert (await viewer.get("/api/v1/calls")).status_code == 503  # no call control in this stack
    await admin.post("/api/v1/capf/activation", json={"active": True})
    await admin.get("/api/v1/audit", params={"limit": 5})
    assert (await viewer.get("/api/v1/audit")).status_code == 403
    await admin.delete(f"/api/v1/devices/{C}")
    await admin.delete(f"/api/v1/devices/{C}")
    await admin.post("/api/v1/logout")
    statuses = {status for *_, status in seen}
    assert {200, 201, 202, 401, 403, 404, 409, 413, 415, 422, 503} <= statuses
    assert len({(m, t) for m, t, _ in seen}) >= 28  # most operations were exercised


async def _walk(client: Checked, path: str, key: str, params: dict | None = None) -> list:
    rows, cursor, pages = [], None, 0
    while True:
        answer = (await client.get(path, params={**(params or {}), "limit": 1,
                                                 **({"cursor": cursor} if cursor else {})})).json()
        rows += answer[key]
        pages += 1
        cursor = answer["next_cursor"]
        if cursor is None:
            return rows
        assert pages < 50


async def test_every_list_pages_with_cursors(api):
    stack, _, admin, viewer, _, _ = api
    for name in (C, A, B):
        await admin.post("/api/v1/devices", json={"name": name, "model": "7960"})
    for pool in ("P2", "P1", "P3"):
        await admin.post("/api/v1/pools", json={"name": pool, "cm_group": ["cm1"]})
    for ref in ("s2", "s1"):
        await admin.post("/api/v1/srst", json={"name": ref, "host": "127.0.0.1"})
    for dn, device in (("2000", B), ("1000", A), ("1001", A)):
        await admin.post("/api/v1/lines", json={"dn": dn, "device": device})
    await register(stack, NODE, B, A)
    expected = {
        "/api/v1/devices": ("devices", "name", [A, B, C]),
        "/api/v1/pools": ("pools", "name", ["P1", "P2", "P3"]),
        "/api/v1/srst": ("references", "name", ["s1", "s2"]),
        "/api/v1/lines": ("lines", "dn", ["1000", "1001", "2000"]),
        "/api/v1/registrations": ("registrations", "device", [A, B]),
        "/api/v1/accounts": ("accounts", "username", ["admin", "viewer"]),
        "/api/v1/softkey-sets": ("softkey_sets", "name", ["basic", "no-barge", "standard"]),
    }
    for path, (key, field, values) in expected.items():
        rows = await _walk(admin, path, key)
        assert [r[field] for r in rows] == values, path
        whole = (await admin.get(path)).json()
        assert whole["next_cursor"] is None and whole[key] == rows
    audit = await _walk(admin, "/api/v1/audit", "entries")
    ids = [e["id"] for e in audit]
    assert ids == sorted(ids, reverse=True) and len(ids) == len(set(ids)) >= 11
    assert audit == (await admin.get("/api/v1/audit", params={"limit": 1000})).json()["entries"][-len(audit):]
    # A page boundary does not skip a device added behind the cursor's position.
    first = (await admin.get("/api/v1/devices", params={"limit": 1})).json()
    await admin.post("/api/v1/devices", json={"name": "SEP0000000000B9", "model": "7960"})
    rest = (await admin.get("/api/v1/devices", params={"cursor": first["next_cursor"]})).json()
    assert [d["name"] for d in rest["devices"]] == [B, "SEP0000000000B9", C]
    # Forged and foreign cursors are refused as problems.
    for bad in ("%%%", "bm90IGpzb24", "WzEsMl0", "WzFd"):  # junk, 'not json', [1,2], [1] on a str list
        r = await viewer.get("/api/v1/devices", params={"cursor": bad})
        assert r.status_code == 422 and "cursor" in r.json()["detail"]
    r = await admin.get("/api/v1/audit", params={"cursor": first["next_cursor"]})  # a name, not an id
    assert r.status_code == 422


async def test_the_python_client_follows_cursors_and_reads_problems(v2):
    v2.write_endpoints()
    for name in (A, B, C):
        r = await v2.admin().post("/api/v1/devices", json={"name": name, "model": "7960"})
        assert r.status_code == 201

    def session():
        with AdminClient(discover(v2.data_dir), page_size=1) as client:
            names = [d["name"] for d in client.list_devices()]
            sets = [s["name"] for s in client.softkey_sets()]
            try:
                client.update_device(A, security_mode="encrypted")
            except AdminApiError as exc:
                return names, sets, exc
        return names, sets, None

    names, sets, refused = await asyncio.to_thread(session)
    assert names == [A, B, C] and sets == ["basic", "no-barge", "standard"]
    assert refused is not None and refused.status == 409 and refused.rule == "MODE-5"
    assert "MODE-5" in str(refused)


async def test_rst9_a_reset_on_a_node_the_cluster_does_not_run_is_a_declared_404(tmp_path, migrated_db, tracker):
    """RST-9: with the cluster's call-control nodes known (CCMSEC_CLUSTER_CALL_CONTROL_NODES), a
    reset on a server it does not run is a 404 problem — an answer the document did not declare for
    POST /api/v1/devices/reset (only 503 beside the common ones), so a client generated from it had
    no 404 there. Now declared; a malformed server (srst) stays a declared 422."""
    async with v2_stack(tmp_path / "data", template=migrated_db, tracker=tracker,
                        call_control_nodes=frozenset({"callmanager", "callmanager-sub1"})) as stack:
        spec = (await stack.client().get("/api/v1/openapi.json")).json()
        admin = Checked(stack.admin(), spec, set())
        refused = await admin.post("/api/v1/devices/reset", json={"server": "callmanager-sub3"})
        assert refused.status_code == 404, refused.text
        assert (await admin.post("/api/v1/devices/reset", json={"server": "srst"})).status_code == 422

"""The administration API's access log (issue 16), over real HTTPS: one JSON record per request
with method, path, route template, status, duration, bytes, client and trace id — never a password,
a token or the query string; the client's X-Request-Id is used when sane and sent back, a malformed
one is replaced; requests are counted by route template (`unmatched` for unknown paths)."""

from __future__ import annotations

import json
import logging
import re

from ccmsec.runtime.logs import JsonFormatter
from ccmsec.runtime.metrics import REGISTRY
from tests.integration.test_admin_support import cheap_argon2  # noqa: F401  (fixture)
from tests.integration.test_admin_v2_support import migrated_db, tracker, v2  # noqa: F401

SECRET_QUERY = "s3cret-in-the-query"


class Lines(logging.Handler):
    """Formats at emit time, in the request's context, as the service's log does."""

    def __init__(self):
        super().__init__()
        self.setFormatter(JsonFormatter("callmanager", "callmanager"))
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


async def test_access_log_records_each_request_without_secrets(v2):
    handler = Lines()
    logger = logging.getLogger("ccmsec.admin.access")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    unmatched = lambda: REGISTRY.get_sample_value(  # noqa: E731
        "ccmsec_admin_api_requests_total", {"method": "GET", "route": "unmatched", "status": "404"}) or 0
    before = unmatched()
    try:
        anonymous, admin = v2.client(), v2.admin()
        login = await anonymous.post("/api/v1/login", json={"username": "admin", "password": v2.admin_password},
                                     headers={"X-Request-Id": "ops-login-1"})
        assert login.status_code == 200 and login.headers["x-request-id"] == "ops-login-1"
        token = login.json()["token"]
        listed = await anonymous.get("/api/v1/devices", params={"limit": 5, "note": SECRET_QUERY},
                                     headers={"Authorization": f"Bearer {token}", "X-Request-Id": "ops-list-2"})
        assert listed.status_code == 200, listed.text
        bad = await admin.get("/api/v1/devices/SEP00000000DEAD", headers={"X-Request-Id": "bad id {x}"})
        assert bad.status_code == 404 and re.fullmatch(r"[0-9a-f]{32}", bad.headers["x-request-id"])
        nowhere = await admin.get("/api/v1/nowhere")
        assert nowhere.status_code == 404
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)

    records = [json.loads(line) for line in handler.lines]
    assert len(records) == 4
    by_trace = {r["trace_id"]: r for r in records}
    login_rec, list_rec = by_trace["ops-login-1"], by_trace["ops-list-2"]
    assert (login_rec["method"], login_rec["route"], login_rec["status"]) == ("POST", "/api/v1/login", 200)
    assert list_rec["path"] == "/api/v1/devices" and list_rec["route"] == "/api/v1/devices"
    assert list_rec["status"] == 200 and list_rec["bytes"] == len(listed.content)
    assert isinstance(list_rec["duration_ms"], float) and list_rec["client"].startswith("127.0.0.1:")
    missing = by_trace[bad.headers["x-request-id"]]  # the malformed id was replaced, not logged
    assert missing["route"] == "/api/v1/devices/{name}" and missing["status"] == 404
    assert records[-1]["route"] == "unmatched" and records[-1]["path"] == "/api/v1/nowhere"
    assert all(r["logger"] == "ccmsec.admin.access" and r["level"] == "info" for r in records)
    text = "\n".join(handler.lines)
    for secret in (v2.admin_password, token, SECRET_QUERY, "bad id"):
        assert secret not in text
    assert unmatched() == before + 1

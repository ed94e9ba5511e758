"""ccmsec.adminclient's round-two methods against the real API over HTTPS (the sync client runs in
a thread: the server shares this event loop)."""

from __future__ import annotations

import asyncio

import pytest

from ccmsec.adminclient import AdminApiError, AdminClient, discover
from tests.integration.test_admin_support import cheap_argon2  # noqa: F401  (fixture)
from tests.integration.test_admin_v2_support import (  # noqa: F401  (fixtures)
    NODE,
    add_devices,
    migrated_db,
    register,
    tracker,
    v2,
)
from tests.integration.test_admin_v2_endpoints import v2_ctl  # noqa: F401  (fixture: a real CTL Provider)

pytestmark = pytest.mark.timeout(60)

A, B = "SEP0000000000A1", "SEP0000000000B2"


async def test_client_covers_registry_resets_lines_pools_cluster_and_capf(v2_ctl):
    v2 = v2_ctl  # the cluster view asks the CTL Provider, its owner (issue 9 §5)
    v2.write_endpoints()
    await add_devices(v2, (A, "7960", "non-secure"), (B, "7912", "non-secure"))
    await register(v2, NODE, A)

    def session():
        # This stack's API certificate is its own (the data directory's cluster CA is the provider's).
        with AdminClient(discover(v2.data_dir, cafile=v2.certfile)) as client:
            out = {"registrations": client.registrations(), "one": client.registrations(device=B)}
            started = client.reset_all()
            out["progress"] = client.reset_progress(started["request_id"])
            out["server"] = client.reset_server("callmanager", kind="restart")  # RST-9: a call-control node name
            out["device"] = client.reset_device(B)
            out["line"] = client.add_line("1000", A, label="main")
            out["lines"] = client.lines(device=A)
            out["pool"] = client.add_pool("HQ", ["cm1"], srst="srst1")
            out["assigned"] = client.set_device_pool(A, "HQ")
            out["updated"] = client.update_pool("HQ", srst="srst2")
            out["pools"] = client.pools()
            out["cluster"] = client.cluster()
            for name, call in (("no_capf", lambda: client.capf_operations()),
                               ("bad_line", lambda: client.add_line("x", A)),
                               ("no_device", lambda: client.set_device_pool("SEP0000000000FF", "HQ"))):
                try:
                    call()
                except AdminApiError as exc:
                    out[name] = exc
            return out

    out = await asyncio.to_thread(session)
    assert [r["device"] for r in out["registrations"]] == [A] and out["one"] == []
    assert out["progress"]["targeted"] == 1 and out["progress"]["not_back"] == [A]
    assert (out["server"]["rule"], out["server"]["kind"]) == ("RST-9", "restart")
    assert out["device"]["registered"] is False
    assert out["line"]["line_index"] == 1 and len(out["lines"]) == 1
    assert out["assigned"]["device_pool"] == "HQ"
    assert out["updated"]["srst"] == "srst2" and out["updated"]["devices"] == 1
    assert out["pools"] == [{"name": "HQ", "cm_group": ["cm1"], "srst": "srst2"}]
    assert out["cluster"]["devices"]["total"] == 2 and out["cluster"]["registered"] == 1
    assert out["no_capf"].status == 503 and "CAPF service unreachable" in str(out["no_capf"])
    assert out["bad_line"].status == 422 and out["no_device"].status == 404
    rules = [b.rule for b in v2.events.bodies("device.reset")]
    assert rules == ["CHK-13", "RST-9", "manual", "RST-5"]

"""The round-two administration API inside the running callmanager: the mount's CAPF channel
(mTLS gRPC to the capf service), its reset tracker (the call-control registry) and the bus.
Independent of the cluster mode and CAPF activation other tests leave behind."""

from __future__ import annotations

import time

import pytest

from ccmsec.adminclient import AdminApiError, AdminClient, discover

pytestmark = pytest.mark.timeout(120)

DEVICE = "ADMV2E2E1"


def test_admin_api_reaches_capf_tracks_resets_and_manages_lines_and_pools(cluster):
    with AdminClient(discover(cluster["data"])) as admin:
        state = admin.cluster()
        assert state["security_mode"] in ("non-secure", "mixed")
        admin.add_device(DEVICE, "7960")

        # CAPF through the mount's peer channel: an answer from CAPF itself, never 503.
        assert isinstance(admin.capf_operations(), list)
        assert isinstance(admin.capf_log(), list)
        try:
            op = admin.capf_schedule(DEVICE, "install", "null", key_type="ec256")
            assert op["state"] == "pending" and op["device"] == DEVICE
        except AdminApiError as exc:
            assert (exc.status, exc.rule) == (409, "CHK-2"), exc  # CAPF not activated here
        try:
            admin.capf_schedule("ADMV2NONE", "install", "null")
            pytest.fail("an unknown device was scheduled")
        except AdminApiError as exc:
            assert exc.status in (404, 409), exc

        # A reset of an unregistered phone: published, tracked on this node, complete at once.
        started = admin.reset_device(DEVICE)
        assert started["registered"] is False
        progress = admin.reset_progress(started["request_id"])
        assert progress["targeted"] == 0 and progress["complete"] is True

        line = admin.add_line("7001", DEVICE)
        assert line["line_index"] == 1 and line.pop("delivery") == "sent"   # its reset went out (outbox)
        assert admin.lines(device=DEVICE) == [line]
        admin.add_pool("ADMV2POOL", ["callmanager"], srst="srst")
        assert admin.set_device_pool(DEVICE, "ADMV2POOL")["device_pool"] == "ADMV2POOL"
        assert admin.update_pool("ADMV2POOL", srst="srst2")["devices"] == 1  # RST-5 event
        assert any(p["name"] == "ADMV2POOL" for p in admin.pools())

        deadline = time.monotonic() + 10
        while True:
            audit = admin.audit(limit=50)
            actions = {e["action"] for e in audit if e["target"] in (DEVICE, "ADMV2POOL")}
            if {"device.reset", "line.create", "device.set_pool", "pool.update"} <= actions:
                break
            assert time.monotonic() < deadline, actions
            time.sleep(0.2)
        assert not [e for e in audit if e["action"] == "event.publish"], "every event reached the bus"
        admin.remove_device(DEVICE)

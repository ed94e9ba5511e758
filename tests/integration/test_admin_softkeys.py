"""Softkey sets through the HTTPS administration API (issue 10): list the sets, assign one to a
device and to a device pool, remove it; each change audited and announced with config.changed
for the devices concerned. Bad cases: unknown set, unknown device / pool, a read-only account,
a body that is not the schema — clear 4xx problem answers, nothing written."""

from __future__ import annotations

from ccmsec.calls.setup import SOFTKEY_LABELS, keys_of
from ccmsec.wire.sccp_calls import SoftKey
from tests.integration.test_admin_support import (  # noqa: F401  (fixtures)
    assert_json_error,
    config_changes,
    stack,
)

SEP, OTHER = "SEP0011223344A1", "SEP0011223344A2"


async def _with_call_tables(stack) -> None:
    """The stack creates only the admin API's own tables; add the pools' and softkey sets'."""
    import ccmsec.db.calls  # noqa: F401  (maps the tables)
    import ccmsec.db.lines  # noqa: F401
    from ccmsec.db.base import Base

    tables = [Base.metadata.tables[t] for t in ("device_pools", "device_softkeys", "pool_softkeys")]
    async with stack.sessionmaker() as session:
        conn = await session.connection()
        await conn.run_sync(lambda c: Base.metadata.create_all(c, tables=tables))
        await session.commit()


async def test_softkey_sets_per_device_and_per_pool_through_the_api(stack):
    await _with_call_tables(stack)
    admin = stack.admin()
    listed = (await admin.get("/api/v1/softkey-sets")).json()["softkey_sets"]
    assert {row["name"] for row in listed} == {"standard", "basic", "no-barge"}
    basic = next(row for row in listed if row["name"] == "basic")
    assert basic["softkeys"] == [SOFTKEY_LABELS[k] for k in keys_of("basic")] and SOFTKEY_LABELS[SoftKey.TRANSFER] not in basic["softkeys"]
    assert (await admin.post("/api/v1/pools", json={"name": "lobby", "cm_group": ["cm1"]})).status_code == 201
    for name in (SEP, OTHER):
        r = await admin.post("/api/v1/devices", json={"name": name, "model": "7970", "device_pool": "lobby"})
        assert r.status_code == 201, r.text
    before = len(stack.events.published)

    r = await admin.put(f"/api/v1/devices/{SEP}/softkeys", json={"softkey_set": "basic"})
    assert r.status_code == 200, r.text
    assert r.json() == {"device": SEP, "softkey_set": "basic", "devices": [SEP]}
    r = await admin.put("/api/v1/pools/lobby/softkeys", json={"softkey_set": "no-barge"})
    assert r.status_code == 200 and sorted(r.json()["devices"]) == [SEP, OTHER], r.text
    r = await admin.put(f"/api/v1/devices/{SEP}/softkeys", json={"softkey_set": ""})
    assert r.status_code == 200 and r.json()["softkey_set"] == ""

    # bad cases: nothing written, nothing announced
    assert_json_error(await admin.put(f"/api/v1/devices/{SEP}/softkeys", json={"softkey_set": "gold"}), 422)
    assert_json_error(await admin.put("/api/v1/devices/SEP0011223344FF/softkeys",
                                      json={"softkey_set": "basic"}), 404)
    assert_json_error(await admin.put("/api/v1/pools/nowhere/softkeys", json={"softkey_set": "basic"}), 404)
    assert_json_error(await admin.put(f"/api/v1/devices/{SEP}/softkeys", json={"set": "basic"}), 422)
    changes = config_changes(stack.events)[-3:]
    assert changes == [([SEP], "softkeys"), (sorted([SEP, OTHER]), "softkeys"), ([SEP], "softkeys")]
    assert len(stack.events.published) - before == 3
    ok = [(r.action, r.target) for r in await stack.audit_rows() if r.outcome == "ok"]
    assert ok[-3:] == [("softkey_set.set", SEP), ("softkey_set.set", "lobby"), ("softkey_set.set", SEP)]

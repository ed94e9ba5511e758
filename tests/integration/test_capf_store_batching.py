"""SqlCapfStore's grouped lookups and group commit (the enrolment hot path) on real SQLite."""

from __future__ import annotations

import asyncio

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from ccmsec.db.base import Base
from ccmsec.db.capf import SqlCapfStore, schedule_operation
from ccmsec.wire.capf import AuthCheck

DEVICE = "SEP001122334455"


@pytest.fixture
async def factory(tmp_path):
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'ccmsec.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield async_sessionmaker(engine, expire_on_commit=False)
    await engine.dispose()


async def test_concurrent_lookups_answered_together_each_get_their_own_operation(factory):
    """The grouped lookup (one SELECT … IN for the sessions that queued up) answers every device
    as a lone lookup would: newest active operation, 'none', 'unknown', 'locked'."""
    async def exists(device):
        return device == "SEP00000000AAAA"
    store = SqlCapfStore(factory, device_exists=exists, max_failures=1)
    installs = {f"SEP0000000000{i:02X}": await schedule_operation(factory, f"SEP0000000000{i:02X}", "install")
                for i in range(20)}
    superseded = await schedule_operation(factory, DEVICE, "install")
    newest = await schedule_operation(factory, DEVICE, "delete")
    done = await schedule_operation(factory, "SEP00000000DDDD", "delete")
    await store.mark_done(done, "deleted")
    locked = await schedule_operation(factory, "SEP00000000EEEE", "install", auth_mode="mic")
    assert await store.record_auth_failure(locked, "bad MIC") is AuthCheck.LOCKED
    names = [*installs, DEVICE, "SEP00000000DDDD", "SEP00000000EEEE", "SEP00000000AAAA", "SEP00000000FFFF"]
    looks = dict(zip(names, await asyncio.gather(*(store.find_operation(n) for n in names))))
    assert all(looks[d].operation.op_id == op for d, op in installs.items())
    assert looks[DEVICE].operation.op_id == newest != superseded
    assert looks[DEVICE].operation.operation == "delete"
    assert looks["SEP00000000DDDD"].kind == "none"       # only a finished operation
    assert looks["SEP00000000EEEE"].kind == "locked"
    assert looks["SEP00000000AAAA"].kind == "none"       # known device, nothing scheduled
    assert looks["SEP00000000FFFF"].kind == "unknown"


async def test_mark_done_of_a_missing_operation_fails_alone_in_its_batch(factory):
    """Group commit: a refused write changes nothing and does not take its batch down."""
    store = SqlCapfStore(factory)
    op = await schedule_operation(factory, DEVICE, "delete")
    results = await asyncio.gather(store.mark_done(op, "deleted"), store.mark_done(10_000, "deleted"),
                                   return_exceptions=True)
    assert results[0] is None
    assert isinstance(results[1], ValueError) and "no CAPF operation 10000" in str(results[1])
    assert (await store.operation(op)).state == "done"
    assert [r.outcome for r in await store.certificates(DEVICE)] == ["deleted"]


async def _hot_path_rows(tmp_path, name: str, *, core: bool) -> dict[str, list[tuple]]:
    """The hot path's writes (issuance, a racing issuance, installed, fetched, deleted, refusals)
    on a fresh database, through the DB-API cursor (SQLite file) or through SQLAlchemy Core (the
    path PostgreSQL takes); the rows they leave, as SQLite stores them."""
    import datetime as dt
    import sqlite3

    from ccmsec.pki.ca import create_ca, issue, name as subject, new_key

    path = tmp_path / f"{name}.db"
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    factory = async_sessionmaker(engine, expire_on_commit=False)
    clock = lambda: dt.datetime(2026, 12, 1, 10, 30, 15, 123456, tzinfo=dt.timezone.utc)  # noqa: E731
    store = SqlCapfStore(factory, clock=clock)
    if core:
        store.close()
        store._sync_engine = None  # as on PostgreSQL: the round's statements through Core
    ca = create_ca(subject("CAPF test"), key=new_key("ec256"))
    ders = [issue(ca, subject(f"SEP00000000000{i}"), new_key("ec256").public_key(), days=30).public_bytes(
        serialization.Encoding.DER) for i in range(4)]
    install = await schedule_operation(factory, "SEP000000000000", "install", key_type="ec256")
    fetch = await schedule_operation(factory, "SEP000000000001", "troubleshoot")
    delete = await schedule_operation(factory, "SEP000000000002", "delete")
    tied = await asyncio.gather(store.record_issued(install, "SEP000000000000", ders[0]),
                                store.record_issued(install, "SEP000000000000", ders[1]))
    assert tied[0] == tied[1] == ders[0]  # one certificate tied to the operation, the other refused
    await store.mark_done(install, "installed", ders[0])
    await store.mark_done(fetch, "fetched", ders[2])
    await store.mark_done(delete, "deleted", ders[3])
    refused = await asyncio.gather(store.record_issued(install, "SEP000000000000", ders[1]),
                                   store.mark_done(10_000, "installed"), return_exceptions=True)
    assert refused[0] == ders[0] and isinstance(refused[1], ValueError)
    assert [r.outcome for r in await store.certificates()] == ["installed", "fetched", "deleted"]
    store.close()
    await engine.dispose()
    with sqlite3.connect(path) as db:
        return {
            "operations": db.execute("SELECT id, device_name, operation, state, failed_attempts, reason, "
                                     "issued_fingerprint, updated_at FROM capf_operations ORDER BY id").fetchall(),
            "certificates": db.execute("SELECT * FROM capf_certificates ORDER BY id").fetchall(),
        }


async def test_db_api_hot_path_writes_exactly_what_the_core_statements_write(tmp_path):
    """On SQLite the hot path's writes run on the DB-API cursor (their SQL beside the Core
    statements in ccmsec/db/capf.py): same rows, same stored values (timestamps in SQLAlchemy's
    format, so the ORM reads them back), same refusals as the Core statements PostgreSQL runs."""
    raw = await _hot_path_rows(tmp_path, "raw", core=False)
    core = await _hot_path_rows(tmp_path, "core", core=True)
    assert len(raw["certificates"]) == 3 and raw["operations"][0][3] == "done"
    # the issued certificates' serials and fingerprints differ per run (fresh keys): compare the rest
    strip = lambda rows: [tuple(v for i, v in enumerate(r) if i not in (3, 4, 8)) for r in rows]  # noqa: E731
    assert strip(raw["certificates"]) == strip(core["certificates"])
    assert [r[:6] + r[7:] for r in raw["operations"]] == [r[:6] + r[7:] for r in core["operations"]]
    assert raw["operations"][0][7] == "2026-12-01 10:30:15.123456"


def test_the_db_api_statements_pass_the_owners_write_guard_and_others_are_refused():
    """The raw SQL goes through `check_write` like SQLAlchemy's: capf may run it, no other role."""
    from ccmsec.db.capf import _SQLITE_WRITES
    from ccmsec.db.ownership import CrossOwnerWrite, check_write

    for sql in _SQLITE_WRITES.values():
        check_write("capf", sql)
    refused = [sql for sql in _SQLITE_WRITES.values() if sql.lstrip().upper().startswith(("UPDATE", "INSERT"))]
    assert len(refused) == 4
    for sql in refused:
        with pytest.raises(CrossOwnerWrite):
            check_write("callmanager", sql)

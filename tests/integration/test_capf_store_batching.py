"""SqlCapfStore's grouped lookups and group commit (the enrolment hot path) on real SQLite."""

from __future__ import annotations

import asyncio

import pytest
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

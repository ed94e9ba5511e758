"""SqlCapfStore and the capf_0001 migration on real SQLite files."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations
from cryptography.hazmat.primitives import serialization
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

import ccmsec.db.capf as capf_db
from ccmsec.db.base import Base
from ccmsec.db.capf import CapfOperation, SqlCapfStore, schedule_operation
from ccmsec.pki.ca import create_ca, issue, name, new_key
from ccmsec.wire.capf import AuthCheck

DEVICE = "SEP001122334455"
VERSIONS = Path(capf_db.__file__).parent / "migrations" / "versions"
MIGRATION = VERSIONS / "capf_0001_tables.py"
MIGRATION_2 = VERSIONS / "capf_0002_offline_ca.py"  # offline CA columns and states


@pytest.fixture
async def factory(tmp_path):
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'ccmsec.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield async_sessionmaker(engine, expire_on_commit=False)
    await engine.dispose()


def _load_migration(path=MIGRATION):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_migration_capf_0001_creates_exactly_the_model_tables(tmp_path):
    mig, mig2 = _load_migration(), _load_migration(MIGRATION_2)
    assert (mig.revision, mig.down_revision, mig.branch_labels) == ("capf_0001", None, ("capf",))
    assert (mig2.revision, mig2.down_revision) == ("capf_0002", "capf_0001")
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    ours = sa.MetaData(naming_convention=Base.metadata.naming_convention)
    for table in (CapfOperation.__table__, capf_db.CapfCertificate.__table__):
        table.to_metadata(ours)
    with engine.begin() as conn:
        ctx = MigrationContext.configure(conn)
        with Operations.context(ctx):
            mig.upgrade()
        with Operations.context(MigrationContext.configure(conn)):
            mig2.upgrade()
        assert set(sa.inspect(conn).get_table_names()) == {"capf_operations", "capf_certificates"}
        assert compare_metadata(MigrationContext.configure(conn), ours) == []
        with Operations.context(MigrationContext.configure(conn)):
            mig2.downgrade()
        with Operations.context(MigrationContext.configure(conn)):
            mig.downgrade()
        assert sa.inspect(conn).get_table_names() == []


async def test_auth_string_is_stored_as_a_hash_never_the_digits(factory):
    op = await schedule_operation(factory, DEVICE, "install", auth_mode="string", auth_string="1234567")
    async with factory() as s:
        row = await s.get(CapfOperation, op)
    assert "1234567" not in row.auth_string_hash and row.auth_string_hash.startswith("$argon2")
    store = SqlCapfStore(factory)
    assert await store.check_auth_string(op, "1234567") is AuthCheck.OK
    assert (await store.operation(op)).state == "in_progress"


@pytest.mark.parametrize("kwargs, message", [
    (dict(operation="reboot"), "unknown CAPF operation"),
    (dict(operation="install", auth_mode="pin"), "unknown CAPF auth mode"),
    (dict(operation="install", auth_mode="string", auth_string="12"), "4 to 10 digits"),
    (dict(operation="install", auth_mode="string"), "4 to 10 digits"),
    (dict(operation="install", auth_mode="null", auth_string="1234"), "only goes with"),
    (dict(operation="install", key_type="rsa512"), "unsupported CAPF key type"),
])
async def test_schedule_operation_validates_input(factory, kwargs, message):
    with pytest.raises(ValueError, match=message):
        await schedule_operation(factory, DEVICE, **kwargs)


async def test_new_schedule_supersedes_unfinished_one(factory):
    store = SqlCapfStore(factory)
    first = await schedule_operation(factory, DEVICE, "install")
    second = await schedule_operation(factory, DEVICE, "delete")
    assert (await store.operation(first)).state == "failed"
    lookup = await store.find_operation(DEVICE)
    assert lookup.kind == "scheduled" and lookup.operation.op_id == second


async def test_lock_after_max_failures_counts_certificate_failures_too(factory):
    store = SqlCapfStore(factory, max_failures=3)
    op = await schedule_operation(factory, DEVICE, "install", auth_mode="mic")
    assert await store.record_auth_failure(op, "bad MIC") is AuthCheck.WRONG
    assert await store.record_auth_failure(op, "bad MIC") is AuthCheck.WRONG
    assert await store.record_auth_failure(op, "bad MIC") is AuthCheck.LOCKED
    assert (await store.find_operation(DEVICE)).kind == "locked"


async def test_known_device_without_operation_is_not_unknown(factory):
    async def exists(device):
        return device == DEVICE
    store = SqlCapfStore(factory, device_exists=exists)
    assert (await store.find_operation(DEVICE)).kind == "none"
    assert (await store.find_operation("SEP999999999999")).kind == "unknown"


async def test_racing_issuances_tie_exactly_one_certificate_to_the_operation(factory):
    """Two sessions of one operation sign concurrently: only one certificate is ever recorded."""
    store = SqlCapfStore(factory)
    op = await schedule_operation(factory, DEVICE, "install", key_type="ec256")
    ca = create_ca(name("CAPF"), key=new_key("ec256"))
    ders = [issue(ca, name(DEVICE), new_key("ec256").public_key()).public_bytes(serialization.Encoding.DER)
            for _ in range(6)]
    tied = await asyncio.gather(*(store.record_issued(op, DEVICE, d) for d in ders))
    assert len(set(tied)) == 1 and tied[0] in ders
    (record,) = await store.certificates(DEVICE)
    assert record.der == tied[0] and record.outcome == "issued"
    assert (await store.find_operation(DEVICE)).operation.issued_der == tied[0]


async def test_done_operation_cannot_issue_again(factory):
    store = SqlCapfStore(factory)
    op = await schedule_operation(factory, DEVICE, "delete")
    await store.mark_done(op, "deleted")
    ca = create_ca(name("CAPF"), key=new_key("ec256"))
    der = issue(ca, name(DEVICE), new_key("ec256").public_key()).public_bytes(serialization.Encoding.DER)
    with pytest.raises(ValueError, match="cannot issue"):
        await store.record_issued(op, DEVICE, der)
    assert [r.outcome for r in await store.certificates(DEVICE)] == ["deleted"]


async def test_chk7_store_runs_on_the_migrated_publisher_database(tmp_path):
    """CHK-7: the services' own path (alembic upgrade heads) yields tables the CAPF store uses."""
    from ccmsec.runtime.database import open_database
    engine, factory = await open_database(f"sqlite:///{tmp_path / 'ccmsec.db'}")
    try:
        store = SqlCapfStore(factory)
        op = await schedule_operation(factory, DEVICE, "delete")
        assert (await store.find_operation(DEVICE)).operation.op_id == op
        await store.mark_done(op, "deleted")
        assert (await store.operation(op)).state == "done"
    finally:
        await engine.dispose()

"""Database side of the administration API: the core_0001 migration, install-time account, versions."""

from __future__ import annotations

import asyncio
import importlib.util
import stat
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations
from argon2 import PasswordHasher
from sqlalchemy import MetaData, inspect, select
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm.exc import StaleDataError

import ccmsec
from ccmsec.db.admin import AdminAccount
from ccmsec.db.base import Base
from ccmsec.db.devices import (
    Device,
    ctl_exists,
    cluster_security_mode,
    ensure_cluster_defaults,
)
from ccmsec_callmanager.admin import ensure_admin_account
from tests.integration.test_admin_support import MY_TABLES, Database, cheap_argon2  # noqa: F401

VERSIONS = Path(ccmsec.__file__).parent / "db" / "migrations" / "versions"
MIGRATIONS = sorted(VERSIONS.glob("core_*.py"))  # the core branch, oldest first
BACKENDS = pytest.mark.parametrize("backend", ["sqlite", "postgres"])
# callmanager's core branch: MY_TABLES without ctl-provider's cluster_settings (its own branch,
# cluster_0002, since each role migrates only its own — issue 9 §5).
CORE_TABLES = [t for t in MY_TABLES if t != "cluster_settings"]


def _load_migration(path: Path = MIGRATIONS[0]):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class EmptyDatabase(Database):
    """A database without tables (the migration creates them)."""

    async def __aenter__(self):
        saved = MY_TABLES[:]
        MY_TABLES.clear()
        try:
            return await super().__aenter__()
        finally:
            MY_TABLES.extend(saved)


def _migrate(conn, direction: str) -> None:
    """Every revision of the core branch, in order (downgrade: newest first)."""
    paths = MIGRATIONS if direction == "upgrade" else MIGRATIONS[::-1]
    with Operations.context(MigrationContext.configure(conn)):
        for path in paths:
            getattr(_load_migration(path), direction)()


def _diff(conn) -> list:
    mine = MetaData(naming_convention=Base.metadata.naming_convention)
    for name in CORE_TABLES:
        Base.metadata.tables[name].to_metadata(mine)
    ctx = MigrationContext.configure(conn, opts={"compare_type": True})
    return [d for d in compare_metadata(ctx, mine)
            if not (isinstance(d, tuple) and getattr(d[1], "name", None) not in CORE_TABLES
                    and d[0] == "remove_table")]


@BACKENDS
async def test_core_migration_creates_exactly_the_model_tables_and_mode1_default(backend, tmp_path):
    assert _load_migration().branch_labels == ("core",)
    async with EmptyDatabase(backend, tmp_path) as engine:
        async with engine.begin() as conn:
            await conn.run_sync(_migrate, "upgrade")
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        assert set(CORE_TABLES) <= tables and "cluster_settings" not in tables  # ctl-provider's
        async with async_sessionmaker(engine)() as session:
            # MODE-1 read before ctl-provider created its table: a cluster never made mixed
            assert await cluster_security_mode(session) == "non-secure"
            assert not await ctl_exists(session)  # MODE-5: no CTL on a fresh install
        async with engine.begin() as conn:
            await conn.run_sync(_migrate, "downgrade")
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        assert not set(CORE_TABLES) & tables


async def test_admin_password_file_is_0600_written_once_and_only_its_hash_is_stored(tmp_path):
    async with Database("sqlite", tmp_path) as engine:
        sessions = async_sessionmaker(engine)
        path = await ensure_admin_account(sessions, tmp_path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        first = path.read_bytes()
        before = path.stat()
        password = first.decode().strip()
        assert len(password) >= 20
        await ensure_admin_account(sessions, tmp_path)  # second start
        after = path.stat()
        assert path.read_bytes() == first
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        async with sessions() as session:
            accounts = (await session.scalars(select(AdminAccount))).all()
        assert [(a.username, a.role) for a in accounts] == [("admin", "admin")]
        stored = accounts[0].password_hash
        assert password not in stored and stored.startswith("$argon2id$")
        assert PasswordHasher().verify(stored, password)
        with pytest.raises(Exception):
            PasswordHasher().verify(stored, password + "x")
        assert not list(tmp_path.glob(".admin-password.*")), "no temp files left behind"


async def test_new_database_reuses_the_existing_password_file(tmp_path):
    (tmp_path / "db2").mkdir()
    async with Database("sqlite", tmp_path) as engine:
        path = await ensure_admin_account(async_sessionmaker(engine), tmp_path)
    first = path.read_bytes()
    async with Database("sqlite", tmp_path / "db2") as engine:
        sessions = async_sessionmaker(engine)
        # two services starting at once: one account, one file
        await asyncio.gather(ensure_admin_account(sessions, tmp_path),
                             ensure_admin_account(sessions, tmp_path))
        async with sessions() as session:
            stored = (await session.scalars(select(AdminAccount.password_hash))).all()
    assert path.read_bytes() == first and len(stored) == 1
    assert PasswordHasher().verify(stored[0], first.decode().strip())


@BACKENDS
async def test_config_version_guards_against_concurrent_writers(backend, tmp_path):
    async with Database(backend, tmp_path) as engine:
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        await ensure_cluster_defaults(sessions)
        await ensure_cluster_defaults(sessions)  # idempotent
        async with sessions() as s, s.begin():
            s.add(Device(name="SEP001122334455", model="7970"))
        async with sessions() as a, sessions() as b:
            da = await a.scalar(select(Device))
            db = await b.scalar(select(Device))
            assert da.config_version == db.config_version == 1
            da.description = "first"
            await a.commit()
            assert da.config_version == 2
            db.description = "second"
            with pytest.raises(StaleDataError):
                await b.commit()


async def test_short_password_file_is_refused_and_loose_permissions_are_tightened(tmp_path):
    path = tmp_path / "admin-password"
    path.write_text("short\n")
    async with Database("sqlite", tmp_path) as engine:
        with pytest.raises(ValueError, match="shorter"):
            await ensure_admin_account(async_sessionmaker(engine), tmp_path)
        path.write_text("a-long-enough-password\n")
        path.chmod(0o644)
        await ensure_admin_account(async_sessionmaker(engine), tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "a-long-enough-password\n"

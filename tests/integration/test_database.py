"""The database layer on SQLite (default) and PostgreSQL (when configured)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import select, text

from ccmsec.db.events import HandledEvent
from ccmsec.runtime.database import DatabaseError, create_engine, normalise_url, open_database
from tests.localpg import PG_ADMIN, needs_pg


async def _exercise(url: str) -> None:
    engine, db = await open_database(url)
    try:
        # migrations are idempotent: a second start changes nothing
        engine2, _ = await open_database(url)
        await engine2.dispose()
        async with db() as s:
            s.add(HandledEvent(consumer="c", event_id="e1"))
            await s.commit()
        async with db() as s:
            assert await s.scalar(select(HandledEvent.event_id).where(HandledEvent.consumer == "c")) == "e1"
        async with engine.connect() as conn:
            heads = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
        assert "runtime_0002" in heads   # the runtime branch at its head (handled events, then the outbox)
    finally:
        await engine.dispose()


def test_sqlite_default_uses_wal_and_migrates(tmp_path):
    url = f"sqlite:///{tmp_path / 'ccmsec.db'}"
    asyncio.run(_exercise(url))

    async def mode():
        engine = create_engine(url)
        async with engine.connect() as conn:
            value = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
        await engine.dispose()
        return value

    assert asyncio.run(mode()) == "wal"


@pytest.mark.postgres
@needs_pg
def test_postgresql_backend_migrates_and_stores():
    name = f"ccmsec_{uuid.uuid4().hex[:10]}"

    async def scenario():
        admin = create_engine(PG_ADMIN)
        async with admin.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            await _exercise(f"postgresql://postgres@127.0.0.1:5432/{name}")
        finally:
            async with admin.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            await admin.dispose()

    asyncio.run(scenario())


def test_bad_database_urls_are_clear():
    with pytest.raises(DatabaseError, match="not a database URL"):
        normalise_url("::::")
    with pytest.raises(DatabaseError, match="unsupported database"):
        normalise_url("mysql://x@y/z")


def test_a_url_that_does_not_parse_is_not_echoed_with_its_password():
    """The error is the service's 'cannot start' log line: a malformed URL with a password in it
    (a missing ':') was logged whole, password included."""
    with pytest.raises(DatabaseError, match="not a database URL") as refused:
        normalise_url("postgresql//ccmsec:S3cretPassw0rd@db/ccmsec")
    assert "S3cretPassw0rd" not in str(refused.value)


def test_unreachable_postgres_is_a_clear_error():
    with pytest.raises(DatabaseError, match="cannot migrate database"):
        asyncio.run(open_database("postgresql://postgres@127.0.0.1:1/none"))


async def _refused_statement_message(url: str) -> str:
    """The message of a statement the database refuses, carrying a value that must stay secret."""
    from sqlalchemy.exc import DBAPIError

    engine = create_engine(url)
    table = f"t_{uuid.uuid4().hex[:8]}"
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"CREATE TABLE {table} (v TEXT CHECK (length(v) < 3))"))
        try:
            async with engine.begin() as conn:
                await conn.execute(text(f"INSERT INTO {table} (v) VALUES (:v)"), {"v": "SECRET-KEY-MATERIAL"})
        except DBAPIError as exc:
            return str(exc)
        raise AssertionError("the database took a row its CHECK refuses")
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        await engine.dispose()


def test_a_refused_statements_message_names_no_value_sqlite(tmp_path):
    """Secrets are never logged: a failed statement's message (services log it; some quote it in a
    refusal) shows the SQL but not its parameters — which may be key material or a CTL's bytes."""
    message = asyncio.run(_refused_statement_message(f"sqlite:///{tmp_path / 'c.db'}"))
    assert "INSERT INTO" in message and "CHECK" in message.upper()
    assert "SECRET-KEY-MATERIAL" not in message and "parameters hidden" in message


@pytest.mark.postgres
@needs_pg
def test_a_refused_statements_message_names_no_value_postgresql():
    message = asyncio.run(_refused_statement_message(PG_ADMIN))
    assert "INSERT INTO" in message
    assert "SECRET-KEY-MATERIAL" not in message and "parameters hidden" in message

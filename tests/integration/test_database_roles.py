"""Per-owner PostgreSQL roles (issue 9 §5 enforced by the database): on the machine's PostgreSQL
(127.0.0.1:5432, trust authentication), in a throwaway database with roles of a throwaway prefix.

Every statement here goes straight to the database on an engine without the in-process write
guard — what a compromised container would have — so only PostgreSQL's privileges stand in the way.
"""

from __future__ import annotations

import asyncio
import base64
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from ccmsec.db import ownership
from ccmsec.db.roles import DB_ROLES, RoleError, pg_role, provision, provision_statements, scram_verifier
from ccmsec.runtime.database import WriteRefused, create_engine, migrate
from tests.localpg import PG_ADMIN, needs_pg


pytestmark = [pytest.mark.postgres, needs_pg]

OUTBOX_ROW = ("INSERT INTO {t} (event_id, origin, kind, target, payload, created_at, attempts, last_error) "
              "VALUES (:id, :origin, 'device.reset', NULL, '\\x00', now(), 0, '')")
CAPF_ROW = "INSERT INTO {t} (key, value, updated_at) VALUES ('forged', 'x', now())"


async def _admin(sql: str, db: str = "test") -> None:
    engine = create_engine(f"postgresql://postgres@127.0.0.1:5432/{db}")
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@pytest.fixture
def pg_world():
    """A database and a role prefix of their own; both removed afterwards."""
    tag = uuid.uuid4().hex[:8]
    db, prefix = f"ccmsec_roles_{tag}", f"t{tag}_"
    asyncio.run(_admin(f'CREATE DATABASE "{db}"'))
    try:
        yield db, prefix
    finally:
        async def drop():
            await _admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            for role in DB_ROLES:
                await _admin(f'DROP ROLE IF EXISTS "{pg_role(role, prefix)}"')
        asyncio.run(drop())


def _url(db: str, user: str) -> str:
    return f"postgresql://{user}@127.0.0.1:5432/{db}"


async def _run(engine, sql: str, **params):
    async with engine.begin() as conn:
        result = await conn.execute(text(sql), params)
        return result.fetchall() if result.returns_rows else None


def test_each_owner_writes_only_its_own_schema_and_outbox(pg_world):
    db, prefix = pg_world
    verifiers = {role: scram_verifier(f"pw-{role}") for role in DB_ROLES}

    async def scenario():
        names = await provision(_url(db, "postgres"), verifiers, prefix)
        assert names == [pg_role(r, prefix) for r in DB_ROLES]
        await provision(_url(db, "postgres"), verifiers, prefix)  # a second init run changes nothing
        engines = {role: create_engine(_url(db, pg_role(role, prefix))) for role in DB_ROLES}
        try:
            # each owner migrates its own branches under its own role, into its own schema
            for role in ("capf", "callmanager", "ctl-provider", "tftp-signer"):
                await migrate(engines[role], role)
            for role, engine in engines.items():
                rows = await _run(engine, "SELECT table_schema, table_name FROM information_schema.tables "
                                          "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')")
                tables = {t for _s, t in rows}
                assert {s for s, _t in rows} == {pg_role(role, prefix)}, role  # sees no other schema
                assert tables == ({t for t, o in ownership.OWNERS.items() if o == role}
                                  | ownership.RUNTIME_TABLES | {"alembic_version"}), role
            cm, capf = engines["callmanager"], engines["capf"]
            capf_schema = pg_role("capf", prefix)
            # its own writes work: its outbox, its tables
            await _run(cm, OUTBOX_ROW.format(t="event_outbox"), id="e-cm", origin="callmanager")
            await _run(capf, OUTBOX_ROW.format(t="event_outbox"), id="e-capf", origin="capf")
            await _run(capf, CAPF_ROW.format(t="capf_settings"))
            await _run(cm, "INSERT INTO devices (name, model, security_mode, description, web_access, pc_port, "
                           "settings_access, garp, voice_vlan_access, config_version, created_at, updated_at) "
                           "VALUES ('SEP000000000001', '7970', 'non-secure', '', false, false, false, false, "
                           "false, 1, now(), now())")
            # ctl-provider's unanswered CTL take-backs (CHK-6): 63-bit generations, oldest first
            from sqlalchemy.ext.asyncio import async_sessionmaker

            from ccmsec.db.cluster import (
                publishes_in_flight,
                save_publishes_in_flight,
                save_unsettled_take_backs,
                unsettled_take_backs,
            )
            session = async_sessionmaker(engines["ctl-provider"], expire_on_commit=False)
            for wanted in ([(1 << 63) - 1, 3], [3, 5, 7], []):
                async with session() as s, s.begin():
                    await save_unsettled_take_backs(s, wanted)
                async with session() as s:
                    assert await unsettled_take_backs(s) == wanted
            # and its write-ahead intents (cluster_0004: kind `publish`), kept apart from take-backs
            async with session() as s, s.begin():
                await save_unsettled_take_backs(s, [11])
                await save_publishes_in_flight(s, [(1 << 63) - 1, 13])
            async with session() as s, s.begin():
                await save_publishes_in_flight(s, [13])
            async with session() as s:
                assert (await unsettled_take_backs(s), await publishes_in_flight(s)) == ([11], [13])
            # call control's role writing CAPF's table and CAPF's outbox: refused by PostgreSQL
            for sql in (CAPF_ROW.format(t=f'"{capf_schema}".capf_settings'),
                        OUTBOX_ROW.format(t=f'"{capf_schema}".event_outbox'),
                        f'UPDATE "{capf_schema}".capf_settings SET value = 1',
                        f'DELETE FROM "{capf_schema}".event_outbox',
                        f'SELECT * FROM "{capf_schema}".capf_certificates'):
                with pytest.raises(WriteRefused, match=rf"refused role '{pg_role('callmanager', prefix)}'.*"
                                                       rf"permission denied for schema {capf_schema}"):
                    await _run(cm, sql, id="forged", origin="capf")
            # … nor by another way in: a table of its own name in public, its schema taken over
            for sql in ("CREATE TABLE public.capf_operations (id int)",
                        f'ALTER SCHEMA "{capf_schema}" OWNER TO CURRENT_USER',
                        f'GRANT USAGE ON SCHEMA "{capf_schema}" TO CURRENT_USER',
                        f'SET ROLE "{capf_schema}"'):
                with pytest.raises((WriteRefused, ProgrammingError)):
                    await _run(cm, sql)
            # every owner in turn: no write to any other owner's outbox
            for role, engine in engines.items():
                for other in DB_ROLES:
                    if other == role:
                        continue
                    with pytest.raises(WriteRefused, match="permission denied for schema"):
                        await _run(engine, OUTBOX_ROW.format(t=f'"{pg_role(other, prefix)}".event_outbox'),
                                   id=f"{role}->{other}", origin=other)
            # CAPF's outbox holds its own row only: nothing forged got in
            assert await _run(capf, "SELECT event_id FROM event_outbox") == [("e-capf",)]
            # tftp-signer's change token (any commit of the cluster) works under its own role
            assert (await _run(engines["tftp-signer"], "SELECT pg_current_wal_lsn()"))[0][0]
            # none of the roles is anything more than a login
            flags = await _run(cm, "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles "
                                   "WHERE rolname = ANY(:n)", n=[pg_role(r, prefix) for r in DB_ROLES])
            assert flags == [(False, False, False, False)] * len(DB_ROLES)
        finally:
            for engine in engines.values():
                await engine.dispose()

    asyncio.run(scenario())


def test_a_role_without_provisioning_cannot_connect(pg_world):
    """The bad case of the bootstrap: a role that provisioning did not make is no login at all."""
    db, prefix = pg_world

    async def scenario():
        await provision(_url(db, "postgres"), {"capf": scram_verifier("x")}, prefix)
        engine = create_engine(_url(db, pg_role("callmanager", prefix)))
        try:
            with pytest.raises(Exception, match="does not exist"):
                await _run(engine, "SELECT 1")
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_scram_verifier_is_what_postgresql_stores(pg_world):
    """Our verifier for a password and a salt is the one PostgreSQL computes itself."""
    db, prefix = pg_world
    name = pg_role("capf", prefix)

    async def scenario():
        await _admin(f"CREATE ROLE \"{name}\" LOGIN PASSWORD 'correct horse'", db)
        engine = create_engine(_url(db, "postgres"))
        try:
            stored = (await _run(engine, "SELECT rolpassword FROM pg_authid WHERE rolname = :n", n=name))[0][0]
        finally:
            await engine.dispose()
        iterations, salt = stored.split("$")[1].split(":")
        assert scram_verifier("correct horse", base64.b64decode(salt), int(iterations)) == stored
        assert scram_verifier("wrong horse", base64.b64decode(salt), int(iterations)) != stored

    asyncio.run(scenario())


def test_bad_provisioning_input_is_refused_clearly():
    with pytest.raises(RoleError, match="not a SCRAM-SHA-256 verifier"):
        provision_statements("ccmsec", {"capf": "plain'; DROP ROLE x; --"})
    with pytest.raises(RoleError, match="database name"):
        provision_statements('ccmsec"; DROP', {"capf": scram_verifier("x")})

    async def unreachable():
        await provision("postgresql://postgres@127.0.0.1:1/none", {"capf": scram_verifier("x")})

    with pytest.raises(RoleError, match="cannot provision the database roles"):
        asyncio.run(unreachable())

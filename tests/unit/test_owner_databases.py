"""One SQLite file per owner in the local runner (ccmsec.cluster.databases), the split of an old
shared DATA/ccmsec.db, and the commit counters tftp-signer reads instead of the owners' files
(ccmsec.db.commits)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat

import pytest
import sqlalchemy as sa
from sqlalchemy import text

from ccmsec.cluster import databases
from ccmsec.cluster.topology import ROLES, local_cluster
from ccmsec.db import ownership
from ccmsec.db.capf import schedule_operation
from ccmsec.db.commits import CommitCounters, counter_path, install_commit_counter
from ccmsec.db.devices import Device, set_setting
from ccmsec.runtime.database import create_engine, migrate, sessionmaker


def test_each_node_gets_its_roles_own_file_and_call_control_shares_callmanagers(tmp_path, monkeypatch):
    monkeypatch.delenv("CCMSEC_DATABASE_URL", raising=False)
    cluster = local_cluster(tmp_path, base="127.79.0.0", subscribers=2)
    urls = {i.node: cluster.env_for(i)["CCMSEC_DATABASE_URL"] for i in cluster.instances}
    for role in ROLES:
        assert urls[role] == f"sqlite+aiosqlite:///{tmp_path / 'db' / role / 'ccmsec.db'}", role
    assert urls["callmanager-sub1"] == urls["callmanager-sub2"] == urls["callmanager"]
    assert len(set(urls.values())) == len(ROLES)  # nothing else shared
    # a database named for the whole run (e.g. PostgreSQL) is left to every service as it is
    monkeypatch.setenv("CCMSEC_DATABASE_URL", "postgresql://x@127.0.0.1/ccmsec")
    assert all("CCMSEC_DATABASE_URL" not in cluster.env_for(i) for i in cluster.instances)


def test_prepare_makes_private_folders_without_service_users(tmp_path):
    databases.prepare(tmp_path)
    for role in ROLES:
        assert stat.S_IMODE((tmp_path / "db" / role).stat().st_mode) == 0o700, role
    assert (tmp_path / "db" / "commits").is_dir()


def _tables(path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                             "AND name NOT LIKE 'sqlite_%'")}


def _rows(path, sql):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def _old_shared_database(data) -> None:
    """DATA/ccmsec.db as every role made it before the split, with each owner's state in it."""
    url = f"sqlite:///{data / 'ccmsec.db'}"
    engine = create_engine(url)
    try:
        for role in ROLES:
            await migrate(engine, role)
        db = sessionmaker(engine)
        async with db() as s, s.begin():
            await set_setting(s, "security_mode", "mixed")
            s.add(Device(name="SEP001122334455", model="7970", security_mode="encrypted"))
        await schedule_operation(db, "SEP001122334455", "install", auth_mode="null", key_type="ec256")
        async with engine.begin() as conn:
            await conn.execute(text(
                "INSERT INTO admin_accounts (username, password_hash, role, disabled, created_at) "
                "VALUES ('admin', 'SECRET-HASH-0123456789', 'admin', 0, CURRENT_TIMESTAMP)"))
            for origin in ("callmanager", "callmanager-sub1", "capf", "tftp-signer"):
                await conn.execute(text(
                    "INSERT INTO event_outbox (event_id, origin, kind, payload, created_at, attempts, last_error) "
                    "VALUES (:e, :o, 'x', X'00', CURRENT_TIMESTAMP, 0, '')"), {"e": f"ev-{origin}", "o": origin})
            for consumer in ("tftp-signer-config", "callmanager-sub1-reset", "srst-reset"):
                await conn.execute(text("INSERT INTO handled_events (consumer, event_id) VALUES (:c, 'e1')"),
                                   {"c": consumer})
    finally:
        await engine.dispose()


def test_an_old_shared_database_is_split_each_owner_keeping_only_its_own(tmp_path):
    asyncio.run(_old_shared_database(tmp_path))
    columns = {r[1] for r in _rows(tmp_path / "ccmsec.db", "PRAGMA table_info(admin_accounts)")}
    assert "password_hash" in columns
    said = databases.split_shared(tmp_path)
    assert "one database per owner" in said and "ccmsec.db.pre-split" in said
    assert not (tmp_path / "ccmsec.db").exists()
    kept = tmp_path / "ccmsec.db.pre-split"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    runtime = ownership.RUNTIME_TABLES | {"alembic_version"}
    for role in ROLES:
        path = databases.database_path(tmp_path, role)
        own = {t for t, o in ownership.OWNERS.items() if o == role}
        assert _tables(path) == own | runtime, role
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        # its alembic rows are its own branches' heads: migrating as the role changes nothing
        before = _rows(path, "SELECT version_num FROM alembic_version ORDER BY 1")
        asyncio.run(_migrate(path, role))
        assert _rows(path, "SELECT version_num FROM alembic_version ORDER BY 1") == before, role
        if role != "callmanager":  # the dropped tables' bytes are gone too (VACUUM)
            assert b"SECRET-HASH" not in path.read_bytes(), role
    cm, ctl, capf, tftp = (databases.database_path(tmp_path, r) for r in
                           ("callmanager", "ctl-provider", "capf", "tftp-signer"))
    assert _rows(cm, "SELECT name, security_mode FROM devices") == [("SEP001122334455", "encrypted")]
    assert _rows(cm, "SELECT password_hash FROM admin_accounts") == [("SECRET-HASH-0123456789",)]
    assert ("security_mode", "mixed") in _rows(ctl, "SELECT key, value FROM cluster_settings")
    assert _rows(capf, "SELECT device_name, operation FROM capf_operations") == [("SEP001122334455", "install")]
    assert sorted(_rows(cm, "SELECT origin FROM event_outbox")) == [("callmanager",), ("callmanager-sub1",)]
    assert _rows(tftp, "SELECT origin FROM event_outbox") == [("tftp-signer",)]
    assert _rows(cm, "SELECT consumer FROM handled_events") == [("callmanager-sub1-reset",)]
    assert _rows(tftp, "SELECT consumer FROM handled_events") == [("tftp-signer-config",)]
    assert _rows(databases.database_path(tmp_path, "keymanager"), "SELECT count(*) FROM event_outbox") == [(0,)]
    assert databases.split_shared(tmp_path) == ""  # nothing left to split


async def _migrate(path, role):
    engine = create_engine(f"sqlite:///{path}")
    try:
        await migrate(engine, role)
    finally:
        await engine.dispose()


def test_both_layouts_present_is_refused_with_how_to_proceed(tmp_path):
    asyncio.run(_old_shared_database(tmp_path))
    databases.prepare(tmp_path)
    databases.database_path(tmp_path, "capf").write_bytes(b"")
    with pytest.raises(databases.SplitError) as info:
        databases.split_shared(tmp_path)
    assert "both exist" in str(info.value) and "move" in str(info.value)
    assert (tmp_path / "ccmsec.db").exists()  # nothing touched


def test_an_interrupted_split_is_done_again(tmp_path):
    asyncio.run(_old_shared_database(tmp_path))
    databases.prepare(tmp_path)
    databases.database_path(tmp_path, "capf").write_bytes(b"half")  # a split that stopped midway
    (tmp_path / "db" / databases.SPLITTING).touch()
    assert databases.split_shared(tmp_path)
    assert "capf_operations" in _tables(databases.database_path(tmp_path, "capf"))
    assert not (tmp_path / "db" / databases.SPLITTING).exists()


def test_up_splits_an_old_data_directory_before_anything_starts(tmp_path, monkeypatch):
    """`ccmsec up` on an old data directory: the split runs before the services (here: stopped at
    the missing-parts check's successor, the port check, to keep this a unit test)."""
    from ccmsec.cluster import runner

    monkeypatch.delenv("CCMSEC_DATABASE_URL", raising=False)
    asyncio.run(_old_shared_database(tmp_path))

    class Stop(Exception):
        pass

    def stop(*_a, **_k):
        raise Stop

    monkeypatch.setattr(runner, "check_ports", stop)
    with pytest.raises(Stop):
        runner.up(tmp_path, base="127.79.1.0", quiet=True, service_users="off")
    assert not (tmp_path / "ccmsec.db").exists()
    assert "devices" in _tables(databases.database_path(tmp_path, "callmanager"))


# --- commit counters -----------------------------------------------------------------------------


def test_a_commit_writes_the_counter_before_and_after_it_lands(tmp_path):
    """The race (ccmsec/db/commits.py): a reader during the commit sees a new token, and the one
    after the commit differs again — so a reader that validated pre-commit state with the token of
    the in-flight commit is sent back to the owner once the commit landed."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'o.db'}")
    path = counter_path(tmp_path, "callmanager")
    reader = CommitCounters([path])
    during = []
    commit = engine.dialect.do_commit

    def observed(conn):
        during.append(reader.token())  # the database commit is about to land
        commit(conn)

    engine.dialect.do_commit = observed
    counter = install_commit_counter(engine, path)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (v INTEGER)")
        before = reader.token()
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        after = reader.token()
        assert during[-1] != before and after != during[-1] and after != before
        assert reader.token() == after  # nothing committed: the same token
        with engine.begin() as conn:  # a transaction that only read moves nothing
            conn.exec_driver_sql("SELECT * FROM t").all()
            conn.exec_driver_sql("WITH x AS (SELECT v FROM t) SELECT * FROM x").all()
        assert reader.token() == after
        with engine.begin() as conn:
            conn.exec_driver_sql("WITH x AS (SELECT 2 AS v) INSERT INTO t SELECT v FROM x")
        assert reader.token() != after
    finally:
        engine.dispose()
        counter.close()
        reader.close()


def test_two_writers_of_one_counter_never_repeat_a_token(tmp_path):
    """Call control's publisher and subscribers share callmanager's counter: every write is unique."""
    path = counter_path(tmp_path, "callmanager")
    engines = [sa.create_engine(f"sqlite:///{tmp_path / 'cm.db'}") for _ in range(2)]
    counters = [install_commit_counter(e, path) for e in engines]
    reader = CommitCounters([path])
    seen = [reader.token()]
    try:
        with engines[0].begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (v INTEGER)")
        seen.append(reader.token())
        for i in range(20):
            with engines[i % 2].begin() as conn:
                conn.exec_driver_sql("INSERT INTO t VALUES (?)", (i,))
            seen.append(reader.token())
        assert len(set(seen)) == len(seen)
    finally:
        for e, c in zip(engines, counters):
            e.dispose()
            c.close()
        reader.close()


def test_counters_missing_until_their_owner_starts_and_none_for_postgresql(tmp_path):
    reader = CommitCounters([counter_path(tmp_path, "capf")])
    assert reader.token() == (None,)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    counter = install_commit_counter(engine, counter_path(tmp_path, "capf"))
    assert reader.token() != (None,)  # the owner's start writes it
    counter.close()
    engine.dispose()
    reader.close()
    assert install_commit_counter(create_engine("postgresql://x@127.0.0.1/none"),
                                  counter_path(tmp_path, "x")) is None
    assert json.dumps(os.listdir(tmp_path / "db" / "commits")) == '["capf"]'


def test_a_derived_hot_path_engine_writing_through_the_dbapi_cursor_moves_the_counter(tmp_path):
    """CAPF's hot path (sync_sqlite_engine) writes through the DB-API cursor inside a transaction
    SQLAlchemy begins and commits: no statement event sees the write, yet its commit moves the
    owner's counter."""
    from ccmsec.runtime.database import sync_sqlite_engine

    async def scenario():
        engine = create_engine(f"sqlite:///{tmp_path / 'capf.db'}")
        counter = install_commit_counter(engine, counter_path(tmp_path, "capf"))
        sync = sync_sqlite_engine(engine)
        reader = CommitCounters([counter_path(tmp_path, "capf")])
        try:
            with sync.begin() as conn:
                conn.exec_driver_sql("CREATE TABLE t (v INTEGER)")
            before = reader.token()
            with sync.begin() as conn:
                conn.connection.driver_connection.cursor().execute("INSERT INTO t VALUES (1)")
            assert reader.token() != before
        finally:
            sync.dispose()
            await engine.dispose()
            counter.close()
            reader.close()

    asyncio.run(scenario())


def test_an_owners_copy_is_never_readable_by_others_not_even_before_its_final_chmod(tmp_path, monkeypatch):
    """The split writes each owner's copy 0600 from its first byte: with the final chmod taken
    away (and a permissive umask), the copy and its journal are still the owner's alone."""
    import os
    import sqlite3

    source = sqlite3.connect(tmp_path / "source.db")
    source.execute("CREATE TABLE capf_operations (id INTEGER PRIMARY KEY, secret TEXT)")
    source.execute("INSERT INTO capf_operations (secret) VALUES ('SECRET')")
    source.commit()
    target = tmp_path / "copy.db"
    monkeypatch.setattr(databases.os, "chmod", lambda *a, **k: None)
    old_umask = os.umask(0o022)
    try:
        databases._own_copy(source, target, "capf", {})
    finally:
        os.umask(old_umask)
        source.close()
    assert _rows(target, "SELECT secret FROM capf_operations") == [("SECRET",)]
    for path in tmp_path.glob("copy.db*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path

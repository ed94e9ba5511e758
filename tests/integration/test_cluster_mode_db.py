"""The `cluster` migration branch against its models, and the trust-anchor tables in use, on a
real SQLite database migrated with `alembic upgrade heads`."""

from __future__ import annotations

import sqlalchemy as sa

from ccmsec.db.cluster import (
    CtlFileRow,
    CtlProviderNode,
    TftpClusterRow,
    current_ctl,
    provider_node,
    record_ctl,
    save_tftp_registry,
    tftp_registry,
)
from ccmsec.db.devices import cluster_security_mode, ctl_exists, get_setting
from ccmsec.policy.tftp_paths import TftpClusterEntry
from ccmsec.runtime.database import open_database


async def test_migration_creates_exactly_the_model_columns(tmp_path):
    engine, _ = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    try:
        async with engine.connect() as conn:
            for model in (CtlFileRow, CtlProviderNode, TftpClusterRow):
                table = model.__table__
                columns = await conn.run_sync(lambda c: sa.inspect(c).get_columns(table.name))
                assert {c["name"]: c["nullable"] for c in columns} == \
                    {c.name: c.nullable for c in table.columns}, table.name
    finally:
        await engine.dispose()


async def test_mode1_mode5_ctl_records_and_provider_rows(tmp_path):
    engine, db = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    try:
        async with db() as session:
            assert await cluster_security_mode(session) == "non-secure"  # MODE-1
            assert not await ctl_exists(session)                        # MODE-5 reads this
        async with db() as session, session.begin():
            v1 = await record_ctl(session, content=b"one", sha256="a" * 64, signer="CN=t1",
                                  signer_serial="01", records=5, tftp_path="cluster1")
        async with db() as session, session.begin():
            v2 = await record_ctl(session, content=b"two", sha256="b" * 64, signer="CN=t1",
                                  signer_serial="01", records=5, tftp_path="cluster1")
        assert (v1, v2) == (1, 2)
        async with db() as session:
            assert (await current_ctl(session)).content == b"two"
            assert await get_setting(session, "ctl_version") == "2" and await ctl_exists(session)
        async with db() as session, session.begin():
            row = await provider_node(session, "ctl-provider")
            assert row.activated is False and row.port is None  # CHK-1: off at install
            row.activated, row.port = True, 12444
        async with db() as session:
            row = await provider_node(session, "ctl-provider")
            assert (row.activated, row.port) == (True, 12444)
        entries = [TftpClusterEntry("local", "cluster1", "", "mixed"),
                   TftpClusterEntry("other", "cluster2", "alt2", "mixed")]
        async with db() as session, session.begin():
            await save_tftp_registry(session, entries)
        async with db() as session, session.begin():
            assert await tftp_registry(session) == entries
            await save_tftp_registry(session, entries[:1])
        async with db() as session:
            assert await tftp_registry(session) == entries[:1]
    finally:
        await engine.dispose()

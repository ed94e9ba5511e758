"""Tests arrange state owned by a service that is not running (a device callmanager would have
added, a mode ctl-provider would have stored) by writing as that owner: an engine on the same
database with the owner's write guard (ccmsec/db/ownership.py), so the arrangement itself obeys
the one-owner rule — and with the owner's schema branches migrated, as the owner does at its start
(each role migrates only its own, issue 9 §5). Like the owner's own engine, each commit writes the
owner's commit counter (ccmsec/db/commits.py) in `data_dir` (default: the SQLite file's folder, the
data directory of a test whose services share DATA/ccmsec.db), so tftp-signer sees it at once."""

from __future__ import annotations

import contextlib
from pathlib import Path

from sqlalchemy.engine import make_url

from ccmsec.db.commits import counter_path, install_commit_counter
from ccmsec.db.ownership import OWN_BRANCHES, install_write_guard
from ccmsec.runtime.database import create_engine, migrate, sessionmaker

_MIGRATED: set[tuple[str, str]] = set()


@contextlib.asynccontextmanager
async def owner_db(url: str, role: str, data_dir: Path | None = None):
    engine = create_engine(url)
    counter = None
    try:
        if (url, role) not in _MIGRATED:
            await migrate(engine, role)
            if "sqlite" in url:  # a test's own file; a PostgreSQL database is reset between tests
                _MIGRATED.add((url, role))
        install_write_guard(engine, role)
        database = make_url(url).database
        if role in OWN_BRANCHES and database and database != ":memory:":
            counter = install_commit_counter(engine, counter_path(data_dir or Path(database).parent, role))
        yield sessionmaker(engine)
    finally:
        await engine.dispose()
        if counter is not None:
            counter.close()



def owner_cluster_state(sessionmaker):
    """Call control's view of the cluster mode and CTL for tests that run call control or the
    administration API without a CTL Provider process: the owner's own answer to GetSecurityMode
    (`TrustOperations.mode_state`, ctl-provider's code) on the test's database, asked at every
    decision — so a mode the test stores as the owner is seen at once."""
    from types import SimpleNamespace

    from ccmsec_callmanager.cluster_state import ClusterState, ClusterStateFollower
    from ccmsec_ctl_provider.trust import TrustOperations

    owner = TrustOperations(SimpleNamespace(db=sessionmaker))

    async def ask() -> ClusterState:
        mode, version = await owner.mode_state()
        return ClusterState(getattr(mode, "value", mode), version is not None, version or 0)

    return ClusterStateFollower(ask, refresh_interval=0.0)


def owner_url(data, role: str) -> str:
    """The database of `role` in a local runner's data directory (one file per owner)."""
    from ccmsec.cluster.databases import database_url

    return database_url(data, role)


def owner_sql(data, role: str, sql: str, *params) -> None:
    """One statement committed as `role` into its own database of a local runner's data directory
    (its write guard and its commit counter, so tftp-signer sees it at its next request) — for
    end-to-end tests that change an owner's state straight in its database, no event sent."""
    import sqlalchemy as sa

    from ccmsec.cluster.databases import database_path

    engine = sa.create_engine(f"sqlite:///{database_path(data, role)}", connect_args={"timeout": 10})
    install_write_guard(engine, role)
    counter = install_commit_counter(engine, counter_path(data, role))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(sql, params)
    finally:
        engine.dispose()
        if counter is not None:
            counter.close()

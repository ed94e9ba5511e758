"""Tests arrange state owned by a service that is not running (a device callmanager would have
added, a mode ctl-provider would have stored) by writing as that owner: an engine on the same
database with the owner's write guard (ccmsec/db/ownership.py), so the arrangement itself obeys
the one-owner rule — and with the owner's schema branches migrated, as the owner does at its start
(each role migrates only its own, issue 9 §5)."""

from __future__ import annotations

import contextlib

from ccmsec.db.ownership import install_write_guard
from ccmsec.runtime.database import create_engine, migrate, sessionmaker

_MIGRATED: set[tuple[str, str]] = set()


@contextlib.asynccontextmanager
async def owner_db(url: str, role: str):
    engine = create_engine(url)
    try:
        if (url, role) not in _MIGRATED:
            await migrate(engine, role)
            if "sqlite" in url:  # a test's own file; a PostgreSQL database is reset between tests
                _MIGRATED.add((url, role))
        install_write_guard(engine, role)
        yield sessionmaker(engine)
    finally:
        await engine.dispose()

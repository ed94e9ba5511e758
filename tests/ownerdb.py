"""Tests arrange state owned by a service that is not running (a device callmanager would have
added, a mode ctl-provider would have stored) by writing as that owner: an engine on the same
database with the owner's write guard (ccmsec/db/ownership.py), so the arrangement itself obeys
the one-owner rule."""

from __future__ import annotations

import contextlib

from ccmsec.db.ownership import install_write_guard
from ccmsec.runtime.database import create_engine, sessionmaker


@contextlib.asynccontextmanager
async def owner_db(url: str, role: str):
    engine = create_engine(url)
    install_write_guard(engine, role)
    try:
        yield sessionmaker(engine)
    finally:
        await engine.dispose()

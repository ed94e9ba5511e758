"""Declarative base shared by every table of the publisher database."""

from __future__ import annotations

import weakref

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

# Stable constraint names so Alembic migrations are identical on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


# --- a table its owner has not created yet ------------------------------------------------------
# Each role migrates only its own schema branches (issue 9 §5), so a table read from its owner's
# branch may not exist yet when the reader starts first. Tables are never dropped while services
# run, so once seen a table is remembered per engine and never looked up again.
_SEEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


async def table_exists(session, table: str) -> bool:
    bind = session.get_bind()
    seen = _SEEN.setdefault(bind, set())
    if table in seen:
        return True
    from sqlalchemy import inspect

    if await session.run_sync(lambda sync: inspect(sync.connection()).has_table(table)):
        seen.add(table)
        return True
    return False

"""The machine's PostgreSQL for tests of the PostgreSQL backend (127.0.0.1:5432, trust auth, database `test`)."""

from __future__ import annotations

import socket

import pytest

PG_ADMIN = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def pg_available() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5432), 1).close()
        return True
    except OSError:
        return False


needs_pg = pytest.mark.skipif(not pg_available(), reason="PostgreSQL is not listening on 127.0.0.1:5432")

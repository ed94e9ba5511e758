"""Secrets at rest are never world-readable: the SQLite database (argon2 hashes of passwords and
of auth strings) with its WAL files, phone-sim's phones.json (private keys, auth strings) and the
folders holding them are owner-only — created so, and tightened when an older run left them open."""

from __future__ import annotations

import asyncio
import os
import stat

from sqlalchemy import text

from ccmsec.cluster.runner import check_data_dir
from ccmsec.fsutil import private_dir, private_file
from ccmsec.runtime.database import create_engine


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_sqlite_database_and_its_wal_files_are_0600_even_under_a_lax_umask(tmp_path):
    db = tmp_path / "ccmsec.db"
    old = os.umask(0o022)
    try:
        async def write():
            engine = create_engine(f"sqlite:///{db}")
            async with engine.begin() as conn:
                await conn.execute(text("CREATE TABLE secrets (hash TEXT)"))
                await conn.execute(text("INSERT INTO secrets VALUES ('argon2id$...')"))
            wal = {p.name: mode(p) for p in tmp_path.iterdir() if p.name.startswith("ccmsec.db")}
            await engine.dispose()
            return wal

        files = asyncio.run(write())
    finally:
        os.umask(old)
    assert files["ccmsec.db"] == 0o600
    assert files.get("ccmsec.db-wal", 0o600) == 0o600 and files.get("ccmsec.db-shm", 0o600) == 0o600
    assert "ccmsec.db-wal" in files  # WAL mode really ran, so the check above saw the file


def test_an_open_database_file_from_an_older_run_is_tightened(tmp_path):
    db = tmp_path / "ccmsec.db"
    db.write_bytes(b"")
    os.chmod(db, 0o644)
    create_engine(f"sqlite:///{db}")
    assert mode(db) == 0o600


def test_private_dir_and_file_helpers(tmp_path):
    folder = tmp_path / "a" / "b"
    private_dir(folder)
    assert mode(folder) == 0o700
    os.chmod(folder, 0o755)
    private_dir(folder)
    assert mode(folder) == 0o700
    f = private_file(folder / "x")
    assert mode(f) == 0o600 and f.read_bytes() == b""
    f.write_bytes(b"kept")
    os.chmod(f, 0o644)
    private_file(f)
    assert mode(f) == 0o600 and f.read_bytes() == b"kept"


def test_cluster_data_directory_is_owner_only(tmp_path):
    data = tmp_path / "cluster"
    check_data_dir(data)
    assert mode(data) == 0o700
    os.chmod(data, 0o755)
    check_data_dir(data)
    assert mode(data) == 0o700

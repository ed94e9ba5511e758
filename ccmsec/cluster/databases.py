"""One SQLite file per owner in the local runner (issue 9 §5), as compose gives each owner a
PostgreSQL role and schema of its own (ccmsec/db/roles.py).

    DATA/db/<role>/ccmsec.db    each role's own database (+ -wal, -shm, .migrate.lock)
    DATA/db/commits/<owner>     each table owner's commit counter (ccmsec/db/commits.py)

Every call-control node (publisher and subscribers) opens callmanager's file; each other role its
own — the table owners (ctl-provider, callmanager, capf) their tables, tftp-signer and the roles
without tables (keymanager, srtp-gateway, srst, phone-sim) only their bus bookkeeping (handled
events, outbox), as compose's PRIVATE_DATABASE_URL. Under service users (ccmsec.cluster.accounts)
each folder and file is its owner's uid only (callmanager's: its group too, which the subscribers
are in), so the operating system — not only the in-process write guard — keeps a service out of
another owner's tables and out of callmanager's administrator password hashes.

A data directory from before this layout (one shared DATA/ccmsec.db) is split by `split_shared`
when `ccmsec up` starts: each role's file gets a copy with only its own tables (and its own
schema versions and bus rows), compacted so no dropped table's bytes stay in its free pages; the
old file is kept as DATA/ccmsec.db.pre-split, readable by root (or the user who ran `up`) only.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ccmsec.cluster.topology import ROLES
from ccmsec.db.ownership import MIGRATION_TABLES, OWNERS, RUNTIME_TABLES, migration_branches

DB_FILE = "ccmsec.db"
SHARED = "ccmsec.db"                 # the old layout's one file, DATA/ccmsec.db
PRE_SPLIT = "ccmsec.db.pre-split"    # where it is kept after the split
SPLITTING = ".splitting"             # DATA/db/.splitting: a split was interrupted, do it again


class SplitError(Exception):
    """The old shared database cannot be split: one clear line saying how to proceed."""


def role_of(node: str) -> str:
    """The role of a node: call-control subscribers (callmanager-subN) are callmanager."""
    if node in ROLES:
        return node
    role, _, number = node.rpartition("-sub")
    if role in ROLES and number.isdigit():
        return role
    raise KeyError(f"unknown node {node!r}")


def db_root(data_dir: Path) -> Path:
    return Path(data_dir) / "db"


def database_dir(data_dir: Path, role: str) -> Path:
    return db_root(data_dir) / role


def database_path(data_dir: Path, role: str) -> Path:
    return database_dir(data_dir, role) / DB_FILE


def database_url(data_dir: Path, node: str) -> str:
    """CCMSEC_DATABASE_URL of a node in the local runner."""
    return f"sqlite+aiosqlite:///{database_path(data_dir, role_of(node))}"


def prepare(data_dir: Path) -> None:
    """The folders, made before anything starts (the layout for service users then gives each to
    its owner). Private to the user that runs the cluster otherwise."""
    from ccmsec.db.commits import commit_dir

    root = db_root(data_dir)
    root.mkdir(mode=0o700, exist_ok=True)
    for role in ROLES:
        database_dir(data_dir, role).mkdir(mode=0o700, exist_ok=True)
    commit_dir(data_dir).mkdir(mode=0o755, exist_ok=True)


# --- the split of an old shared file -----------------------------------------------------------


def _branch_of_versions(versions: list[str]) -> dict[str, set[str]]:
    """Each alembic_version row's branch labels (alembic propagates a branch's label to every
    revision of it)."""
    from ccmsec.runtime.database import _script

    script = _script()
    out = {}
    for version in versions:
        try:
            out[version] = set(script.get_revision(version).branch_labels)
        except Exception:  # a revision this code does not know: kept nowhere would lose it — refuse
            raise SplitError(f"{SHARED} is at schema revision {version!r}, which this version of "
                             "ccmsec does not know: start it with the ccmsec that made it") from None
    return out


def _own_copy(source: sqlite3.Connection, target: Path, role: str, branches: dict[str, set[str]]) -> None:
    """`target`: a copy of `source` with only `role`'s tables, schema versions and bus rows."""
    if target.exists():
        target.unlink()
    # Created 0600 before a byte goes in (SQLite keeps an existing file's mode, and gives it to its
    # journal): the copy holds the role's secrets, even for the moment before the final chmod.
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    dst = sqlite3.connect(target, isolation_level=None)
    try:
        source.backup(dst)
        dst.execute("PRAGMA foreign_keys=OFF")
        keep = {t for t, owner in OWNERS.items() if owner == role} | RUNTIME_TABLES | MIGRATION_TABLES
        tables = [name for (name,) in dst.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        dst.execute("BEGIN")
        for table in tables:
            if table not in keep:
                dst.execute(f'DROP TABLE "{table}"')
        own_branches = set(migration_branches(role))
        for version, labels in branches.items():
            if not labels & own_branches:
                dst.execute("DELETE FROM alembic_version WHERE version_num = ?", (version,))
        if "event_outbox" in tables:  # each node relays only its own rows (origin: the node)
            dst.execute("DELETE FROM event_outbox WHERE origin <> ? AND origin NOT LIKE ?", (role, f"{role}-sub%"))
        if "handled_events" in tables:  # a node's durable consumers are named <node>-<name>
            dst.execute("DELETE FROM handled_events WHERE consumer NOT LIKE ?", (f"{role}-%",))
        dst.execute("COMMIT")
        dst.execute("VACUUM")  # no dropped table's rows left in free pages
        dst.execute("PRAGMA journal_mode=WAL")
    finally:
        dst.close()
    os.chmod(target, 0o600)


def split_shared(data_dir: Path) -> str:
    """Split DATA/ccmsec.db (the layout before one file per owner) into each role's file. Returns
    what was done ("" when there was nothing to split). Run before any service starts."""
    data_dir = Path(data_dir)
    shared = data_dir / SHARED
    marker = db_root(data_dir) / SPLITTING
    if not shared.exists():
        return ""
    existing = [database_path(data_dir, r) for r in ROLES if database_path(data_dir, r).exists()]
    if existing and not marker.exists():
        raise SplitError(f"{shared} (one database for all services, the old layout) and "
                         f"{existing[0]} (one per owner) both exist, so it is unclear which holds the "
                         f"cluster's state: keep the one you want — move {shared} away to keep the "
                         f"per-owner files, or remove {db_root(data_dir)} to split {shared} again")
    try:
        source = sqlite3.connect(f"file:{shared}", uri=True, timeout=30, isolation_level=None)
    except sqlite3.Error as exc:
        raise SplitError(f"cannot open {shared} to split it into one database per owner: {exc}") from None
    try:
        source.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        tables = {name for (name,) in source.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        versions = ([v for (v,) in source.execute("SELECT version_num FROM alembic_version")]
                    if "alembic_version" in tables else [])
        branches = _branch_of_versions(versions)
        prepare(data_dir)
        marker.touch()
        temps = {}
        for role in ROLES:
            temp = database_dir(data_dir, role) / (DB_FILE + ".split")
            _own_copy(source, temp, role, branches)
            temps[role] = temp
    except sqlite3.Error as exc:
        raise SplitError(f"cannot split {shared} into one database per owner: {exc} — nothing was "
                         f"changed; free the file (is a service still running?) and start again") from None
    finally:
        source.close()
    for role, temp in temps.items():
        target = database_path(data_dir, role)
        for suffix in ("-wal", "-shm"):
            Path(str(target) + suffix).unlink(missing_ok=True)
        os.replace(temp, target)
    kept = data_dir / PRE_SPLIT
    os.chmod(shared, 0o600)
    os.replace(shared, kept)
    for suffix in ("-wal", "-shm", ".migrate.lock"):
        (data_dir / (SHARED + suffix)).unlink(missing_ok=True)
    marker.unlink()
    return (f"split {shared} into one database per owner under {db_root(data_dir)}; the old file is "
            f"kept as {kept} (only its owner can read it) — remove it once the cluster works")

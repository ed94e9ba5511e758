"""The publisher database: an async SQLAlchemy engine (SQLite WAL by default, PostgreSQL when
CCMSEC_DATABASE_URL is set) and Alembic migrations applied on start under a lock."""

from __future__ import annotations

import asyncio
import fcntl
import os
import stat
from pathlib import Path

from sqlalchemy import Engine, event, text
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine


MIGRATIONS = Path(__file__).resolve().parents[1] / "db" / "migrations"
_PG_LOCK_KEY = 0x6363_6D73  # "ccms": one advisory lock for schema changes


class DatabaseError(Exception):
    """The database cannot be used: one clear line, no traceback."""


class WriteRefused(PermissionError):
    """PostgreSQL refused a statement for lack of privilege: the connection's role touched a table
    or schema of another owner (ccmsec/db/roles.py)."""


_INSUFFICIENT_PRIVILEGE = "42501"


def _privilege_refusal(ctx) -> None:
    """A permission error from PostgreSQL becomes WriteRefused naming the role and what it touched,
    instead of a driver traceback."""
    orig = ctx.original_exception
    state = getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)
    if state != _INSUFFICIENT_PRIVILEGE:
        return
    user = ctx.engine.url.username if ctx.engine is not None else "?"
    detail = str(getattr(orig, "__cause__", None) or orig).strip().splitlines()[0]
    raise WriteRefused(f"PostgreSQL refused role {user!r}: {detail} — each service writes only its own "
                       "schema (issue 9 §5, ccmsec/db/roles.py)") from None


def normalise_url(url: str) -> str:
    """Accept postgresql:// and sqlite:// and pick the async drivers we ship."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        # Never echoed: a URL that does not parse may still hold a password (this line is logged).
        raise DatabaseError("not a database URL (sqlite:///PATH or postgresql://USER@HOST/DB; "
                            "not shown, it may hold a password)") from None
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return str(parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False))
    if backend == "sqlite":
        return str(parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False))
    raise DatabaseError(f"unsupported database {backend!r}: use sqlite or postgresql")


def create_engine(url: str) -> AsyncEngine:
    """The service's engine. `hide_parameters`: a failed statement's message (logged, sometimes
    quoted in a refusal) names its SQL but never its values — key material, certificates, CTL bytes."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        db_path = make_url(url).database
        if db_path and db_path != ":memory:":
            parent = Path(db_path).parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseError(f"cannot create database directory {parent}: {exc.strerror}") from None
            if not os.access(parent, os.W_OK):
                raise DatabaseError(f"database directory {parent} is not writable")
            _owner_only(Path(db_path))
        engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_async_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=True,
                                 hide_parameters=True)
    event.listen(engine.sync_engine, "handle_error", _privilege_refusal)
    return engine


def _owner_only(db_file: Path) -> None:
    """The database holds password and auth-string hashes: 0600 from the first byte. SQLite
    gives its -wal and -shm files the database file's permissions; older ones are tightened.
    In a setgid folder — call control's database folder in the local runner under service users,
    which the publisher and its subscribers share (ccmsec.cluster.databases) — the folder's group
    keeps read-write: 0660; the world never has access."""
    keep = 0o660 if Path(db_file).parent.stat().st_mode & stat.S_ISGID else 0o600
    try:
        os.close(os.open(db_file, os.O_CREAT | os.O_RDWR, keep))
        for path in (db_file, db_file.with_name(db_file.name + "-wal"), db_file.with_name(db_file.name + "-shm")):
            if path.exists() and path.stat().st_mode & 0o077 & ~keep:
                os.chmod(path, stat.S_IMODE(path.stat().st_mode) & keep)
    except OSError as exc:
        raise DatabaseError(f"cannot protect database file {db_file}: {exc.strerror}") from None


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # WAL: readers never block the writer
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def sync_sqlite_engine(engine: AsyncEngine) -> Engine | None:
    """A synchronous engine on the same SQLite file with the same pragmas, or None (PostgreSQL,
    in-memory). For a hot path that runs many statements per batch in one worker thread: with
    aiosqlite every statement is several hand-offs to its thread."""
    if engine.dialect.name != "sqlite" or not engine.url.database or engine.url.database == ":memory:":
        return None
    sync = sa_create_engine(engine.url.set(drivername="sqlite+pysqlite"),
                            connect_args={"timeout": 30, "check_same_thread": False}, hide_parameters=True)
    event.listen(sync, "connect", _sqlite_pragmas)
    writer = getattr(engine.sync_engine, "ccmsec_writer", None)
    if writer is not None:  # the same owner rule as the engine it is made from
        from ccmsec.db.ownership import install_write_guard

        install_write_guard(sync, writer)
    counter = getattr(engine.sync_engine, "ccmsec_commit_counter", None)
    if counter is not None:  # its commits move the owner's commit counter too (ccmsec/db/commits.py);
        from ccmsec.db.commits import install_commit_counter

        # every one: its users may write through the DB-API cursor, unseen by statement events
        install_commit_counter(sync, counter, every_commit=True)
    return sync


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)


def _alembic_config():
    from alembic.config import Config  # imported on first use: it is slow to import

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    return cfg


_SCRIPT = None


def _script():
    """The migration scripts, read once per process (a role upgrades several branches)."""
    global _SCRIPT
    if _SCRIPT is None:
        from alembic.script import ScriptDirectory

        _SCRIPT = ScriptDirectory.from_config(_alembic_config())
    return _SCRIPT


def _upgrade(sync_conn, targets: tuple[str, ...]) -> None:
    """`alembic upgrade <target>` for each target, as alembic.command.upgrade does it, on one
    parsed script directory."""
    from alembic.runtime.environment import EnvironmentContext

    cfg = _alembic_config()
    cfg.attributes["connection"] = sync_conn
    script = _script()
    for target in targets:
        def upgrade(rev, _context, target=target):
            return script._upgrade_revs(target, rev)

        with EnvironmentContext(cfg, script, fn=upgrade, as_sql=False, starting_rev=None,
                                destination_rev=target):
            script.run_env()


def migration_targets(role: str | None) -> tuple[str, ...]:
    """A role migrates only its own branches and the shared runtime branch (issue 9 §5,
    ccmsec/db/ownership.py); None (tools and tests arranging a whole cluster) migrates them all."""
    if role is None:
        return ("heads",)
    from ccmsec.db.ownership import migration_branches

    return tuple(f"{branch}@head" for branch in migration_branches(role))


async def migrate(engine: AsyncEngine, role: str | None = None) -> None:
    """Apply `role`'s migration branches (every branch when None), one process at a time: on SQLite
    under a lock file next to the database, on PostgreSQL under an advisory lock."""
    targets = migration_targets(role)
    try:
        if engine.dialect.name == "sqlite":
            lock_path = Path(str(engine.url.database) + ".migrate.lock")
            fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
            try:
                await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
                async with engine.begin() as conn:
                    await conn.run_sync(_upgrade, targets)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        else:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
                try:
                    await conn.run_sync(_upgrade, targets)
                    await conn.commit()
                finally:
                    await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                    await conn.commit()
    except (OperationalError, DBAPIError, OSError) as exc:
        raise DatabaseError(f"cannot migrate database {engine.url.render_as_string()}: "
                            f"{getattr(exc, 'orig', exc)}") from None


async def open_database(url: str, role: str | None = None) -> tuple[AsyncEngine, async_sessionmaker]:
    engine = create_engine(url)
    await migrate(engine, role)
    return engine, sessionmaker(engine)

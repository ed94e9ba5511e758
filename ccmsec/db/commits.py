"""Commit counters: how tftp-signer learns that an owner committed, without opening its database.

In the local runner each owner keeps its own SQLite file (ccmsec/cluster/databases.py), which no
other uid may open. tftp-signer still must see every committed change of the state its device
files are built from (issue 15: the very next TFTP request) and its check must stay microseconds.
So each owner's engine (SQLite only) writes a small counter file of its own, DATA/db/commits/<role>,
on every commit: 16 bytes, an 8-byte random nonce of the writing engine and an 8-byte sequence
number. It holds no secret (readable by tftp-signer, writable only by its owner). tftp-signer reads
the counters of ctl-provider, callmanager and capf (one `pread` each, no thread hand-off) as its
version token (`CommitCounters.token`). PostgreSQL needs none of this: its token is the WAL
position (`pg_current_wal_lsn()`), which every commit of every role advances.

The race, and why each commit writes the counter twice — before and after the database commit:

* before: a reader whose token (read while the commit is in flight) already differs from the one
  it validated re-asks the owner; it may get the pre-commit state and validate it with the new
  token, so that alone would leave it stale once the commit lands —
* after: the second write (once the database commit returned, before the owner's caller learns the
  commit is done) changes the token again, so that reader re-asks once more and sees the commit.
  A request that starts after a commit completed therefore always reads a token written after the
  commit, never one a reader validated against earlier state: the guarantee holds.
* a transaction that only read (the owners answer tftp-signer's questions in transactions) or was
  rolled back writes nothing (after a rollback the next commit may write once more than needed:
  one needless re-read, never a missed change).
* a crash between the commit and the second write: the owner writes its counter again when its
  engine starts (`install_commit_counter`), so the next start changes the token too.
* several writers of one counter (call-control subscribers share callmanager's database, CAPF's
  hot path has a second engine): every value written is unique (nonce, sequence), so a token once
  validated never comes back; a torn read of a concurrent write is a value never validated either.

Writes that do not go through an owner engine (someone running the sqlite3 shell on an owner's
file) write no counter: they are seen after that owner's next commit or restart, not at once.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Iterable

from sqlalchemy import event
from sqlalchemy.engine import Engine

from ccmsec.db.ownership import OWN_BRANCHES, written_table

log = logging.getLogger("ccmsec.db.commits")

COUNTER_SIZE = 16
# The owners whose state tftp-signer's device files are built from: every table owner.
WATCHED: tuple[str, ...] = tuple(OWN_BRANCHES)


def commit_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "db" / "commits"


def counter_path(data_dir: Path, role: str) -> Path:
    return commit_dir(data_dir) / role


class CommitCounter:
    """The writer side: one per engine."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # 0644: no secret in it; under service users the runner made it, the owner's (accounts.py)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            from ccmsec.runtime.database import DatabaseError

            raise DatabaseError(f"cannot open the commit counter {self.path}: {exc.strerror}") from None
        self._nonce = os.urandom(8)
        self._seq = itertools.count(1)  # next() is atomic under the GIL: threads never reuse a value

    def bump(self) -> None:
        os.pwrite(self._fd, self._nonce + next(self._seq).to_bytes(8, "big"), 0)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


_READS = ("SELECT", "PRAGMA", "EXPLAIN", "SAVEPOINT", "RELEASE", "ROLLBACK", "BEGIN")
_WROTE = "ccmsec_wrote"


def writes(statement: str) -> bool:
    """Whether a statement may change the database (anything but a read; a WITH … SELECT reads)."""
    head = statement.lstrip()[:12].upper()
    if head.startswith(_READS):
        return False
    if head.startswith("WITH"):
        return written_table(statement) is not None
    return True


def install_commit_counter(engine, path: Path, *, every_commit: bool = False) -> CommitCounter | None:
    """Write `path` before and after every commit of `engine` that wrote something (async or sync;
    SQLite files only — None otherwise). A transaction that only read moves nothing: the owners
    answer tftp-signer's own questions in transactions, and a counter those moved would send it
    back to ask again, forever. Engines derived with `sync_sqlite_engine` get it too, with
    `every_commit`: CAPF's hot path writes there through the DB-API cursor (no statement event to
    see) and begins a transaction only to write, so each of its commits writes the counter."""
    sync: Engine = getattr(engine, "sync_engine", engine)
    if sync.dialect.name != "sqlite" or not sync.url.database or sync.url.database == ":memory:":
        return None
    counter = CommitCounter(path)
    dialect = sync.dialect  # one dialect object per engine: this wraps this engine's commits only
    commit = dialect.do_commit

    def before(conn, cursor, statement, parameters, context, executemany):
        if writes(statement):
            conn.info[_WROTE] = True  # the pooled connection's: do_commit below gets the same one

    def do_commit(dbapi_connection) -> None:
        info = getattr(dbapi_connection, "info", None)
        if not every_commit and info is not None and not info.pop(_WROTE, False):
            commit(dbapi_connection)  # nothing written since the last commit
            return
        counter.bump()  # refused if it cannot be written: a change tftp-signer could miss is not made
        try:
            commit(dbapi_connection)
        finally:
            try:
                counter.bump()
            except OSError as exc:  # the commit stands; the first write already moved the token
                log.warning("commit counter %s not written after a commit: %s", path, exc)

    event.listen(sync, "before_cursor_execute", before)
    dialect.do_commit = do_commit
    sync.ccmsec_commit_counter = Path(path)
    counter.bump()  # a commit whose second write a crash prevented is seen now
    return counter


class CommitCounters:
    """The reader side (tftp-signer): the counters of `paths`, as one token."""

    def __init__(self, paths: Iterable[Path]):
        self.paths = [Path(p) for p in paths]
        self._fds: list[int | None] = [None] * len(self.paths)

    def token(self) -> tuple:
        out = []
        for i, fd in enumerate(self._fds):
            if fd is None:
                try:
                    fd = self._fds[i] = os.open(self.paths[i], os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:  # its owner never started: nothing committed yet
                    out.append(None)
                    continue
            out.append(os.pread(fd, COUNTER_SIZE, 0))
        return tuple(out)

    def close(self) -> None:
        for fd in self._fds:
            if fd is not None:
                os.close(fd)
        self._fds = [None] * len(self.paths)

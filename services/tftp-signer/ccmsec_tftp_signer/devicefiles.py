"""Device configurations built when they change, not when they are requested.

`DeviceFiles` keeps, in memory, what every `SEP<MAC>.cnf.xml` is built from (the device row, its
pending CAPF operation, its pool with the pool's SRST reference) and the cluster's security mode,
plus the XML built from those inputs. A TFTP read request is then a dictionary look-up, after one
version check:

- **Version check** (`ChangeDetector`): before answering, the server asks the database whether
  anything was committed since its copy was validated. On SQLite that is `PRAGMA data_version` on a
  private read-only connection (a few microseconds, no query, no thread hand-off): it changes
  whenever any other connection commits. On PostgreSQL it is the WAL insert position
  (`pg_current_wal_lsn()`), which every commit advances. Unchanged: the copy is exact, serve it.
  Changed: re-read the inputs in one read transaction (one snapshot), compare them by value with
  what each file was built from, and drop the files whose inputs differ before answering. So a
  committed change is visible to the very next request, whether or not an event arrived, and a
  file built from older inputs is never served.
- **Change events** (`config.changed`, `mode.changed`, `ctl.updated`) and a once-a-second poll
  run the same check and then build and sign what changed ahead of the phones (`catch_up` in
  files.py), so the phone's request finds the signed file ready. A lost event costs only time: the
  next poll or request sees the change through the version check.

Inputs are compared by value, not by `config_version`: a writer that changes a row without bumping
its version is still seen. Only the validated token is trusted, never elapsed time.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from ccmsec.domain import ClusterMode
from ccmsec_tftp_signer.content import (
    ClusterEndpoints, DeviceInputs, build_device_config, inputs_from_raw, read_inputs, read_point_sqlite,
    read_raw_sqlite, security_mode,
)

log = logging.getLogger("ccmsec.tftp-signer")


class ChangeDetector:
    """`token()` changes whenever anything was committed to the database since the last call could
    have seen it; equal tokens mean nothing was committed in between."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self._sqlite: sqlite3.Connection | None = None
        self.kind = engine.dialect.name
        db = engine.url.database
        if self.kind == "sqlite" and db and db != ":memory:":
            # Autocommit, read-only use: this connection never writes, so every change of
            # data_version is another connection's commit (any process, WAL or not).
            self._sqlite = sqlite3.connect(db, timeout=30, isolation_level=None, check_same_thread=False)
            self._sqlite.execute("PRAGMA busy_timeout=30000")
        self.checks = 0

    def reader(self) -> sqlite3.Connection | None:
        """A second private connection for the re-read (used from a worker thread), or None when
        the re-read goes through SQLAlchemy (PostgreSQL)."""
        if self._sqlite is None:
            return None
        conn = sqlite3.connect(self.engine.url.database, timeout=30, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def point_reader(self) -> sqlite3.Connection | None:
        """The version check's own connection, for one device's indexed re-read on the event loop
        (SQLite only; it never writes, so data_version still counts only other connections)."""
        return self._sqlite

    async def token(self) -> object:
        self.checks += 1
        if self._sqlite is not None:
            return self._sqlite.execute("PRAGMA data_version").fetchone()[0]
        if self.kind == "postgresql":
            async with self.engine.connect() as conn:
                return await conn.scalar(text("SELECT pg_current_wal_lsn()"))
        return object()  # unknown database: never equal, so every request re-validates

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None


@dataclass
class Built:
    inputs: DeviceInputs
    xml: bytes


class DeviceFiles:
    def __init__(self, db: async_sessionmaker, endpoints: ClusterEndpoints, detector: ChangeDetector):
        self.db = db
        self.endpoints = endpoints
        self.detector = detector
        self.mode: ClusterMode = ClusterMode.NON_SECURE
        self.inputs: dict[str, DeviceInputs] = {}
        self.built: dict[str, Built] = {}
        self.dirty: set[str] = set()       # changed since the last catch_up took them
        self.mode_changed = False
        self._validated: object = None
        self._check: asyncio.Future | None = None
        self._check_token: object = None
        self.revalidations = 0
        self.revalidation_seconds = 0.0
        self.builds = 0
        self._reader = detector.reader() if detector is not None else None
        self._tasks: set[asyncio.Task] = set()
        self._reader_lock = threading.Lock()
        self._reading = False
        self._close_reader = False
        self.point_reads = 0

    # --- freshness ----------------------------------------------------------------------------
    async def current(self) -> None:
        """Return once the copy reflects every commit made before this call."""
        while True:
            token = await self.detector.token()
            if token == self._validated and self._validated is not None:
                return
            running, running_token = self._check, self._check_token
            if running is None or running.done():
                running = self._check = asyncio.ensure_future(self._revalidate(token))
                running_token = self._check_token = token
            # Wait for it either way; a failed re-read fails this request too (never stale).
            await asyncio.shield(running)
            if running_token == token:
                return
            # It started before our token was read: its snapshot may predate a commit we must see.

    async def _revalidate(self, token: object) -> None:
        started = time.perf_counter()
        old = self.inputs
        if self._reader is not None:
            # SQLite: the statements straight on a private connection, in one read transaction,
            # in a worker thread; rows compared as tuples, dicts made only for changed devices.
            raw = await asyncio.to_thread(self._read_all)
            mode = ClusterMode.parse(raw.mode or ClusterMode.NON_SECURE)
            fresh = inputs_from_raw(raw, old)
        else:
            async with self.db() as session:  # one read transaction: one snapshot of every input
                mode = await security_mode(session)
                rows = await read_inputs(session)
            fresh = {}
            for item in rows:
                before = old.get(item.name)
                fresh[item.name] = before if before is not None and before == item else item
        changed = [name for name, item in fresh.items() if old.get(name) is not item]
        for name in old.keys() - fresh.keys():
            self.built.pop(name, None)
            changed.append(name)
        for name in changed:
            self.built.pop(name, None)
        self.inputs = fresh
        if mode is not self.mode:
            self.mode_changed = True
        self.mode = mode
        self.dirty.update(changed)
        self._validated = token
        self.revalidations += 1
        self.revalidation_seconds += time.perf_counter() - started

    # --- files --------------------------------------------------------------------------------
    async def config(self, name: str) -> tuple[ClusterMode, bytes | None]:
        """(cluster mode, SEP<MAC>.cnf.xml of `name` or None), reflecting every commit made before
        this call. Nothing committed since the copy was validated: from memory. Otherwise, on
        SQLite, this one device's inputs and the mode are re-read at once (indexed look-ups in one
        read transaction) while the full re-read runs in the background for everyone else."""
        token = await self.detector.token()
        if token == self._validated and self._validated is not None:
            return self.mode, self.xml(name)
        conn = self.detector.point_reader()
        if conn is None or self._validated is None:
            await self.current()
            return self.mode, self.xml(name)
        if not self._tasks:
            self._background(self.current())  # everyone else's files: the full re-read and compare
        self.point_reads += 1
        raw = read_point_sqlite(conn, name)
        mode = ClusterMode.parse(raw.mode or ClusterMode.NON_SECURE)
        found = inputs_from_raw(raw, self.inputs).get(name)
        return mode, None if found is None else self._xml_of(found)

    def _background(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("device inputs not re-read: %s", task.exception())

    def xml(self, name: str) -> bytes | None:
        """The current SEP<MAC>.cnf.xml of device `name` (call `current()` first), or None."""
        inputs = self.inputs.get(name)
        if inputs is None:
            return None
        return self._xml_of(inputs)

    def _xml_of(self, inputs: DeviceInputs) -> bytes:
        name = inputs.name
        built = self.built.get(name)
        if built is not None and (built.inputs is inputs or built.inputs == inputs):
            return built.xml
        config = build_device_config(inputs.device, inputs.capf, inputs.pool, self.endpoints)
        xml = config.to_xml()
        self.built[name] = Built(inputs, xml)
        self.builds += 1
        return xml

    def _read_all(self):
        """In a worker thread. The connection is closed here if close() came meanwhile: closing
        it from another thread while a statement runs would crash the process."""
        with self._reader_lock:
            conn = self._reader
            if conn is None:
                raise RuntimeError("device files closed")
            self._reading = True
        try:
            return read_raw_sqlite(conn)
        finally:
            with self._reader_lock:
                self._reading = False
                if self._close_reader:
                    conn.close()
                    self._reader = None

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        with self._reader_lock:
            if self._reader is not None:
                if self._reading:
                    self._close_reader = True  # the worker thread closes it when its read ends
                else:
                    self._reader.close()
                    self._reader = None

    def take_dirty(self) -> tuple[list[str], bool]:
        names, mode = sorted(self.dirty), self.mode_changed
        self.dirty = set()
        self.mode_changed = False
        return names, mode

    def stats(self) -> dict[str, str]:
        return {"devices": str(len(self.inputs)), "device_files_built": str(len(self.built)),
                "device_builds": str(self.builds), "revalidations": str(self.revalidations),
                "revalidation_seconds": f"{self.revalidation_seconds:.3f}",
                "version_checks": str(self.detector.checks), "point_reads": str(self.point_reads)}

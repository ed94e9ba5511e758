"""CAPF tables of the publisher database and the SQL operations store the CAPF server uses.

CHK-7: every piece of CAPF state (scheduled operations, attempts, issued certificates) lives in
these two tables of the publisher database, nowhere else, so it survives restarts and upgrades.

`capf_operations`  one row per scheduled operation (install | upgrade | delete | troubleshoot).
`capf_certificates` the issued-certificate log (issued → installed, fetched, deleted).

Offline CA (capf_0002): an install/upgrade whose LSC a third-party CA signs keeps the phone's
CSR on its operation row (`csr_der`, `csr_key_sha256`, state `awaiting_ca`); importing the CA's
certificate records it like any issuance (outcome `issued`, state `issued`) until the phone
comes back for it (`installed`, state `done`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import hashlib
import re
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

import argon2
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from sqlalchemy import (
    CheckConstraint, DateTime, ForeignKey, Integer, LargeBinary, String, and_, bindparam, insert, select, update,
)
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from ccmsec.db.base import Base
from ccmsec.db.ownership import check_write
from ccmsec.runtime.database import sync_sqlite_engine
from ccmsec.domain import CapfAuthMode
from ccmsec.domain import CapfOperation as Operation  # this module's CapfOperation is the table
from ccmsec.wire.capf import AuthCheck, KeySpec, OperationLookup, ScheduledOperation
from ccmsec.textsafe import shown

OPERATIONS = Operation.choices()
AUTH_MODES = CapfAuthMode.choices()
STATES = ("pending", "in_progress", "awaiting_ca", "issued", "done", "failed", "expired", "locked")
OUTCOMES = ("issued", "installed", "fetched", "deleted")
ACTIVE = ("pending", "in_progress", "awaiting_ca", "issued", "locked")
# States an operation may still be carried out from (and so may expire from).
RUNNABLE = ("pending", "in_progress", "awaiting_ca", "issued")
MAX_AUTH_FAILURES = 5
AUTH_STRING = re.compile(r"^[0-9]{4,10}$")  # the administrator-generated one-time digits


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _aware(value: _dt.datetime | None) -> _dt.datetime | None:
    # SQLite hands back naive datetimes; everything we write is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=_dt.timezone.utc)
    return value


class CapfOperation(Base):
    __tablename__ = "capf_operations"
    __table_args__ = (
        CheckConstraint(f"operation IN ({_in(OPERATIONS)})", name="operation"),
        CheckConstraint(f"auth_mode IN ({_in(AUTH_MODES)})", name="auth_mode"),
        CheckConstraint(f"state IN ({_in(STATES)})", name="state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_name: Mapped[str] = mapped_column(String(64), index=True)
    operation: Mapped[str] = mapped_column(String(16))
    auth_mode: Mapped[str] = mapped_column(String(16))
    auth_string_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    key_type: Mapped[str] = mapped_column(String(16))
    deadline: Mapped[_dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    failed_attempts: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Fingerprint of the one certificate this operation issued (idempotency across reconnects).
    issued_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True))
    # Offline CA: the phone's CSR (PKCS#10 DER) and the SHA-256 of its SubjectPublicKeyInfo,
    # by which an imported certificate finds its operation.
    csr_der: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    csr_key_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    csr_at: Mapped[_dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class CapfCertificate(Base):
    __tablename__ = "capf_certificates"
    __table_args__ = (CheckConstraint(f"outcome IN ({_in(OUTCOMES)})", name="outcome"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    operation_id: Mapped[int | None] = mapped_column(ForeignKey("capf_operations.id"), nullable=True)
    device_name: Mapped[str] = mapped_column(String(64), index=True)
    serial: Mapped[str | None] = mapped_column(String(64), nullable=True)
    fingerprint_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    operation: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str] = mapped_column(String(16))
    der: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class CapfSetting(Base):
    """CAPF's own settings (CHK-2 activation, service and enterprise parameters): capf is their
    only writer (issue 9 §5), so they are not in ctl-provider's `cluster_settings`."""

    __tablename__ = "capf_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(1024), nullable=False)
    updated_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                     default=utcnow, onupdate=utcnow)


async def get_capf_setting(session: AsyncSession, key: str) -> str | None:
    return await session.scalar(select(CapfSetting.value).where(CapfSetting.key == key))


async def set_capf_setting(session: AsyncSession, key: str, value: str) -> None:
    """Insert or update one CAPF setting (caller commits)."""
    row = await session.get(CapfSetting, key)
    if row is None:
        session.add(CapfSetting(key=key, value=value))
    else:
        row.value = value


# --------------------------------------------------------------------------------------------
# Auth strings are stored as argon2 hashes, never the digits.

_HASHER = argon2.PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


def hash_auth_string(auth_string: str) -> str:
    return _HASHER.hash(auth_string)


def auth_string_matches(stored_hash: str | None, candidate: str | None) -> bool:
    if stored_hash is None or candidate is None:
        return False
    try:
        return _HASHER.verify(stored_hash, candidate)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


# --------------------------------------------------------------------------------------------
# Views handed out of sessions (plain data, safe after the session closes)


@dataclass(frozen=True)
class OperationView:
    id: int
    device_name: str
    operation: str
    auth_mode: str
    key_type: str
    state: str
    failed_attempts: int
    reason: str | None
    deadline: _dt.datetime | None
    issued_fingerprint: str | None
    created_at: _dt.datetime | None = None
    updated_at: _dt.datetime | None = None

    @classmethod
    def of(cls, row: CapfOperation) -> "OperationView":
        return cls(row.id, row.device_name, row.operation, row.auth_mode, row.key_type, row.state,
                   row.failed_attempts, row.reason, _aware(row.deadline), row.issued_fingerprint,
                   _aware(row.created_at), _aware(row.updated_at))


@dataclass(frozen=True)
class CertificateRecord:
    id: int
    operation_id: int | None
    device_name: str
    serial: str | None
    fingerprint_sha256: str | None
    operation: str
    outcome: str
    created_at: _dt.datetime
    der: bytes | None

    @classmethod
    def of(cls, row: CapfCertificate) -> "CertificateRecord":
        return cls(row.id, row.operation_id, row.device_name, row.serial, row.fingerprint_sha256,
                   row.operation, row.outcome, _aware(row.created_at), row.der)  # type: ignore[arg-type]


def spki_sha256(public_key) -> str:
    """SHA-256 (hex) of a public key's DER SubjectPublicKeyInfo: how a certificate meets its CSR."""
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return digest.finalize().hex()


@dataclass(frozen=True)
class CsrRecord:
    """An offline-CA operation waiting for (or holding) its third-party certificate."""

    op_id: int
    device_name: str
    operation: str
    state: str
    csr_der: bytes
    key_sha256: str
    requested_at: _dt.datetime | None


def _cert_ids(der: bytes) -> tuple[str, str]:
    """(serial in hex, SHA-256 fingerprint) of a DER certificate; the fingerprint is the digest of
    the DER, as `Certificate.fingerprint` computes it (hashlib: a tenth of its cost)."""
    cert = x509.load_der_x509_certificate(der)
    return format(cert.serial_number, "x"), hashlib.sha256(der).hexdigest()


# --------------------------------------------------------------------------------------------
# Administration: scheduling (used by the CLI / gRPC layer)


async def schedule_operation(
    factory: async_sessionmaker[AsyncSession], device_name: str, operation: str, *,
    auth_mode: str = "null", auth_string: str | None = None, key_type: str = "rsa2048",
    deadline: _dt.datetime | None = None, also: Callable[[AsyncSession, int], None] | None = None,
) -> int:
    """Schedule a CAPF operation; it replaces any unfinished one for the device. `also(session,
    op_id)` adds to the same transaction (the owner's audit record and events, in its outbox)."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown CAPF operation '{shown(operation)}' (one of {', '.join(OPERATIONS)})")
    if auth_mode not in AUTH_MODES:
        raise ValueError(f"unknown CAPF auth mode '{shown(auth_mode)}' (one of {', '.join(AUTH_MODES)})")
    KeySpec.parse(key_type)
    if auth_mode == "string":
        if auth_string is None or not AUTH_STRING.match(auth_string):
            raise ValueError("auth mode 'string' needs an auth string of 4 to 10 digits")
        stored_hash: str | None = await asyncio.to_thread(hash_auth_string, auth_string)
    else:
        if auth_string is not None:
            raise ValueError(f"an auth string only goes with auth mode 'string', not '{shown(auth_mode)}'")
        stored_hash = None
    now = utcnow()
    async with factory() as s, s.begin():
        await s.execute(
            update(CapfOperation)
            .where(CapfOperation.device_name == device_name, CapfOperation.state.in_(ACTIVE))
            .values(state="failed", reason="superseded by a newer operation", updated_at=now)
        )
        row = CapfOperation(
            device_name=device_name, operation=operation, auth_mode=auth_mode,
            auth_string_hash=stored_hash, key_type=key_type, deadline=deadline, state="pending",
            failed_attempts=0, reason=None, issued_fingerprint=None, created_at=now, updated_at=now,
        )
        s.add(row)
        await s.flush()
        if also is not None:
            also(s, row.id)
        return row.id


# --------------------------------------------------------------------------------------------
# The operations store (implements ccmsec.wire.capf.CapfOperationsStore)


_OPS = CapfOperation.__table__
_CERTS = CapfCertificate.__table__

# The hot path's statements, built once with bound parameters: building a statement costs more
# than running it, and a prebuilt one reuses its compiled form on every call.
_ACTIVE_OPERATIONS = (
    select(_OPS.c.id, _OPS.c.device_name, _OPS.c.operation, _OPS.c.auth_mode, _OPS.c.key_type, _OPS.c.state,
           _OPS.c.deadline, _OPS.c.csr_der, _CERTS.c.der)
    .select_from(_OPS.outerjoin(_CERTS, and_(_CERTS.c.operation_id == _OPS.c.id,
                                             _CERTS.c.fingerprint_sha256 == _OPS.c.issued_fingerprint)))
    .where(_OPS.c.device_name.in_(bindparam("names", expanding=True)), _OPS.c.state.in_(ACTIVE))
    .order_by(_OPS.c.id.desc())
)
_DEVICES_SEEN = (select(_OPS.c.device_name).where(_OPS.c.device_name.in_(bindparam("names", expanding=True)))
                 .distinct())
_CLAIM = (update(_OPS)
          .where(_OPS.c.id == bindparam("op_id"), _OPS.c.issued_fingerprint.is_(None),
                 _OPS.c.state.in_(("pending", "in_progress")))
          .values(issued_fingerprint=bindparam("fingerprint"), state="in_progress", updated_at=bindparam("now"))
          .returning(_OPS.c.operation))
_RECORD_CERTIFICATE = insert(_CERTS).values(
    operation_id=bindparam("op_id"), device_name=bindparam("device"), serial=bindparam("serial"),
    fingerprint_sha256=bindparam("fingerprint"), operation=bindparam("operation"), created_at=bindparam("now"),
    outcome=bindparam("outcome"), der=bindparam("der"))
_OPERATION_STATE = select(_OPS.c.state, _OPS.c.issued_fingerprint).where(_OPS.c.id == bindparam("op_id"))
_TIED_CERTIFICATE = (select(_CERTS.c.der)
                     .where(_CERTS.c.operation_id == bindparam("op_id"),
                            _CERTS.c.fingerprint_sha256 == bindparam("fingerprint")).limit(1))
_DONE = (update(_OPS).where(_OPS.c.id == bindparam("op_id"))
         .values(state="done", reason=None, updated_at=bindparam("now"))
         .returning(_OPS.c.device_name, _OPS.c.operation, _OPS.c.issued_fingerprint))
_INSTALLED = (update(_CERTS)
              .where(_CERTS.c.operation_id == bindparam("op_id"), _CERTS.c.fingerprint_sha256 == bindparam("fingerprint"))
              .values(outcome="installed"))


# The same writes as SQLite statements for the database thread's DB-API cursor (`_SqliteCursor`):
# SQLAlchemy's execution of a prebuilt Core statement (context, parameters, result) cost about
# three times SQLite's own work on each of an install's four writes, in the single writer's
# process. The SQL is what SQLAlchemy renders for the Core statements above (same tables, same
# conditions, same values; `now` stored in its SQLite DATETIME format), and the owner's write guard
# checks it like any statement (`SqlCapfStore.__init__`); tests/integration/test_capf_store_batching.py
# proves both paths leave the same rows.
_SQLITE_WRITES = {
    _CLAIM: "UPDATE capf_operations SET state='in_progress', issued_fingerprint=:fingerprint, updated_at=:now "
            "WHERE capf_operations.id = :op_id AND capf_operations.issued_fingerprint IS NULL "
            "AND capf_operations.state IN ('pending', 'in_progress') RETURNING operation",
    _RECORD_CERTIFICATE: "INSERT INTO capf_certificates (operation_id, device_name, serial, fingerprint_sha256, "
                         "operation, created_at, outcome, der) VALUES (:op_id, :device, :serial, :fingerprint, "
                         ":operation, :now, :outcome, :der)",
    _OPERATION_STATE: "SELECT capf_operations.state, capf_operations.issued_fingerprint FROM capf_operations "
                      "WHERE capf_operations.id = :op_id",
    _TIED_CERTIFICATE: "SELECT capf_certificates.der FROM capf_certificates WHERE capf_certificates.operation_id = "
                       ":op_id AND capf_certificates.fingerprint_sha256 = :fingerprint LIMIT 1",
    _DONE: "UPDATE capf_operations SET state='done', reason=NULL, updated_at=:now WHERE capf_operations.id = :op_id "
           "RETURNING device_name, operation, issued_fingerprint",
    _INSTALLED: "UPDATE capf_certificates SET outcome='installed' WHERE capf_certificates.operation_id = :op_id "
                "AND capf_certificates.fingerprint_sha256 = :fingerprint",
}
_SQLITE = sqlite_dialect.dialect()
_SQLITE_DATETIME = DateTime(timezone=True).dialect_impl(_SQLITE).bind_processor(_SQLITE)


class _CoreConnection:
    """A round's statements through SQLAlchemy (PostgreSQL, or SQLite without a file)."""

    __slots__ = ("conn",)

    def __init__(self, conn: Connection):
        self.conn = conn

    def rows(self, statement, params: dict) -> list[tuple]:
        result = self.conn.execute(statement, params)
        return [tuple(r) for r in result] if result.returns_rows else []


class _SqliteCursor:
    """A round's writes on the DB-API cursor of the SQLAlchemy connection that holds the round's
    transaction (begun, committed or rolled back by SQLAlchemy as before)."""

    __slots__ = ("cursor",)

    def __init__(self, conn: Connection):
        self.cursor = conn.connection.driver_connection.cursor()

    def rows(self, statement, params: dict) -> list[tuple]:
        if "now" in params:
            params = {**params, "now": _SQLITE_DATETIME(params["now"])}
        return self.cursor.execute(_SQLITE_WRITES[statement], params).fetchall()


_Statements = _CoreConnection | _SqliteCursor


class SqlCapfStore:
    def __init__(self, factory: async_sessionmaker[AsyncSession], *, max_failures: int = MAX_AUTH_FAILURES,
                 device_exists: Callable[[str], Awaitable[bool]] | None = None,
                 clock: Callable[[], _dt.datetime] = utcnow):
        self.factory = factory
        self.max_failures = max_failures
        self.device_exists = device_exists
        self.clock = clock
        # SQLite has one writer at a time; queueing our own writers on a lock is far cheaper
        # than letting them collide in SQLite's busy handler (sleep-and-retry).
        bind = factory.kw.get("bind")
        # The hot path (lookup, issuance, completion) runs Core statements on bare connections of
        # this engine: the ORM session's unit of work costs more than the SQL itself.
        self._engine: AsyncEngine | None = bind if isinstance(bind, AsyncEngine) else None
        self._one_writer = asyncio.Lock() if bind is not None and bind.dialect.name == "sqlite" else None
        # SQLite: a batch of the hot path runs in a worker thread on a synchronous connection to the
        # same file — one hand-off per batch, where aiosqlite makes several per statement (they
        # were most of an install's cost). PostgreSQL runs the same code through run_sync.
        self._sync_engine = sync_sqlite_engine(self._engine) if self._engine is not None else None
        writer = getattr(self._sync_engine, "ccmsec_writer", None)
        if writer is not None:  # the DB-API path passes the owner's write guard like SQLAlchemy's
            for sql in _SQLITE_WRITES.values():
                check_write(writer, sql)

        # Group commit: the look-ups and writes of concurrent phone sessions that queue up while
        # one round runs are carried out together in the next (one SELECT … IN for the look-ups,
        # one COMMIT for the writes, one hand-off to the database thread for all of it).
        self._batch: list[tuple[Callable[[_Statements], object], asyncio.Future]] = []
        self._lookups: list[tuple[str, asyncio.Future]] = []
        self._rounds: asyncio.Task | None = None
        self.max_batch = 128
        self.rounds = 0       # rounds run (each one hand-off and at most one transaction)
        self.round_items = 0  # look-ups and writes they carried

    async def _write_batched(self, fn: Callable[[_Statements], object]):
        """Run `fn(statements)` (the hot path's writes, `statements.rows(...)`) in a shared write transaction;
        returns its result once committed. `fn` must raise only before it changes anything (it
        then fails alone, the batch goes on)."""
        future = asyncio.get_running_loop().create_future()
        self._batch.append((fn, future))
        self._start_rounds()
        return await future

    def _start_rounds(self) -> None:
        if self._rounds is None or self._rounds.done():
            self._rounds = asyncio.get_running_loop().create_task(self._run_rounds())

    @classmethod
    def _round(cls, conn: Connection, names: list[str], fns: list[Callable[[_Statements], object]],
               statements: type[_CoreConnection] | type[_SqliteCursor] = _CoreConnection):
        """One round in one transaction: the look-ups (as of its start), then the writes."""
        looked = cls._active_operations(conn, names) if names else ({}, set())
        return looked, (cls._apply(statements(conn), fns) if fns else [])

    @staticmethod
    def _apply(ex: _Statements, fns: list[Callable[[_Statements], object]]) -> list[tuple[object, Exception | None]]:
        outcomes: list[tuple[object, Exception | None]] = []
        for fn in fns:
            try:
                outcomes.append((fn(ex), None))
            except ValueError as exc:  # refused before any change: fails alone
                outcomes.append((None, exc))
        return outcomes

    def _round_in_thread(self, names: list[str], fns: list[Callable[[_Statements], object]]):
        assert self._sync_engine is not None
        with (self._sync_engine.begin() if fns else self._sync_engine.connect()) as conn:
            return self._round(conn, names, fns, _SqliteCursor)

    async def _run_rounds(self) -> None:
        while self._batch or self._lookups:
            batch, self._batch = self._batch[:self.max_batch], self._batch[self.max_batch:]
            lookups, self._lookups = self._lookups[:self.max_batch], self._lookups[self.max_batch:]
            names = sorted({name for name, _f in lookups})
            fns = [fn for fn, _future in batch]
            self.rounds += 1
            self.round_items += len(batch) + len(lookups)
            try:
                if self._sync_engine is not None:
                    if fns:
                        async with self._one_writer:  # type: ignore[union-attr]
                            (newest, seen), outcomes = await asyncio.to_thread(self._round_in_thread, names, fns)
                    else:
                        (newest, seen), outcomes = await asyncio.to_thread(self._round_in_thread, names, fns)
                elif fns:
                    async with self._write_connection() as conn:
                        (newest, seen), outcomes = await conn.run_sync(self._round, names, fns)
                else:
                    async with self._read() as conn:
                        (newest, seen), outcomes = await conn.run_sync(self._round, names, fns)
            except BaseException as exc:  # the round failed: nothing of it happened
                error = exc if isinstance(exc, Exception) else RuntimeError(str(exc))
                for future in [f for _fn, f in batch] + [f for _n, f in lookups]:
                    if not future.done():
                        future.set_exception(error)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_fn, future), (result, error) in zip(batch, outcomes):
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)
            for name, future in lookups:
                if not future.done():
                    row = newest.get(name)
                    future.set_result((row, row is not None or name in seen))

    def close(self) -> None:
        """Release the synchronous engine's connections (the async engine is the caller's)."""
        if self._sync_engine is not None:
            self._sync_engine.dispose()

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        async with contextlib.AsyncExitStack() as stack:
            if self._one_writer is not None:
                await stack.enter_async_context(self._one_writer)
            s = await stack.enter_async_context(self.factory())
            await stack.enter_async_context(s.begin())
            yield s

    @contextlib.asynccontextmanager
    async def _write_connection(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction on a bare connection (Core statements only)."""
        async with contextlib.AsyncExitStack() as stack:
            if self._one_writer is not None:
                await stack.enter_async_context(self._one_writer)
            if self._engine is not None:
                yield await stack.enter_async_context(self._engine.begin())
                return
            s = await stack.enter_async_context(self.factory())
            await stack.enter_async_context(s.begin())
            yield await s.connection()

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        if self._engine is not None:
            async with self._engine.connect() as conn:
                yield conn
            return
        async with self.factory() as s:
            yield await s.connection()

    # -- lookups used by the session

    async def _lookup_batched(self, device_name: str):
        """(newest active operation row joined with its issued certificate or None, whether the
        device has any operation at all). Lookups of concurrent phone sessions that queue up
        while one query runs are answered together by the next one (one SELECT … IN for many)."""
        future = asyncio.get_running_loop().create_future()
        self._lookups.append((device_name, future))
        self._start_rounds()
        return await future

    @staticmethod
    def _active_operations(conn: Connection, names: list[str]) -> tuple[dict[str, object], set[str]]:
        """Each named device's newest active operation (joined with its issued certificate), and
        which of the others have any operation at all."""
        rows = conn.execute(_ACTIVE_OPERATIONS, {"names": names}).all()
        newest: dict[str, object] = {}
        for row in rows:  # newest first: keep each device's first row
            newest.setdefault(row.device_name, row)
        missing = [n for n in names if n not in newest]
        seen: set[str] = set()
        if missing:
            seen = set(conn.execute(_DEVICES_SEEN, {"names": missing}).scalars())
        return newest, seen

    async def find_operation(self, device_name: str) -> OperationLookup:
        now = self.clock()
        op, any_op = await self._lookup_batched(device_name)
        if op is None:
            if any_op:
                return OperationLookup("none")
            known = await self.device_exists(device_name) if self.device_exists else False
            return OperationLookup("none" if known else "unknown")
        if op.state == "locked":
            return OperationLookup("locked")
        deadline = _aware(op.deadline)
        found = ScheduledOperation(op.id, op.device_name, op.operation, op.auth_mode,  # type: ignore[arg-type]
                                   op.key_type, op.der, op.csr_der)
        if deadline is not None and now > deadline:
            async with self._write() as s:
                await s.execute(update(CapfOperation).where(
                    CapfOperation.id == found.op_id, CapfOperation.state.in_(RUNNABLE),
                ).values(state="expired", reason="deadline passed before the phone connected", updated_at=now))
            return OperationLookup("expired")
        return OperationLookup("scheduled", found)

    async def _count_failure(self, op_id: int, why: str) -> AuthCheck:
        async with self._write() as s:
            op = await s.get(CapfOperation, op_id, with_for_update=True)
            if op is None:
                raise ValueError(f"no CAPF operation {op_id}")
            if op.state == "locked":
                return AuthCheck.LOCKED
            op.failed_attempts += 1
            op.reason = why[:255]
            op.updated_at = self.clock()
            if op.failed_attempts >= self.max_failures:
                op.state = "locked"
                return AuthCheck.LOCKED
            return AuthCheck.WRONG

    async def check_auth_string(self, op_id: int, candidate: str | None) -> AuthCheck:
        async with self.factory() as s:
            op = await s.get(CapfOperation, op_id)
            if op is None:
                raise ValueError(f"no CAPF operation {op_id}")
            if op.state == "locked":
                return AuthCheck.LOCKED
            stored_hash = op.auth_string_hash
        # argon2 is deliberately slow: keep it off the event loop.
        if await asyncio.to_thread(auth_string_matches, stored_hash, candidate):
            async with self._write() as s:
                await s.execute(update(CapfOperation).where(
                    CapfOperation.id == op_id, CapfOperation.state == "pending",
                ).values(state="in_progress", updated_at=self.clock()))
            return AuthCheck.OK
        return await self._count_failure(op_id, "wrong auth string")

    async def record_auth_failure(self, op_id: int, why: str) -> AuthCheck:
        return await self._count_failure(op_id, why)

    async def record_issued(self, op_id: int, device_name: str, certificate_der: bytes) -> bytes:
        serial, fingerprint = _cert_ids(certificate_der)
        now = self.clock()

        def claim(ex: _Statements) -> bytes:
            # Compare-and-set on the operation row: only the first issuance is tied to it; a
            # racing or reconnecting session gets the certificate already tied.
            claimed = ex.rows(_CLAIM, {"op_id": op_id, "fingerprint": fingerprint, "now": now})
            if claimed:
                ex.rows(_RECORD_CERTIFICATE, {
                    "op_id": op_id, "device": device_name, "serial": serial, "fingerprint": fingerprint,
                    "operation": claimed[0][0], "now": now, "outcome": "issued", "der": certificate_der})
                return certificate_der
            state = ex.rows(_OPERATION_STATE, {"op_id": op_id})
            if not state:
                raise ValueError(f"no CAPF operation {op_id}")
            (op_state, tied_fingerprint), = state
            existing = ex.rows(_TIED_CERTIFICATE, {"op_id": op_id, "fingerprint": tied_fingerprint})
            if not existing:
                raise ValueError(f"CAPF operation {op_id} is {op_state}; it cannot issue a certificate")
            return existing[0][0]

        return await self._write_batched(claim)  # type: ignore[return-value]

    async def mark_done(self, op_id: int, outcome: str, certificate_der: bytes | None = None) -> None:
        if outcome not in ("installed", "fetched", "deleted"):
            raise ValueError(f"unknown CAPF outcome '{shown(outcome)}'")
        now = self.clock()
        serial = fingerprint = None
        if certificate_der is not None and outcome != "installed":  # installed: the row exists already
            serial, fingerprint = _cert_ids(certificate_der)

        def done(ex: _Statements) -> None:
            # UPDATE … RETURNING: when the operation is missing nothing changed, so this fails alone.
            rows = ex.rows(_DONE, {"op_id": op_id, "now": now})
            if not rows:
                raise ValueError(f"no CAPF operation {op_id}")
            (device, operation, tied_fingerprint), = rows
            if outcome == "installed":
                ex.rows(_INSTALLED, {"op_id": op_id, "fingerprint": tied_fingerprint})
                return
            ex.rows(_RECORD_CERTIFICATE, {
                "op_id": op_id, "device": device, "serial": serial, "fingerprint": fingerprint,
                "operation": operation, "now": now, "outcome": outcome, "der": certificate_der})

        await self._write_batched(done)

    # -- offline CA

    async def record_csr(self, op_id: int, device_name: str, csr_der: bytes) -> None:
        """Keep the phone's CSR (replacing an earlier one of the same operation while nothing was
        issued for it); the operation then waits for the third-party CA (awaiting_ca)."""
        key_sha = spki_sha256(x509.load_der_x509_csr(csr_der).public_key())
        now = self.clock()
        async with self._write() as s:
            done = await s.execute(
                update(CapfOperation)
                .where(CapfOperation.id == op_id, CapfOperation.device_name == device_name,
                       CapfOperation.issued_fingerprint.is_(None),
                       CapfOperation.operation.in_([o.value for o in Operation if o.issues_certificate]),
                       CapfOperation.state.in_(("pending", "in_progress", "awaiting_ca")))
                .values(csr_der=csr_der, csr_key_sha256=key_sha, csr_at=now, state="awaiting_ca",
                        reason="waiting for the third-party CA to sign the CSR", updated_at=now)
            )
            if done.rowcount != 1:
                raise ValueError(f"CAPF operation {op_id} cannot take a CSR (not an active install/upgrade "
                                 "without a certificate)")

    @staticmethod
    def _csr_record(row: CapfOperation) -> CsrRecord:
        return CsrRecord(row.id, row.device_name, row.operation, row.state, row.csr_der,  # type: ignore[arg-type]
                         row.csr_key_sha256 or "", _aware(row.csr_at))

    async def awaiting_csrs(self, limit: int = 10_000) -> list[CsrRecord]:
        """Operations whose CSR waits for the third-party CA, oldest first."""
        q = (select(CapfOperation).where(CapfOperation.state == "awaiting_ca", CapfOperation.csr_der.is_not(None))
             .order_by(CapfOperation.id).limit(max(1, min(limit, 10_000))))
        async with self.factory() as s:
            return [self._csr_record(r) for r in (await s.execute(q)).scalars()]

    async def csr_for_key(self, key_sha256: str) -> CsrRecord | None:
        """The newest operation holding a CSR for this key (whatever its state)."""
        q = (select(CapfOperation).where(CapfOperation.csr_key_sha256 == key_sha256)
             .order_by(CapfOperation.id.desc()).limit(1))
        async with self.factory() as s:
            row = (await s.execute(q)).scalars().first()
            return self._csr_record(row) if row is not None else None

    async def csr_for_device(self, device_name: str) -> CsrRecord | None:
        """The device's operation waiting for the third-party CA, if any."""
        q = (select(CapfOperation).where(CapfOperation.device_name == device_name,
                                         CapfOperation.state == "awaiting_ca", CapfOperation.csr_der.is_not(None))
             .order_by(CapfOperation.id.desc()).limit(1))
        async with self.factory() as s:
            row = (await s.execute(q)).scalars().first()
            return self._csr_record(row) if row is not None else None

    async def record_imported(self, op_id: int, key_sha256: str, certificate_der: bytes,
                              also: Callable[[AsyncSession, str, str], None] | None = None) -> None:
        """Tie a third-party certificate (already checked against the CSR and the CA) to its
        operation, once: compare-and-set on awaiting_ca + the CSR's key + no certificate yet.
        Raises ValueError (nothing written) when the operation cannot take it any more.
        `also(session, device, fingerprint)` adds to the same transaction (the audit record)."""
        serial, fingerprint = _cert_ids(certificate_der)
        now = self.clock()
        async with self._write() as s:
            claimed = await s.execute(
                update(CapfOperation)
                .where(CapfOperation.id == op_id, CapfOperation.state == "awaiting_ca",
                       CapfOperation.csr_key_sha256 == key_sha256, CapfOperation.issued_fingerprint.is_(None))
                .values(issued_fingerprint=fingerprint, state="issued",
                        reason="certificate imported; waiting for the phone to collect it", updated_at=now)
            )
            if claimed.rowcount != 1:
                state = await s.scalar(select(CapfOperation.state).where(CapfOperation.id == op_id))
                raise ValueError(f"operation {op_id} is {state or 'gone'}, not awaiting a certificate: "
                                 "one operation takes at most one certificate")
            row = (await s.execute(select(CapfOperation.device_name, CapfOperation.operation)
                                   .where(CapfOperation.id == op_id))).one()
            s.add(CapfCertificate(operation_id=op_id, device_name=row.device_name, serial=serial,
                                  fingerprint_sha256=fingerprint, operation=row.operation, created_at=now,
                                  outcome="issued", der=certificate_der))
            if also is not None:
                also(s, row.device_name, fingerprint)

    async def mark_failed(self, op_id: int, reason: str) -> None:
        async with self._write() as s:
            await s.execute(update(CapfOperation).where(CapfOperation.id == op_id).values(
                state="failed", reason=reason[:255], updated_at=self.clock()))

    # -- reporting (CHK-8 and the administration views)

    async def operation(self, op_id: int) -> OperationView | None:
        async with self.factory() as s:
            row = await s.get(CapfOperation, op_id)
            return OperationView.of(row) if row else None

    async def operations(self, device_name: str | None = None, limit: int = 1000) -> list[OperationView]:
        """Newest first: pending, completed and failed operations with their reasons."""
        q = select(CapfOperation).order_by(CapfOperation.id.desc()).limit(max(1, min(limit, 10_000)))
        if device_name is not None:
            q = q.where(CapfOperation.device_name == device_name)
        async with self.factory() as s:
            return [OperationView.of(r) for r in (await s.execute(q)).scalars()]

    async def certificates(self, device_name: str | None = None, limit: int | None = None) -> list[CertificateRecord]:
        q = select(CapfCertificate).order_by(CapfCertificate.id)
        if device_name is not None:
            q = q.where(CapfCertificate.device_name == device_name)
        if limit is not None:
            # the most recent `limit` entries, still oldest first
            q = q.order_by(None).order_by(CapfCertificate.id.desc()).limit(max(1, min(limit, 10_000)))
            async with self.factory() as s:
                return [CertificateRecord.of(r) for r in reversed((await s.execute(q)).scalars().all())]
        async with self.factory() as s:
            return [CertificateRecord.of(r) for r in (await s.execute(q)).scalars()]

    async def installed_lsc(self, device_name: str) -> CertificateRecord | None:
        """CHK-8: the LSC CAPF last installed on the device, unless deleted since."""
        async with self.factory() as s:
            row = (await s.execute(
                select(CapfCertificate)
                .where(CapfCertificate.device_name == device_name,
                       CapfCertificate.outcome.in_(("installed", "deleted")))
                .order_by(CapfCertificate.id.desc()).limit(1)
            )).scalars().first()
            return CertificateRecord.of(row) if row is not None and row.outcome == "installed" else None

    async def devices_missing_lsc(self, device_names: list[str]) -> list[str]:
        """CHK-8: which of these devices (the ones that need an LSC) have none installed."""
        return [d for d in device_names if await self.installed_lsc(d) is None]

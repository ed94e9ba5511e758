"""Thin asyncio adapters for CAPF over TLS (TCP 3804): `CapfServer`, `capf_client_run` (one
session) and `capf_client_enroll` (sessions until done, honouring the server's retry-later).

The protocol lives in `ccmsec.wire.capf`; this module moves bytes, runs the sessions' timers and
answers their decision events — the look-up and the writes through a `CapfOperationsStore`, the
issuance and certificate checks through a `CapfIssuer`. Resources are guarded before any TLS:
at most `max_connections` connections, at most `max_per_source` of them from one address (one
source cannot starve the others), each handshake bounded by `handshake_timeout`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import secrets
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ccmsec.aio.listener import AdmittingListener
from ccmsec.pki.tls import new_context
from ccmsec.wire.capf import (
    AuthCheck, AuthenticationRefused, AuthStringCheckRequested, CapfAuthError, CapfPhoneSession, CapfServerSession,
    CertType, CompletionReported, CsrReceived, DeviceCertificateCheckRequested, IssuanceRequested,
    KeyGenerationRequested, KeySpec, OperationFailed, OperationLookup, OperationLookupRequested, PhoneCredentials,
    Reason, SessionEnded,
)

log = logging.getLogger("ccmsec.capf")

READ_CHUNK = 16384
DEFAULT_PORT = 3804


class CapfOperationsStore(Protocol):
    """The operations CAPF carries out (implemented over the publisher database by
    `ccmsec.db.capf.SqlCapfStore`; by a proxy to the owner in acceptor processes)."""

    async def find_operation(self, device_name: str) -> OperationLookup:
        """The operation to carry out now for this device (marks past-deadline ones expired)."""

    async def check_auth_string(self, op_id: int, candidate: str | None) -> AuthCheck:
        """Compare with the stored hash; count failures and lock after the limit."""

    async def record_auth_failure(self, op_id: int, why: str) -> AuthCheck:
        """Count a failed certificate-based authentication like a wrong auth string."""

    async def record_issued(self, op_id: int, device_name: str, certificate_der: bytes) -> bytes:
        """Tie a freshly issued certificate to the operation, once: returns the certificate that
        is tied to it (the given one, or one an earlier session already tied)."""

    async def mark_done(self, op_id: int, outcome: str, certificate_der: bytes | None = None) -> None:
        """outcome: installed | fetched | deleted."""

    async def mark_failed(self, op_id: int, reason: str) -> None: ...

    async def record_csr(self, op_id: int, device_name: str, csr_der: bytes) -> None:
        """Offline CA: keep the phone's CSR with the operation (state awaiting_ca). Raises
        ValueError if the operation already has a certificate or is no longer active."""


class CapfIssuer(Protocol):
    """Who signs LSCs and checks phones' certificates (`ccmsec.pki.lsc.LscIssuer`)."""

    async def issue_lsc(self, device_name: str, public_key_der: bytes) -> bytes:
        """Sign an LSC (DER) for the phone's public key."""

    def classify_device_certificate(self, device_name: str, certificate: x509.Certificate,
                                    claimed: CertType) -> CertType:
        """Whether `certificate` is this device's LSC (CAPF or third-party CA) or MIC
        (manufacturer CA); raise CapfAuthError when it is neither."""


def capf_server_ssl_context(cert_path: str | Path, key_path: str | Path) -> ssl.SSLContext:
    """TLS server context presenting the CAPF certificate (DATA/pki/capf.{crt,key})."""
    ctx = new_context(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_path), str(key_path))
    return ctx


def capf_phone_ssl_context(capf_certificate: x509.Certificate) -> ssl.SSLContext:
    """Phone-side context: the CAPF certificate from the CTL is the only trust anchor (CERT-3).
    Phones pin the certificate; they do not check a host name."""
    ctx = new_context(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=capf_certificate.public_bytes(serialization.Encoding.PEM).decode())
    return ctx


@dataclass
class SessionRecord:
    """What one connection ended with (kept for logs, metrics and tests)."""

    session_id: int
    device_name: str | None
    end_reason: int | None
    error: str | None
    retry_after: int | None = None
    source: str | None = None


def _record(session: CapfServerSession, source: str | None) -> SessionRecord:
    return SessionRecord(session.session_id, session.device_name, session.end_reason, session.error,
                         session.retry_after, source)


class CapfServer:
    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext, store: CapfOperationsStore,
                 issuer: CapfIssuer, *, handshake_timeout: float = 10.0, idle_timeout: float = 30.0,
                 session_timeout: float = 120.0, max_connections: int = 512, max_per_source: int = 64,
                 history: int = 1000, admit: Callable[[], str | None] | None = None,
                 issuer_mode: Callable[[], str] | None = None, retry_delay: Callable[[], int] | int = 600,
                 reuse_port: bool = False, on_session_end: Callable[[SessionRecord], None] | None = None):
        self.host, self._port = host, port
        self.ssl_context = ssl_context
        self.store, self.issuer = store, issuer
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.session_timeout = session_timeout
        self.max_connections = max_connections
        self.max_per_source = max(1, min(max_per_source, max_connections))
        self.reuse_port = reuse_port
        # Our own accept loop: the source is judged before TLS starts, so a refused connection
        # costs no handshake (it is reset at once).
        self._listener = AdmittingListener("CAPF", self._admit_connection, self._on_connection,
                                           on_refused=self._log_refusal)
        self._session_ids = itertools.count(secrets.randbelow(1 << 24) + 1)
        self._per_source: collections.Counter[str] = collections.Counter()
        self._active = 0
        self.refused_connections = 0
        self._last_refusal_log = 0.0
        self.sessions: collections.deque[SessionRecord] = collections.deque(maxlen=history)
        # admit() -> None to serve, or the reason every new session is refused with (e.g. CHK-2).
        self.admit = admit
        # Offline CA: which issuer signs LSCs ("capf" | "offline"), and the retry-later delay.
        self.issuer_mode = issuer_mode or (lambda: "capf")
        self.retry_delay = retry_delay
        self.on_session_end = on_session_end

    @property
    def port(self) -> int:
        return self._listener.port or self._port

    @property
    def active_connections(self) -> int:
        return self._active

    async def start(self) -> "CapfServer":
        await self._listener.start(self.host, self._port, reuse_port=self.reuse_port)
        return self

    async def close(self) -> None:
        await self._listener.close()

    async def __aenter__(self) -> "CapfServer":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- admission -----------------------------------------------------------------------------

    def _admit_connection(self, source: str) -> str | None:
        """None: taken, its slot reserved (released by _on_connection); else why it is refused."""
        if self._active >= self.max_connections:
            return f"connection limit ({self.max_connections}) reached"
        if self._per_source[source] >= self.max_per_source:
            return f"{source} already has {self.max_per_source} connections"
        self._active += 1
        self._per_source[source] += 1
        return None

    def _log_refusal(self, source: str, why: str) -> None:
        self.refused_connections += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= 5.0:  # a flood must not flood the log too
            self._last_refusal_log = now
            log.warning("CAPF: refusing connections: %s (%d refused so far)", why, self.refused_connections)

    async def _on_connection(self, conn: socket.socket, source: str) -> None:
        loop = asyncio.get_running_loop()
        writer = None
        try:
            conn.setblocking(False)
            reader = asyncio.StreamReader(limit=READ_CHUNK * 2)
            protocol = asyncio.StreamReaderProtocol(reader)
            try:
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol, conn, ssl=self.ssl_context, ssl_handshake_timeout=self.handshake_timeout)
            except (ConnectionError, ssl.SSLError, OSError, TimeoutError) as exc:
                log.debug("CAPF: TLS handshake with %s failed: %r", source, exc)
                conn.close()
                return
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            delay = self.retry_delay() if callable(self.retry_delay) else self.retry_delay
            session = CapfServerSession(next(self._session_ids) & 0xFFFFFFFF, now=loop.time(),
                                        issuer_mode=self.issuer_mode(), retry_delay=delay,
                                        idle_timeout=self.idle_timeout, session_timeout=self.session_timeout)
            try:
                await self._run(session, reader, writer)
            except (ConnectionError, ssl.SSLError, OSError) as exc:
                session.error = session.error or f"connection lost: {exc!r}"
            self._remember(_record(session, source))
        except asyncio.CancelledError:
            pass  # the server is closing: end quietly
        finally:
            self._active -= 1
            self._per_source[source] -= 1
            if self._per_source[source] <= 0:
                del self._per_source[source]
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(writer.wait_closed(), 2)

    # -- one session ---------------------------------------------------------------------------

    async def _run(self, session: CapfServerSession, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        refusal = self.admit() if self.admit is not None else None
        if refusal is not None:
            session.refuse(Reason.INVALID_ELEMENT, refusal)
            await self._flush(session, writer)
            return
        session.start(loop.time())
        await self._flush(session, writer)
        while not session.finished:
            try:
                async with asyncio.timeout_at(session.deadline or loop.time()):
                    chunk = await reader.read(READ_CHUNK)
            except TimeoutError:
                events = session.tick(loop.time())
            else:
                events = session.receive_data(chunk, loop.time()) if chunk else session.receive_eof(loop.time())
            await self._handle(session, events)
            await self._flush(session, writer)

    @staticmethod
    async def _flush(session: CapfServerSession, writer: asyncio.StreamWriter) -> None:
        data = session.data_to_send()
        if data:
            writer.write(data)  # whole messages in one write, as phones expect
            await writer.drain()

    async def _handle(self, session: CapfServerSession, events: list[object]) -> None:
        """Answer the session's decision requests and act on its facts, in order, before any of
        what it queued is sent (so a phone hears "done" only after the write committed)."""
        loop = asyncio.get_running_loop()
        queue = collections.deque(events)
        while queue:
            event = queue.popleft()
            if session.pending is event:
                try:
                    async with asyncio.timeout_at(session.deadline or loop.time()):
                        answer = await self._decide(session, event)
                except TimeoutError:  # the session's time is up (or the store gave up)
                    ended = session.tick(loop.time())
                    queue.extend(ended or session.decision_failed("timed out", now=loop.time()))
                    continue
                except Exception as exc:  # the store or issuer failed: the phone hears reason 7
                    log.exception("CAPF session %s: %s failed", session.session_id, type(event).__name__)
                    queue.extend(session.decision_failed(str(exc) or type(exc).__name__, now=loop.time()))
                    continue
                queue.extend(answer(loop.time()))
            elif isinstance(event, AuthenticationRefused):
                await self._record_safely(self.store.record_auth_failure(event.operation.op_id, event.reason))
            elif isinstance(event, OperationFailed):
                await self._record_safely(self.store.mark_failed(event.operation.op_id, event.reason))

    async def _decide(self, session: CapfServerSession, event: object) -> Callable[[float], list[object]]:
        """Ask the store / issuer; return how to answer the session (called with the time)."""
        store, issuer = self.store, self.issuer
        if isinstance(event, OperationLookupRequested):
            lookup = await store.find_operation(event.device_name)
            return lambda now: session.operation_looked_up(lookup, now)
        if isinstance(event, AuthStringCheckRequested):
            check = await store.check_auth_string(event.operation.op_id, event.auth_string)
            return lambda now: session.auth_string_checked(check, now)
        if isinstance(event, DeviceCertificateCheckRequested):
            try:
                kind = issuer.classify_device_certificate(event.operation.device_name, event.certificate,
                                                          event.claimed_type)
            except CapfAuthError as exc:
                why = str(exc)
                return lambda now: session.certificate_refused(why, now)
            return lambda now: session.certificate_verified(kind, now)
        if isinstance(event, IssuanceRequested):
            op = event.operation
            fresh = await issuer.issue_lsc(op.device_name, event.public_key_der)
            tied = await store.record_issued(op.op_id, op.device_name, fresh)
            return lambda now: session.certificate_issued(tied, now)
        if isinstance(event, CsrReceived):
            await store.record_csr(event.operation.op_id, event.operation.device_name, event.csr_der)
            return lambda now: session.csr_kept(now)
        if isinstance(event, CompletionReported):
            await store.mark_done(event.operation.op_id, event.outcome, event.certificate_der)
            return lambda now: session.completion_recorded(now)
        raise RuntimeError(f"unknown CAPF decision {event!r}")

    @staticmethod
    async def _record_safely(write: Awaitable[object]) -> None:
        try:
            await write
        except Exception:  # the session ends anyway; the failure is logged, not hidden
            log.exception("CAPF: could not record a session outcome")

    def _remember(self, rec: SessionRecord) -> None:
        log.info("CAPF session %s device=%s end=%s %s", rec.session_id, rec.device_name, rec.end_reason,
                 rec.error or "")
        self.sessions.append(rec)
        if self.on_session_end is not None:
            try:
                self.on_session_end(rec)
            except Exception:
                log.exception("CAPF: session listener failed")


# ---------------------------------------------------------------------------------------------
# Phone side


async def capf_client_run(host: str, port: int, ssl_context: ssl.SSLContext, phone_session: CapfPhoneSession,
                          *, timeout: float = 30.0, local_addr: tuple[str, int] | None = None,
                          key_factory: Callable[[KeySpec], object] | None = None) -> int | None:
    """Run the phone side of one CAPF session; returns the server's END_SESSION reason (None
    after a retry-later). `timeout` bounds connecting and the TLS handshake; the session's own
    timer bounds the rest. Keys are generated off the event loop (`key_factory`, default
    `KeySpec.generate`). Raises CapfProtocolError on a bad server, TimeoutError, or
    ConnectionError if cut short.
    """
    loop = asyncio.get_running_loop()
    generate = key_factory or KeySpec.generate
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl_context, server_hostname=host,
                                                       local_addr=local_addr)
    try:
        phone_session.start(loop.time())
        while not phone_session.finished:
            wait = (phone_session.deadline or loop.time()) - loop.time()
            try:
                chunk = await asyncio.wait_for(reader.read(READ_CHUNK), max(wait, 0.0))
            except TimeoutError:
                phone_session.tick(loop.time())
                raise TimeoutError(f"CAPF server {host}:{port} did not finish the session in time") from None
            now = loop.time()
            events = phone_session.receive_data(chunk, now) if chunk else phone_session.receive_eof(now)
            for event in events:
                if isinstance(event, KeyGenerationRequested):
                    key = await asyncio.to_thread(generate, event.spec)
                    phone_session.key_generated(key, loop.time())
            data = phone_session.data_to_send()
            if data:
                writer.write(data)  # each message whole, in one write
                await writer.drain()
        return phone_session.end_reason
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 2)


async def capf_client_enroll(host: str, port: int, ssl_context: ssl.SSLContext, phone: PhoneCredentials, *,
                             timeout: float = 30.0, max_sessions: int = 5, max_delay: float = 3600.0,
                             sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                             local_addr: tuple[str, int] | None = None,
                             ) -> list[CapfPhoneSession]:
    """Run CAPF sessions for `phone` until one ends with END_SESSION, reconnecting after each
    retry-later (offline CA) once its delay has passed (capped at `max_delay`), at most
    `max_sessions` sessions. The phone keeps its pending key between sessions.

    Returns every session in order; the last one's `end_reason` is the outcome (None with
    `retry_after` set if the sessions ran out while the server still said retry later).
    """
    if max_sessions < 1:
        raise ValueError("max_sessions must be at least 1")
    sessions: list[CapfPhoneSession] = []
    for _ in range(max_sessions):
        session = CapfPhoneSession(phone, timeout=timeout)
        sessions.append(session)
        await capf_client_run(host, port, ssl_context, session, timeout=timeout, local_addr=local_addr)
        if session.retry_after is None:
            break
        if len(sessions) < max_sessions:
            await sleep(min(float(session.retry_after), max_delay))
    return sessions


__all__ = [
    "DEFAULT_PORT", "CapfIssuer", "CapfOperationsStore", "CapfServer", "SessionEnded", "SessionRecord",
    "capf_client_enroll", "capf_client_run", "capf_phone_ssl_context", "capf_server_ssl_context",
]

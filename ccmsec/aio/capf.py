"""Thin asyncio adapters for CAPF over TLS (TCP 3804): `CapfServer`, `capf_client_run` (one
session) and `capf_client_enroll` (sessions until done, honouring the server's retry-later).

All protocol decisions live in ccmsec.wire.capf; this module moves bytes, enforces time limits
(TLS handshake, per-read idle time, whole session) and caps concurrent connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ccmsec.pki.tls import new_context
from ccmsec.wire.capf import (
    CapfIssuer, CapfOperationsStore, CapfPhoneSession, CapfProtocolError, CapfServerSession, FrameReader,
    PhoneCredentials, Reason,
)

log = logging.getLogger("ccmsec.capf")

READ_CHUNK = 4096
DEFAULT_PORT = 3804


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


class CapfServer:
    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext, store: CapfOperationsStore,
                 issuer: CapfIssuer, *, handshake_timeout: float = 10.0, idle_timeout: float = 30.0,
                 session_timeout: float = 120.0, max_connections: int = 512, history: int = 1000,
                 admit: Callable[[], str | None] | None = None,
                 issuer_mode: Callable[[], str] | None = None, retry_delay: Callable[[], int] | int = 600):
        self.host, self._port = host, port
        self.ssl_context = ssl_context
        self.store, self.issuer = store, issuer
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.session_timeout = session_timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._server: asyncio.AbstractServer | None = None
        self._session_ids = itertools.count(secrets.randbelow(1 << 24) + 1)
        self._tasks: set[asyncio.Task] = set()
        self.sessions: list[SessionRecord] = []
        self._history = history
        # admit() -> None to serve, or the reason every new session is refused with (e.g. CHK-2).
        self.admit = admit
        # Offline CA (ccmsec.wire.capf): which issuer signs LSCs, and the retry-later delay.
        self.issuer_mode = issuer_mode
        self.retry_delay = retry_delay

    @property
    def port(self) -> int:
        if self._server and self._server.sockets:
            return self._server.sockets[0].getsockname()[1]
        return self._port

    async def start(self) -> "CapfServer":
        self._server = await asyncio.start_server(
            self._on_connection, self.host, self._port, ssl=self.ssl_context,
            ssl_handshake_timeout=self.handshake_timeout, limit=READ_CHUNK * 4,
        )
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def __aenter__(self) -> "CapfServer":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if self._slots.locked():
                log.warning("CAPF: connection limit reached, refusing %s", writer.get_extra_info("peername"))
                return
            async with self._slots:
                delay = self.retry_delay() if callable(self.retry_delay) else self.retry_delay
                session = CapfServerSession(next(self._session_ids) & 0xFFFFFFFF, self.store, self.issuer,
                                            issuer_mode=self.issuer_mode, retry_delay=delay)
                try:
                    async with asyncio.timeout(self.session_timeout):
                        await self._run(session, reader, writer)
                except TimeoutError:
                    session.error = session.error or "session timed out"
                except (ConnectionError, ssl.SSLError, OSError) as exc:
                    session.error = session.error or f"connection lost: {exc!r}"
                self._remember(session)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)
            if task is not None:
                self._tasks.discard(task)

    async def _run(self, session: CapfServerSession, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
        refusal = self.admit() if self.admit is not None else None
        if refusal is not None:
            await self._send(writer, session.refuse(Reason.INVALID_ELEMENT, refusal))
            return
        frames_in = FrameReader()
        await self._send(writer, session.start())
        while not session.finished:
            try:
                chunk = await asyncio.wait_for(reader.read(READ_CHUNK), self.idle_timeout)
            except TimeoutError:
                session.error = "phone idle too long"
                return
            try:
                if not chunk:
                    frames_in.at_eof()
                    session.error = session.error or "phone closed the connection"
                    return
                frames = frames_in.feed(chunk)
            except CapfProtocolError as exc:
                await self._send(writer, session.abort(exc))
                return
            for frame in frames:
                await self._send(writer, await session.handle(frame))
                if session.finished:
                    break

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, frames: list[bytes]) -> None:
        for data in frames:  # one write per message, as phones expect
            writer.write(data)
        if frames:
            await writer.drain()

    def _remember(self, session: CapfServerSession) -> None:
        rec = SessionRecord(session.session_id, session.device_name, session.end_reason, session.error,
                            session.retry_after)
        log.info("CAPF session %s device=%s end=%s %s", rec.session_id, rec.device_name, rec.end_reason,
                 rec.error or "")
        self.sessions.append(rec)
        del self.sessions[:-self._history]


async def capf_client_run(host: str, port: int, ssl_context: ssl.SSLContext, phone_session: CapfPhoneSession,
                          *, timeout: float = 30.0, drop_on=None) -> int | None:
    """Run the phone side of one CAPF session; returns the server's END_SESSION reason.

    `drop_on(frame)` (tests): return True to drop the connection on receiving that frame, unhandled.
    Raises CapfProtocolError on a bad server, TimeoutError, or ConnectionError if cut short.
    """
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl_context, server_hostname=host)
        try:
            frames_in = FrameReader()
            while not phone_session.finished:
                chunk = await reader.read(READ_CHUNK)
                if not chunk:
                    frames_in.at_eof()
                    raise ConnectionError("CAPF server closed the connection before END_SESSION")
                for frame in frames_in.feed(chunk):
                    if drop_on is not None and drop_on(frame):
                        raise ConnectionAbortedError(f"dropped on {frame.command.name} (test)")
                    out = phone_session.receive(frame)
                    for data in out:
                        writer.write(data)
                    await writer.drain()
                    if phone_session.finished:
                        break
            return phone_session.end_reason
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)


async def capf_client_enroll(host: str, port: int, ssl_context: ssl.SSLContext, phone: PhoneCredentials, *,
                             timeout: float = 30.0, max_sessions: int = 5, max_delay: float = 3600.0,
                             sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
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
        session = CapfPhoneSession(phone)
        sessions.append(session)
        await capf_client_run(host, port, ssl_context, session, timeout=timeout)
        if session.retry_after is None:
            break
        if len(sessions) < max_sessions:
            await sleep(min(float(session.retry_after), max_delay))
    return sessions

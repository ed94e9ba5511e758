"""The CTL Provider's TLS listener (port 2444): a thin asyncio adapter over
ccmsec.wire.ctlprovider.

Authentication: the server presents its cluster-CA service certificate; the client (the CTL client,
an administrator tool) must present a certificate issued by the cluster CA — a TLS client without
one fails the handshake — and that certificate must state the identity of the administration path,
`cli` or `admin-api` (`CTL_CLIENT_ROLES`): any other identity of the cluster (a service's) gets an
UNAUTHORIZED answer naming it, and the refusal is logged.
While the service is not activated (CHK-1) every request is answered with a NOT_ACTIVATED error.

Connections are counted from accept, before the TLS handshake (at most `MAX_CONNECTIONS`, and
`MAX_PER_SOURCE` from one address): clients that connect and never finish a handshake would
otherwise hold a descriptor each for the handshake timeout, without limit. One over the limit
is closed at once, at no handshake's cost.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import ssl
import time
from typing import Awaitable, Callable

from ccmsec.aio.listener import AdmittingListener
from ccmsec.pki.tls import new_context
from cryptography import x509

from ccmsec.runtime.identity import IdentityError, TlsIdentity, identity_of
from ccmsec.wire.ctlprovider import (
    CertificateEntry,
    ErrorCode,
    ProviderProtocolError,
    ProviderServerSession,
)

from ccmsec_ctl_provider.certificates import CertificateUnavailable

log = logging.getLogger("ccmsec.ctl-provider")

READ_TIMEOUT = 10.0
MAX_CONNECTIONS = 64
MAX_PER_SOURCE = 16      # one address cannot take every slot from the others
CTL_CLIENT_ROLES = ("cli", "admin-api")   # the CTL client is an administrator's tool
NOT_ACTIVATED_MESSAGE = ("the CTL Provider service is not activated on server {node} (CHK-1); "
                         "activate it with `ccmsec ctl provider activate`")


def server_ssl_context(identity: TlsIdentity) -> ssl.SSLContext:
    ctx = new_context(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(identity.cert_path, identity.key_path)
    ctx.load_verify_locations(cafile=str(identity.ca_path))
    ctx.verify_mode = ssl.CERT_REQUIRED  # only holders of a cluster-CA certificate may ask
    return ctx


class ProviderListener:
    def __init__(self, node: str, ssl_context: ssl.SSLContext, *, is_active: Callable[[], bool],
                 certificates: Callable[[], Awaitable[list[CertificateEntry]]]):
        self.node = node
        self._ssl = ssl_context
        self._is_active = is_active
        self._certificates = certificates
        self._listener = AdmittingListener("CTL Provider port", self._admit, self._serve,
                                           on_refused=self._turned_away)
        self._open = 0
        self._per_source: collections.Counter[str] = collections.Counter()
        self.answered = 0
        self.refused = 0
        self.turned_away = 0   # connections closed at accept: over a limit
        self._last_turned_away_log = 0.0

    async def start(self, host: str, port: int) -> None:
        await self._listener.start(host, port, backlog=128)

    @property
    def port(self) -> int:
        return self._listener.port or 0

    async def close(self) -> None:
        await self._listener.close()

    async def _answer(self, session: ProviderServerSession) -> bytes:
        if not self._is_active():
            self.refused += 1
            return session.refuse(ErrorCode.NOT_ACTIVATED, NOT_ACTIVATED_MESSAGE.format(node=self.node))
        try:
            entries = await self._certificates()
        except CertificateUnavailable as exc:
            self.refused += 1
            return session.refuse(ErrorCode.UNAVAILABLE, str(exc))
        self.answered += 1
        return session.answer(self.node, entries)

    @staticmethod
    def caller_refusal(writer: asyncio.StreamWriter) -> str:
        """"" when the TLS peer is the administration path (cli, admin-api), else why it is refused."""
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            return "no client certificate"
        try:
            caller = identity_of(x509.load_der_x509_certificate(der), purpose="client")
        except (IdentityError, ValueError) as exc:
            return f"the client certificate states no identity: {exc}"
        if caller.role not in CTL_CLIENT_ROLES:
            return (f"{caller} ({caller.uri}) may not use the CTL Provider: only the CTL client of "
                    f"the administration path ({' or '.join(CTL_CLIENT_ROLES)}) may")
        return ""

    def _admit(self, source: str) -> str | None:
        """None: taken, its slot reserved (released by _serve); else why it is closed at once."""
        if self._open >= MAX_CONNECTIONS:
            return f"{self._open} connections open"
        if self._per_source[source] >= MAX_PER_SOURCE:
            return f"{self._per_source[source]} connections from it"
        self._open += 1
        self._per_source[source] += 1
        return None

    def _turned_away(self, source: str, why: str) -> None:
        self.turned_away += 1
        now = time.monotonic()
        if now - self._last_turned_away_log >= 5.0:   # a flood must not flood the log too
            self._last_turned_away_log = now
            log.warning("CTL Provider port: connection from %s closed at accept (%s; %d turned away so far)",
                        source, why, self.turned_away)

    async def _serve(self, conn: socket.socket, source: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            conn.setblocking(False)
            reader = asyncio.StreamReader()
            protocol = asyncio.StreamReaderProtocol(reader)
            try:
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol, conn, ssl=self._ssl, ssl_handshake_timeout=READ_TIMEOUT)
            except (asyncio.TimeoutError, ConnectionError, ssl.SSLError, OSError):
                conn.close()   # no certificate, a wrong one, or no handshake in time
                return
            await self._handle(reader, asyncio.StreamWriter(transport, protocol, reader, loop))
        finally:
            self._open -= 1
            self._per_source[source] -= 1
            if self._per_source[source] <= 0:
                del self._per_source[source]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = ProviderServerSession()
        refusal = self.caller_refusal(writer)
        try:
            while True:
                data = await asyncio.wait_for(reader.read(4096), READ_TIMEOUT)
                if not data:
                    return
                try:
                    requests = session.receive(data)
                except ProviderProtocolError as exc:
                    writer.write(session.refuse(ErrorCode.BAD_REQUEST, str(exc)))
                    await writer.drain()
                    return
                for _ in requests:
                    if refusal:
                        self.refused += 1
                        log.warning("refused a CTL client: %s", refusal,
                                    extra={"peer": str(writer.get_extra_info("peername"))})
                        writer.write(session.refuse(ErrorCode.UNAUTHORIZED, refusal))
                        await writer.drain()
                        return
                    writer.write(await self._answer(session))
                    await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, ssl.SSLError, OSError):
            pass  # a silent, slow or broken client only loses its own connection
        finally:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1)
            except (asyncio.TimeoutError, ConnectionError, ssl.SSLError, OSError):
                pass

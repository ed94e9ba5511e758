"""The CTL Provider's TLS listener (port 2444): a thin asyncio adapter over
ccmsec.wire.ctlprovider.

Authentication: the server presents its cluster-CA service certificate; the client (the CTL client,
an administrator tool) must present a certificate issued by the cluster CA — a TLS client without
one fails the handshake — and that certificate must state the identity of the administration path,
`cli` or `admin-api` (`CTL_CLIENT_ROLES`): any other identity of the cluster (a service's) gets an
UNAUTHORIZED answer naming it, and the refusal is logged.
While the service is not activated (CHK-1) every request is answered with a NOT_ACTIVATED error.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Awaitable, Callable

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
        self._server: asyncio.base_events.Server | None = None
        self._open = 0
        self.answered = 0
        self.refused = 0

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port, ssl=self._ssl,
                                                  ssl_handshake_timeout=READ_TIMEOUT)

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1] if self._server else 0

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2)
            except asyncio.TimeoutError:
                pass

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

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = ProviderServerSession()
        refusal = self.caller_refusal(writer)
        self._open += 1
        try:
            if self._open > MAX_CONNECTIONS:
                writer.write(session.refuse(ErrorCode.UNAVAILABLE, "too many connections; retry"))
                await writer.drain()
                return
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
            self._open -= 1
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1)
            except (asyncio.TimeoutError, ConnectionError, ssl.SSLError, OSError):
                pass

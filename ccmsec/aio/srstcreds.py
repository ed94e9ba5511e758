"""The SRST credentials service (TLS 2445) and its client — thin asyncio adapters over
`ccmsec.wire.srstcreds`.

Server: presents the SRST router's self-signed certificate and answers every GetCertificate with
it. One request per connection, which must arrive whole within `read_timeout` of the handshake,
and a bounded number of connections; an address outside `allow` (when given) is refused with a
reason, as the router only answers the call-control servers it was told about.

Client (`fetch_srst_certificate`): the certificate is self-signed, so nothing can vouch for it on
the first fetch — the administrator's act of configuring security is the trust decision (the
source system works the same way). What the client does check: the TLS handshake completes, the
certificate in the answer is byte for byte the one the TLS server presented, it is self-signed
(its signature verifies with its own key) and valid now. A stored fingerprint given as `expected`
must match, or `SrstCertificateChanged` is raised (the caller asks for confirmation).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import ipaddress
import logging
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from ccmsec.pki.ca import Issued, fingerprint_sha256
from ccmsec.pki.tls import new_context
from ccmsec.wire.srstcreds import (
    Certificate,
    CredentialsClientSession,
    CredentialsError,
    CredentialsProtocolError,
    CredentialsServerSession,
)

log = logging.getLogger("ccmsec.srst.credentials")

READ_SIZE = 4096
READ_TIMEOUT = 10.0
MAX_CONNECTIONS = 32


class SrstCredentialsError(Exception):
    """The SRST certificate could not be fetched or is not acceptable (the message says why)."""


class SrstUnreachable(SrstCredentialsError):
    pass


class SrstCertificateChanged(SrstCredentialsError):
    def __init__(self, host: str, port: int, expected: str, found: x509.Certificate) -> None:
        self.expected = expected
        self.found = found
        self.fingerprint = fingerprint_sha256(found)
        super().__init__(
            f"the SRST certificate at {host}:{port} changed: stored sha256 {expected}, offered "
            f"{self.fingerprint}; confirm the new certificate to accept it")


@dataclass(frozen=True)
class FetchedCertificate:
    certificate: x509.Certificate
    der: bytes
    fingerprint: str


def _server_context(identity: Issued) -> ssl.SSLContext:
    ctx = new_context(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    from ccmsec.pki.tls import _load_identity  # one loader for every listener's identity

    _load_identity(ctx, identity)
    return ctx


class CredentialsServer:
    def __init__(self, identity: Issued, *, allow: tuple[str, ...] = (),
                 max_connections: int = MAX_CONNECTIONS, read_timeout: float = READ_TIMEOUT) -> None:
        self.identity = identity
        self.der = identity.cert.public_bytes(serialization.Encoding.DER)
        self.allow = tuple(ipaddress.ip_network(a, strict=False) for a in allow)
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self._ssl = _server_context(identity)
        self._server: asyncio.base_events.Server | None = None
        self._open = 0
        self.answered = 0
        self.refused = 0

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port, ssl=self._ssl,
                                                  ssl_handshake_timeout=self.read_timeout)

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
            self._server = None

    def _allowed(self, peer) -> bool:
        if not self.allow:
            return True
        try:
            address = ipaddress.ip_address(peer[0])
        except (TypeError, ValueError, IndexError):
            return False
        return any(address in net for net in self.allow)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if self._open >= self.max_connections:
            writer.close()
            return
        self._open += 1
        session = CredentialsServerSession()
        try:
            asked = None
            # one deadline for the whole request, not one per read: a peer dribbling a byte at a
            # time would otherwise hold one of the `max_connections` slots for many minutes
            async with asyncio.timeout(self.read_timeout):
                while asked is None:
                    data = await reader.read(READ_SIZE)
                    if not data:
                        return
                    asked = session.receive(data)
            if not self._allowed(peer):
                self.refused += 1
                log.warning("SRST credentials refused", extra={"peer": str(peer), "client": asked.client})
                writer.write(session.refuse(f"{peer[0]} may not ask for this router's credentials"))
            else:
                self.answered += 1
                log.info("SRST certificate served", extra={"peer": str(peer), "client": asked.client})
                writer.write(session.answer(self.der))
            await writer.drain()
        except (CredentialsProtocolError, asyncio.TimeoutError, ConnectionError, ssl.SSLError) as exc:
            log.info("SRST credentials connection dropped", extra={"peer": str(peer), "error": str(exc)})
        finally:
            self._open -= 1
            writer.close()


def check_srst_certificate(cert: x509.Certificate, now: _dt.datetime | None = None) -> None:
    """Self-signed and valid now; raises SrstCredentialsError otherwise."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    if cert.issuer != cert.subject:
        raise SrstCredentialsError("the SRST certificate is not self-signed (issuer differs from subject)")
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise SrstCredentialsError(f"the SRST certificate's self-signature does not verify ({exc})") from None
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SrstCredentialsError(
            f"the SRST certificate is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d})")


async def fetch_srst_certificate(host: str, port: int = 2445, *, expected: str = "",
                                 client: str = "callmanager", timeout: float = 10.0) -> FetchedCertificate:
    """Ask the router's credentials service for its certificate (see the module docstring)."""
    ctx = new_context(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # self-signed: checked below, against the answer and `expected`
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=None), timeout)
    except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
        raise SrstUnreachable(f"SRST credentials service {host}:{port} unreachable: "
                              f"{str(exc) or type(exc).__name__}") from None
    try:
        presented = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        session = CredentialsClientSession(client)
        writer.write(session.request())
        await writer.drain()
        answer = None
        async with asyncio.timeout(timeout):
            while answer is None:
                data = await reader.read(READ_SIZE)
                if not data:
                    raise SrstCredentialsError(f"SRST {host}:{port} closed the connection without an answer")
                answer = session.receive(data)
    except (TimeoutError, asyncio.TimeoutError):
        raise SrstUnreachable(f"SRST credentials service {host}:{port}: no answer within {timeout:g} s") from None
    except (ConnectionError, ssl.SSLError) as exc:
        raise SrstUnreachable(f"SRST credentials service {host}:{port}: {exc}") from None
    except CredentialsProtocolError as exc:
        raise SrstCredentialsError(f"SRST {host}:{port} answered garbage: {exc}") from None
    finally:
        writer.close()
    if isinstance(answer, CredentialsError):
        raise SrstCredentialsError(f"SRST {host}:{port} refused: {answer.reason}")
    assert isinstance(answer, Certificate)
    try:
        cert = answer.certificate()
    except CredentialsProtocolError as exc:
        raise SrstCredentialsError(f"SRST {host}:{port}: {exc}") from None
    if answer.der != presented:
        raise SrstCredentialsError(f"SRST {host}:{port} answered a certificate other than the one its "
                                   "TLS server presented")
    check_srst_certificate(cert)
    fingerprint = fingerprint_sha256(cert)
    if expected and expected.lower() != fingerprint.lower():
        raise SrstCertificateChanged(host, port, expected, cert)
    return FetchedCertificate(cert, answer.der, fingerprint)

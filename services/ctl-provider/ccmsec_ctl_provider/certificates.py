"""Gathering the certificates this CTL Provider answers with.

For each server role of the cluster the provider asks the service itself over mutual-TLS gRPC and
falls back to the certificate file that service keeps in the shared data directory when the service
is down or not started yet (or answers with something that is not a DER certificate); a file that
cannot be read either is CertificateUnavailable naming it (the certificates never change once issued — CERT-5, CHK-2). Each
certificate's path is logged ("certificate over gRPC" / "certificate from file", with the RPC's
error) and shown per role in the status details (`source_CCM=grpc|file`):

    CallManager  CallManager/GetServerCertificate   DATA/servers/callmanager/ccmserver.cer (DER)
    TFTP         TftpSigner/GetSigningCertificate   DATA/servers/tftp-signer/ccmserver.cer (DER)
    CAPF         Capf/GetCapfCertificate            DATA/pki/capf.crt (PEM)

DNS name = the service's host name (its role, as in compose); IPv4 = its address from CCMSEC_PEERS.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ccmsec.formats.ctl import Role
from ccmsec.wire.ctlprovider import CertificateEntry
from ccmsec_proto import common_pb2

log = logging.getLogger("ccmsec.ctl-provider")
RPC_TIMEOUT = 3.0


class CertificateUnavailable(Exception):
    """A server certificate can be obtained neither from its service nor from its file."""


@dataclass(frozen=True)
class Source:
    role: Role
    service: str          # topology role of the service holding the certificate
    rpc: str              # full gRPC method returning ccmsec.v1.Certificate
    fallback: str         # path relative to the data directory

    def file(self, data_dir: Path) -> Path:
        return Path(data_dir) / self.fallback


SOURCES = (
    Source(Role.CCM, "callmanager", "/ccmsec.v1.CallManager/GetServerCertificate",
           "servers/callmanager/ccmserver.cer"),
    Source(Role.TFTP, "tftp-signer", "/ccmsec.v1.TftpSigner/GetSigningCertificate",
           "servers/tftp-signer/ccmserver.cer"),
    Source(Role.CAPF, "capf", "/ccmsec.v1.Capf/GetCapfCertificate", "pki/capf.crt"),
)


def load_certificate_file(path: Path) -> bytes:
    """DER bytes of a DER or PEM certificate file."""
    raw = Path(path).read_bytes()
    try:
        cert = (x509.load_pem_x509_certificate(raw) if raw.lstrip().startswith(b"-----BEGIN")
                else x509.load_der_x509_certificate(raw))
    except ValueError as exc:
        raise CertificateUnavailable(f"{path} is not a certificate: {exc}") from None
    return cert.public_bytes(serialization.Encoding.DER)


def _ipv4(host: str) -> str | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return str(address) if address.version == 4 else None


ChannelFor = Callable[[str], grpc.aio.Channel]


async def _from_rpc(channel: grpc.aio.Channel, method: str) -> bytes:
    call = channel.unary_unary(method, request_serializer=common_pb2.Empty.SerializeToString,
                               response_deserializer=common_pb2.Certificate.FromString)
    reply = await call(common_pb2.Empty(), timeout=RPC_TIMEOUT)
    if not reply.der:
        raise CertificateUnavailable(f"{method} returned no certificate")
    try:
        x509.load_der_x509_certificate(reply.der).public_key()
    except ValueError as exc:
        raise CertificateUnavailable(f"{method} returned a certificate that is not DER X.509 ({exc})") from None
    return reply.der


async def gather(data_dir: Path, channel_for: ChannelFor, host_for: Callable[[str], str],
                 sources: tuple[Source, ...] = SOURCES) -> tuple[list[CertificateEntry], dict[str, str]]:
    """Every server certificate with role, DNS name and IPv4; and where each came from."""

    async def one(source: Source) -> tuple[CertificateEntry, str]:
        host = host_for(source.service)
        try:
            der = await _from_rpc(channel_for(source.service), source.rpc)
            origin = "grpc"
            log.info("certificate over gRPC", extra={"role": source.role.label, "node": source.service,
                                                     "rpc": source.rpc})
        except (grpc.aio.AioRpcError, CertificateUnavailable, asyncio.TimeoutError) as exc:
            reason = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            path = source.file(data_dir)
            try:
                der = load_certificate_file(path)
            except FileNotFoundError:
                raise CertificateUnavailable(
                    f"the {source.role.label} certificate is not available: {source.service} "
                    f"did not answer ({reason}) and {path} does not exist yet") from None
            except OSError as exc:  # unreadable (permissions, a folder): say so, never a bare OSError
                raise CertificateUnavailable(
                    f"the {source.role.label} certificate is not available: {source.service} "
                    f"did not answer ({reason}) and {path} cannot be read ({exc.strerror or exc})") from None
            origin = "file"
            log.info("certificate from file", extra={"role": source.role.label, "node": source.service,
                                                     "path": str(path), "rpc_error": reason})
        return CertificateEntry(source.role, source.service, _ipv4(host), der), origin

    results = await asyncio.gather(*(one(s) for s in sources))
    return [entry for entry, _ in results], {s.role.label: origin for s, (_, origin)
                                             in zip(sources, results)}


def _addresses_and_name(der: bytes) -> tuple[set[str], str]:
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    except x509.ExtensionNotFound:
        ips = set()
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return ips, str(cn[0].value) if cn else ""


async def gather_call_control_nodes(data_dir: Path, hosts: list[str], publisher: str,
                                    channel_to: Callable[[str], grpc.aio.Channel],
                                    resolve: Callable[[str], str] = lambda host: host,
                                    ) -> tuple[list[CertificateEntry], dict[str, str]]:
    """LATER-7: a CallManager record for every other node of the CallManager group (the
    subscribers), so a secure phone failing over to one of them finds its certificate in the CTL
    (AUTH-2). A node is named by its address (the local runner) or by its host name (compose's
    service name, `resolve`d to the address the record carries). Each node is asked over gRPC;
    when it does not answer, the certificate file a node keeps in DATA/servers/<node>/ is taken
    whose IP address is the node's, or whose server name is the node's host name (in compose a
    node listens on every address, so its certificate carries its name, not an address). The
    file stays as the fallback for a node that is down or restarting: its certificate is never
    re-issued (CERT-5), so the file is what the node would answer. Also returns where each node's
    certificate came from (`CCM@<node>` -> grpc | file), and logs it."""
    entries: list[CertificateEntry] = []
    origins: dict[str, str] = {}
    publisher_address = resolve(publisher) if publisher else ""
    for host in hosts:
        address = resolve(host)
        if host == publisher or address == publisher_address:
            continue
        try:
            der = await _from_rpc(channel_to(address), SOURCES[0].rpc)
            origins[f"CCM@{host}"] = "grpc"
            log.info("certificate over gRPC", extra={"role": Role.CCM.label, "node": host,
                                                     "rpc": SOURCES[0].rpc})
        except (grpc.aio.AioRpcError, CertificateUnavailable, asyncio.TimeoutError) as exc:
            reason = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            der = _node_file(Path(data_dir), host, address)
            if der is None:
                raise CertificateUnavailable(
                    f"the CallManager certificate of the group's node {host} is not available: it did "
                    f"not answer ({reason}) and no DATA/servers/*/ccmserver.cer is for {host}") from None
            origins[f"CCM@{host}"] = "file"
            log.info("certificate from file", extra={"role": Role.CCM.label, "node": host,
                                                     "rpc_error": reason})
        ips, name = _addresses_and_name(der)
        entries.append(CertificateEntry(Role.CCM, name or host, _ipv4(address), der))
    return entries, origins


def _node_file(data_dir: Path, host: str, address: str = "") -> bytes | None:
    for path in sorted((data_dir / "servers").glob("callmanager*/ccmserver.cer")):
        try:
            der = load_certificate_file(path)
        except (OSError, CertificateUnavailable):
            continue
        ips, name = _addresses_and_name(der)
        if host in ips or (address and address in ips) or (host == name == path.parent.name):
            return der
    return None


Gatherer = Callable[[], Awaitable[list[CertificateEntry]]]

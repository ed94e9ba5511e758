"""The CTL client: collect the servers' certificates, build and sign `CTLFile.tlv`, hand it over.

`ccmsec ctl update` runs `run_update`. In order, refusing with a `CtlClientError` naming the rule:

  1. CTL-1: at least two distinct tokens; the signing token is one of them; no token is locked.
  2. CHK-1: the CTL Provider answers over TLS (port 2444, or the port it reports over gRPC) with
     the cluster's CallManager, TFTP and CAPF certificates (refused while it is not activated).
  3. CTL-2: the signing token is a token of the current CTL, unless `new_trust` (a token outside
     the current list would strand every phone, which only trusts tokens it already knows).
  4. The token is opened with its password (wrong password: the remaining tries are shown).
  5. One record per token (SAST, in the order given), then CallManager, TFTP and CAPF, each with
     every CTL-3 field; signed; parsed and verified again before it leaves this process.
  6. `CtlProvider/CommitCtl` publishes it through the tftp-signer, records it, sets the mode and
     emits the RST-3/RST-4 events (services/ctl-provider/ccmsec_ctl_provider/trust.py).

The same tokens and servers give the same records; only the header timestamp differs.

Passwords: `password` is a string or a callable returning one (asked only after every check that
needs no password passed). `read_password_file` reads a password file: one line = the signing
token's password; several lines = one per `--token`, in order, and the signer's line is used.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ccmsec.domain import ClusterMode, DomainError
from ccmsec.pki.tls import new_context
from ccmsec.formats.ctl import (
    CtlBuildError,
    CtlFile,
    CtlRecord,
    Digest,
    Role,
    build_ctl,
    parse_ctl,
    record_from_certificate,
    verify_ctl,
)
from ccmsec.pki.tokens import (
    TokenError,
    TokenLockedError,
    TokenPasswordError,
    open_token,
    token_info,
)
from ccmsec.wire.ctlprovider import (
    Certificates,
    ErrorCode,
    ProviderClientSession,
    ProviderError,
    ProviderProtocolError,
)

SERVER_ROLES = (Role.CCM, Role.TFTP, Role.CAPF)  # each must be present once at least
PROVIDER_SERVER_NAME = "ctl-provider"  # the SAN the provider's cluster-CA certificate carries
DEFAULT_TIMEOUT = 5.0
MAX_ANSWER = 512 * 1024


class CtlClientError(Exception):
    """A refusal for the administrator: one line naming the problem (and the rule)."""


class ProviderUnreachable(CtlClientError):
    pass


class ProviderRefused(CtlClientError):
    def __init__(self, message: str, code: ErrorCode):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ServerCertificate:
    role: Role
    dns_name: str
    ipv4: str | None
    certificate: x509.Certificate


@dataclass
class UpdateOptions:
    tokens: list[str]
    sign_with: str | None = None
    mode: str | None = None          # None: leave the cluster mode as it is
    new_trust: bool = False
    digest: Digest = Digest.SHA1
    provider: tuple[str, int] | None = None  # override host/port of the TLS provider
    token_dir: Path | None = None
    timeout: float = DEFAULT_TIMEOUT


@dataclass
class UpdateResult:
    ctl: bytes
    version: int
    sha256: str
    mode: str
    previous_mode: str
    published_path: str
    events: list[str] = field(default_factory=list)
    delivery_pending: bool = False  # committed; its events wait for NATS (outbox, issue 9 §4)


# --- pure checks --------------------------------------------------------------------------------
def check_tokens(tokens: list[str], sign_with: str | None) -> str:
    """CTL-1: at least two distinct tokens; returns the signing token's name."""
    distinct = list(dict.fromkeys(tokens))
    if len(distinct) != len(tokens):
        raise CtlClientError("CTL-1: a token is given twice; give each token once")
    if len(distinct) < 2:
        raise CtlClientError(f"CTL-1: the CTL client needs at least two security tokens, got "
                             f"{len(distinct)} (--token T1 --token T2)")
    signer = sign_with or distinct[0]
    if signer not in distinct:
        raise CtlClientError(f"CTL-1: the signing token {signer!r} must be one of the tokens listed "
                             f"in the CTL ({', '.join(distinct)})")
    return signer


def check_signer_trusted(current: CtlFile | None, signer: x509.Certificate, new_trust: bool) -> None:
    """CTL-2: a new CTL must be signed by a token the phones already trust."""
    if current is None or new_trust:
        return
    der = signer.public_bytes(serialization.Encoding.DER)
    if not any(r.certificate_der == der for r in current.records_for_role(Role.TOKEN)):
        listed = ", ".join(r.subject for r in current.records_for_role(Role.TOKEN))
        raise CtlClientError(
            f"CTL-2: the signing token is not in the current CTL (tokens there: {listed}); every "
            "phone would refuse the new file. Sign with one of those tokens, or pass --new-trust "
            "after resetting the phones' trust lists")


def build_records(token_certificates: list[x509.Certificate],
                  servers: list[ServerCertificate]) -> list[CtlRecord]:
    """Tokens first (in the order given), then servers by role (CCM, TFTP, CAPF, others)."""
    missing = [r.label for r in SERVER_ROLES if not any(s.role is r for s in servers)]
    if missing:
        raise CtlClientError(f"the CTL Provider did not supply the {', '.join(missing)} "
                             "certificate(s); the CTL must list CallManager, TFTP and CAPF (CTL-3)")
    ders = [cert.public_bytes(serialization.Encoding.DER) for cert in token_certificates]
    if len(set(ders)) != len(ders):  # two names for one token (a copied token folder)
        twice = next(c for c, d in zip(token_certificates, ders) if ders.count(d) > 1)
        raise CtlClientError(f"CTL-1: two of the tokens given are the same token (one certificate, "
                             f"serial {twice.serial_number:x}); the CTL needs at least two distinct "
                             "security tokens")
    order = {role: n for n, role in enumerate(SERVER_ROLES)}
    records = [record_from_certificate(cert, Role.TOKEN) for cert in token_certificates]
    seen: set[tuple[Role, bytes]] = set()
    for server in sorted(servers, key=lambda s: (order.get(s.role, len(order) + int(s.role)),
                                                 s.dns_name, s.ipv4 or "")):
        record = record_from_certificate(server.certificate, server.role, server.dns_name,
                                         server.ipv4)
        key = (record.role, record.certificate_der)
        if key not in seen:
            seen.add(key)
            records.append(record)
    return records


MAX_PASSWORD_FILE = 64 * 1024


def read_password_file(path: Path, tokens: list[str], signer: str) -> str:
    """One line (the signing token's password) or one line per token; `-` = standard input."""
    try:
        if str(path) == "-":
            import sys

            text = sys.stdin.read(MAX_PASSWORD_FILE + 1)
            where = "standard input"
        else:  # bounded like standard input: `--password-file /dev/zero` must not read forever
            with open(path, encoding="utf-8") as fh:
                text = fh.read(MAX_PASSWORD_FILE + 1)
            where = str(path)
        if len(text) > MAX_PASSWORD_FILE:
            raise CtlClientError(f"{where} holds over {MAX_PASSWORD_FILE} bytes; not a password file")
        lines = [line.rstrip("\r") for line in text.split("\n")]
    except OSError as exc:
        raise CtlClientError(f"cannot read password file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CtlClientError(f"password file {path} is not UTF-8 text") from None
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) <= 1:
        return lines[0] if lines else ""
    if len(lines) != len(tokens):
        raise CtlClientError(f"password file {path} has {len(lines)} lines; give one line (the "
                             f"signing token's password) or one per --token ({len(tokens)})")
    return lines[tokens.index(signer)]


# --- talking to the CTL Provider ------------------------------------------------------------------
def provider_ssl_context(ca_path: Path, cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """Trusts the cluster CA (the provider's certificate) and presents the administrator's
    cluster-CA client certificate (the provider refuses clients without one)."""
    ctx = new_context(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(ca_path))
    ctx.load_cert_chain(str(cert_path), str(key_path))
    ctx.check_hostname = True
    return ctx


def _server_certificates(answer: Certificates) -> list[ServerCertificate]:
    servers = []
    for entry in answer.entries:
        try:
            cert = x509.load_der_x509_certificate(entry.der)
            cert.subject, cert.public_key()
        except Exception as exc:  # the DER parser raises several types on garbage
            raise CtlClientError(f"the CTL Provider sent a {entry.role.label} certificate that is "
                                 f"not DER X.509: {exc}") from None
        servers.append(ServerCertificate(entry.role, entry.dns_name, entry.ipv4, cert))
    return servers


def provider_port(settings, svc: dict) -> int:
    """The CTL Provider's TLS port as this command line reaches it: its own listening port, except
    when it listens on every address (a container) — then the endpoints' port, which is the host
    side of the published port when the endpoints come from a context (`compose client-bundle`)."""
    published = svc.get("ctl_provider_port")
    if published and settings.host in ("0.0.0.0", "::", ""):
        return int(published)
    return settings.listening_port or published or 2444


async def fetch_server_certificates(host: str, port: int, ssl_context: ssl.SSLContext, *,
                                    server_hostname: str = PROVIDER_SERVER_NAME,
                                    timeout: float = DEFAULT_TIMEOUT) -> list[ServerCertificate]:
    """Ask one CTL Provider over TLS for its servers' certificates."""
    where = f"{host}:{port}"
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            host, port, ssl=ssl_context, server_hostname=server_hostname), timeout)
    except asyncio.TimeoutError:
        raise ProviderUnreachable(f"the CTL Provider at {where} did not answer within {timeout:g}s "
                                  "(is the service running and the port right? CHK-1, CHK-3)") from None
    except ssl.SSLError as exc:
        raise ProviderUnreachable(f"TLS with the CTL Provider at {where} failed: {exc.reason or exc}") \
            from None
    except OSError as exc:
        raise ProviderUnreachable(f"cannot connect to the CTL Provider at {where}: "
                                  f"{exc.strerror or exc} (is the service running and the port "
                                  "right? CHK-1, CHK-3)") from None
    session = ProviderClientSession()
    received = 0
    try:
        writer.write(session.request())
        await writer.drain()
        deadline = time.monotonic() + timeout
        result = None
        while result is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError
            data = await asyncio.wait_for(reader.read(65536), remaining)
            if not data:
                raise ProviderUnreachable(f"the CTL Provider at {where} closed the connection "
                                          "without an answer")
            received += len(data)
            if received > MAX_ANSWER:
                raise CtlClientError(f"the CTL Provider at {where} sent more than {MAX_ANSWER} bytes")
            result = session.receive(data)
    except asyncio.TimeoutError:
        raise ProviderUnreachable(f"the CTL Provider at {where} did not answer within "
                                  f"{timeout:g}s") from None
    except ProviderProtocolError as exc:
        raise CtlClientError(f"the CTL Provider at {where} sent a malformed answer: {exc}") from None
    except (ConnectionError, ssl.SSLError) as exc:
        raise ProviderUnreachable(f"the connection to the CTL Provider at {where} broke: {exc}") \
            from None
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 1)
        except (asyncio.TimeoutError, ConnectionError, ssl.SSLError, OSError):
            pass
    if isinstance(result, ProviderError):
        raise ProviderRefused(f"the CTL Provider at {where} refused: {result.message}", result.code)
    return _server_certificates(result)


# --- the whole run ------------------------------------------------------------------------------------
def _mode_name(value: int) -> str:
    try:
        return ClusterMode.from_proto(value).value
    except DomainError:
        return "unknown"


def _mode_enum(mode: str | None) -> int:
    if mode is None:
        return 0  # UNSPECIFIED: leave the cluster mode as it is
    try:
        return ClusterMode.parse(mode).to_proto()
    except DomainError as exc:
        raise CtlClientError(str(exc)) from None


def rpc_error(exc: grpc.aio.AioRpcError, what: str) -> CtlClientError:
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return ProviderUnreachable(f"{what}: the ctl-provider service is not reachable "
                                   f"({exc.details()})")
    return CtlClientError(f"{what}: {exc.details()}")


async def run_update(data_dir: Path, options: UpdateOptions,
                     password: str | Callable[[], str]) -> UpdateResult:
    """The whole CTL client run against the cluster whose data directory is `data_dir`."""
    from ccmsec.cluster.state import read_endpoints
    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import common_pb2, ctl_provider_pb2, ctl_provider_pb2_grpc

    signer_name = check_tokens(options.tokens, options.sign_with)
    mode_enum = _mode_enum(options.mode)
    token_dir = Path(options.token_dir or Path(data_dir) / "tokens")
    token_certs = []
    for name in options.tokens:
        try:
            info = token_info(token_dir, name)
        except TokenError as exc:
            raise CtlClientError(str(exc)) from None
        if info.locked:
            raise CtlClientError(f"token {name!r} is locked after too many wrong passwords; it can "
                                 "no longer sign or be listed — use another token")
        token_certs.append(info.certificate)

    endpoints = read_endpoints(data_dir)
    if not endpoints or PROVIDER_SERVER_NAME not in endpoints.get("services", {}):
        raise ProviderUnreachable(f"no running cluster in {data_dir} (start it with `ccmsec up -d`)")
    svc = endpoints["services"][PROVIDER_SERVER_NAME]
    identity = client_identity(data_dir)
    async with secure_channel(identity, svc["host"], svc["grpc_port"], PROVIDER_SERVER_NAME) as channel:
        stub = ctl_provider_pb2_grpc.CtlProviderStub(channel)
        try:
            settings = await stub.GetProviderSettings(common_pb2.Empty(), timeout=options.timeout)
            current_reply = await stub.GetCurrentCtl(common_pb2.Empty(), timeout=options.timeout)
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc, "CTL Provider") from None
        host, port = options.provider or (svc["host"], provider_port(settings, svc))
        ctx = provider_ssl_context(identity.ca_path, identity.cert_path, identity.key_path)
        servers = await fetch_server_certificates(host, port, ctx, timeout=options.timeout)

        signer_cert = token_certs[options.tokens.index(signer_name)]
        current = parse_ctl(current_reply.ctl) if current_reply.present else None
        check_signer_trusted(current, signer_cert, options.new_trust)
        records = build_records(token_certs, servers)

        secret = password() if callable(password) else password
        try:
            token = open_token(token_dir, signer_name, secret)
        except TokenPasswordError as exc:
            raise CtlClientError(f"{exc}") from None
        except TokenLockedError as exc:
            raise CtlClientError(str(exc)) from None
        except TokenError as exc:
            raise CtlClientError(str(exc)) from None
        try:
            content = build_ctl(records, token, int(time.time()), options.digest)
            verify_ctl(parse_ctl(content))  # never hand over a file we cannot read back
        except (CtlBuildError, ValueError) as exc:
            raise CtlClientError(f"cannot build the CTL: {exc}") from None

        try:
            reply = await stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(
                ctl=content, mode=mode_enum, new_trust=options.new_trust), timeout=30)
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc, "publishing the CTL was refused") from None
    return UpdateResult(ctl=content, version=reply.version, sha256=reply.sha256,
                        mode=_mode_name(reply.mode), previous_mode=_mode_name(reply.previous_mode),
                        published_path=reply.published_path, events=list(reply.events),
                        delivery_pending=reply.delivery_pending)

"""The administration server's own certificate (CERT-4) and an in-loop uvicorn HTTPS server.

Certificate: in a cluster, the `admin-api` identity the runner issued from the cluster CA (clients
verify it with cluster-ca.crt); the service never opens the CA key itself. Without one (the API
on its own), a self-signed DATA/callmanager/https.{crt,key} that clients pin; it is kept while it is
valid for another 30 days, matches its key and names the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import ipaddress
import logging
import socket
import ssl
from pathlib import Path

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ccmsec.pki import ca as pki
from ccmsec.pki.tls import apply_keylog_env

log = logging.getLogger(__name__)

RENEW_BEFORE = _dt.timedelta(days=30)


def https_paths(data_dir: Path) -> tuple[Path, Path]:
    base = Path(data_dir) / "callmanager"
    return base / "https.crt", base / "https.key"


def _san_values(host: str) -> tuple[list[str], list[str]]:
    """(dns names, ip addresses) the certificate must carry for clients connecting to `host`."""
    dns, ips = {"localhost"}, {"127.0.0.1"}
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        dns.add(host)
    else:
        if addr.is_unspecified:  # bound to every address: name the machine too
            dns.add(socket.gethostname())
        else:
            ips.add(str(addr))
    return sorted(dns), sorted(ips)


def _still_good(cert_path: Path, key_path: Path, host: str) -> bool:
    try:
        issued = pki.load_pair(cert_path, key_path)
    except (OSError, ValueError, TypeError):
        return False
    cert = issued.cert
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if (cert.public_key().public_bytes(serialization.Encoding.DER, public)
            != issued.key.public_key().public_bytes(serialization.Encoding.DER, public)):
        return False
    if cert.not_valid_after_utc - _dt.datetime.now(_dt.timezone.utc) < RENEW_BEFORE:
        return False
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    dns, ips = _san_values(host)
    have_dns = set(sans.get_values_for_type(x509.DNSName))
    have_ips = {str(a) for a in sans.get_values_for_type(x509.IPAddress)}
    return set(dns) <= have_dns and set(ips) <= have_ips


def ensure_https_certificate(data_dir: Path, host: str, identity=None) -> tuple[Path, Path]:
    """CERT-4: (certfile, keyfile) of the admin server: the `admin-api` identity when given (a
    `ccmsec.runtime.identity.TlsIdentity`), else a self-signed certificate issued here if needed."""
    if identity is not None:
        return identity.cert_path, identity.key_path
    cert_path, key_path = https_paths(data_dir)
    if _still_good(cert_path, key_path, host):
        return cert_path, key_path
    dns, ips = _san_values(host)
    subject = pki.name(host, org_unit="ccmsec-admin-https")
    key = pki.new_key("ec256")
    issued = pki.Issued(pki.self_signed(subject, key, dns_names=dns, ip_addresses=ips), key)
    pki.save_pair(issued, cert_path, key_path)
    log.info("issued self-signed admin HTTPS certificate %s", cert_path)
    return cert_path, key_path


class _InLoopServer(uvicorn.Server):
    # The hosting service owns SIGINT/SIGTERM; uvicorn must not replace its handlers.
    def capture_signals(self):  # type: ignore[override]
        return contextlib.nullcontext()


class AdminServer:
    """uvicorn over TLS inside the caller's event loop. `await start()` binds and returns the port
    (port 0 = ephemeral); `await stop()` finishes in-flight requests and closes the socket."""

    def __init__(self, app, host: str, port: int, certfile: Path, keyfile: Path, *,
                 graceful_timeout: float = 5.0, max_connections: int = 256):
        self.host = host
        self.port = port
        config = uvicorn.Config(
            app, host=host, port=port, ssl_certfile=str(certfile), ssl_keyfile=str(keyfile),
            log_level="warning", access_log=False, lifespan="off", proxy_headers=False,
            server_header=False, timeout_keep_alive=15,
            timeout_graceful_shutdown=graceful_timeout, limit_concurrency=max_connections,
        )
        config.load()
        config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2  # type: ignore[union-attr]
        apply_keylog_env(config.ssl)  # type: ignore[arg-type]
        self._server = _InLoopServer(config)
        self._task: asyncio.Task | None = None
        self._sock: socket.socket | None = None

    async def start(self) -> int:
        info = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0]
        # proto must say TCP, or asyncio skips TCP_NODELAY on accepted sockets (40 ms stalls).
        sock = socket.socket(info[0], socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.set_inheritable(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]),
                                         name=f"admin-https:{self.port}")
        for _ in range(500):  # bounded wait (5 s) for uvicorn to start listening
            if self._server.started or self._task.done():
                break
            await asyncio.sleep(0.01)
        if self._task.done():
            await self._task  # re-raises the startup error
            raise RuntimeError("admin HTTPS server stopped during startup")
        if not self._server.started:
            await self.stop()
            raise RuntimeError("admin HTTPS server did not start within 5 s")
        return self.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def serve_admin(app, host: str, port: int, certfile: Path, keyfile: Path) -> None:
    """Serve until cancelled, then shut down cleanly (for use as a service task)."""
    server = AdminServer(app, host, port, certfile, keyfile)
    await server.start()
    log.info("administration API on %s", server.url)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()

"""The self-signed CallManager certificate `ccmserver.cer` (CERT-5).

Created at install on each CallManager and TFTP server, carrying the server name and a GUID, and
never re-issued once it exists (restart, upgrade): a later call returns the same certificate.

Files in `dir`: `ccmserver.cer` (DER, world-readable: administrators may read it) and
`ccmserver.key` (PEM PKCS#8, mode 0600). Subject: `CN=<server name>, OU=<GUID>, O=ccmsec`; the
GUID lives in the OU attribute so it shows up in the CTL record's subject string
(`CN=…;OU=<GUID>;O=ccmsec`). The server name is also a DNS subjectAltName (and the IP, if given).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ccmsec.fsutil import atomic_write, file_lock
from ccmsec.pki.ca import Issued, guid, name, new_key, self_signed

CERT_FILE = "ccmserver.cer"
KEY_FILE = "ccmserver.key"
_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class ServerCertificateError(Exception):
    """The stored server certificate is unusable (the message says why and what to do)."""




def server_guid(certificate: x509.Certificate) -> str:
    """The GUID carried in the certificate's OU attribute."""
    values = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(values[0].value) if values else ""


def _load(cert_path: Path, key_path: Path) -> Issued:
    try:
        cert = x509.load_der_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError as exc:
        raise ServerCertificateError(f"{cert_path.parent}: stored server certificate or key is "
                                     f"damaged ({exc}); it is never re-issued automatically "
                                     "(CERT-5), restore it from backup") from None
    return Issued(cert, key)  # type: ignore[arg-type]


def ensure_server_certificate(directory: Path, server_name: str,
                              ip: str | None = None, key_dir: Path | None = None) -> Issued:
    """Create `ccmserver.cer` on first call; afterwards return the stored one unchanged (CERT-5).
    The key is kept in `key_dir` when given (a folder only this server's container has), else
    beside the certificate."""
    if not server_name or len(server_name) > 64:
        raise ValueError(f"server name must be 1-64 characters, got {server_name!r}")
    directory = Path(directory)
    cert_path = directory / CERT_FILE
    key_path = Path(key_dir if key_dir is not None else directory) / KEY_FILE
    directory.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(directory / ".ccmserver.lock"):
        if cert_path.exists():
            if not key_path.exists():
                raise ServerCertificateError(
                    f"{cert_path} exists but its key {key_path} is missing; the certificate is "
                    "never re-issued (CERT-5), restore the key from backup")
            return _load(cert_path, key_path)
        # The key is written first; a key without a certificate means an interrupted install, so
        # the certificate is issued for that key rather than a new one.
        if key_path.exists():
            key = _load_key(key_path)
        else:
            key = new_key("rsa2048")
            atomic_write(key_path, Issued(None, key).key_pem, mode=0o600)  # type: ignore[arg-type]
        dns = [server_name] if _HOSTNAME_RE.match(server_name) else []
        ips = [str(ipaddress.ip_address(ip))] if ip else []
        cert = self_signed(name(server_name, org_unit=guid(), org="ccmsec"), key,
                           days=3650, dns_names=dns, ip_addresses=ips)
        atomic_write(cert_path, cert.public_bytes(serialization.Encoding.DER), mode=0o644)
        return Issued(cert, key)


def _load_key(key_path: Path):
    try:
        return serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError as exc:
        raise ServerCertificateError(f"{key_path} is damaged ({exc}); remove it to start over") \
            from None

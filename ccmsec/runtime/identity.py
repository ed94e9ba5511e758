"""The internal cluster CA and the mutual-TLS identities it issues to services and clients.

The source protects server-to-server links with IPsec; here every internal link is mutual TLS with
certificates from a CA created on first start in DATA/pki. Creation is guarded by a file lock so
that eight services starting at once agree on one CA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ccmsec.fsutil import file_lock
from ccmsec.pki import ca as ca_mod


@dataclass(frozen=True)
class TlsIdentity:
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    cert_path: Path
    key_path: Path
    ca_path: Path


def pki_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "pki"


def ensure_cluster_ca(data_dir: Path) -> ca_mod.Issued:
    d = pki_dir(data_dir)
    crt, key = d / "cluster-ca.crt", d / "cluster-ca.key"
    with file_lock(d / ".lock"):
        if crt.exists() and key.exists():
            return ca_mod.load_pair(crt, key)
        issued = ca_mod.create_ca(ca_mod.name("ccmsec cluster CA", "internal"), ca_mod.new_key("ec256"))
        ca_mod.save_pair(issued, crt, key)
        return issued


def _ensure_leaf(data_dir: Path, folder: str, name: str, *, dns: list[str], ips: list[str],
                 server: bool, client: bool) -> TlsIdentity:
    d = pki_dir(data_dir)
    crt, key = d / folder / f"{name}.crt", d / folder / f"{name}.key"
    cluster_ca = ensure_cluster_ca(data_dir)
    with file_lock(d / ".lock"):
        if not (crt.exists() and key.exists()) or not _matches(crt, dns, ips):
            issued = ca_mod.issue_with_new_key(
                cluster_ca, ca_mod.name(name, "internal"), "ec256",
                dns_names=dns, ip_addresses=ips, server=server, client=client,
            )
            ca_mod.save_pair(issued, crt, key)
    return TlsIdentity(crt.read_bytes(), key.read_bytes(), cluster_ca.pem, crt, key,
                       d / "cluster-ca.crt")


def _matches(crt: Path, dns: list[str], ips: list[str]) -> bool:
    """Re-issue when the names the certificate must carry changed (e.g. a new address)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Exception:
        return False
    have_dns = set(san.get_values_for_type(x509.DNSName))
    have_ip = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    return set(dns) <= have_dns and set(ips) <= have_ip


def service_identity(data_dir: Path, role: str, node: str, host: str) -> TlsIdentity:
    """Server+client certificate of one service node: SANs carry role, node and its address."""
    dns = sorted({role, node, "localhost"})
    return _ensure_leaf(data_dir, "services", node, dns=dns, ips=[host], server=True, client=True)


def client_identity(data_dir: Path, name: str = "cli") -> TlsIdentity:
    """Client-only certificate for the command line and tests."""
    return _ensure_leaf(data_dir, "clients", name, dns=[name], ips=[], server=False, client=True)


def ensure_private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path

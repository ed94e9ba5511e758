"""CERT-3: once the CTL client has run, the CAPF certificate is copied to every server.

Each server role gets `DATA/servers/<role>/CAPF.cer` (DER, as the real system names the file),
written atomically so a reader never sees half a certificate. Rewriting the same bytes is a
no-op, so a redelivered `ctl.updated` event changes nothing.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ccmsec.fsutil import atomic_write

SERVER_ROLES = ("callmanager", "tftp-signer", "ctl-provider", "srst")
CAPF_CER = "CAPF.cer"


def capf_cer_path(data_dir: Path, role: str) -> Path:
    return Path(data_dir) / "servers" / role / CAPF_CER


def copy_capf_certificate(data_dir: Path, certificate: x509.Certificate) -> list[Path]:
    """Write the CAPF certificate to every server role's folder; returns the files (re)written."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    written = []
    for role in SERVER_ROLES:
        path = capf_cer_path(data_dir, role)
        try:
            if path.read_bytes() == der:
                continue
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, der)
        written.append(path)
    return written

"""SRST references (SRST-1, SRST-2, CERT-6): where a device pool's phones fall back to, and the
router's certificate once security is configured on the reference.

Owned by callmanager (with the device pools that name them). A pool's `srst` column holds a
reference name; a name without a row here is a bare host reference (port 2000, never secure), as
pools made before references existed hold.

The certificate is fetched from the router's credentials service (TLS 2445) when an administrator
configures security on the reference, stored here (CERT-6: in the cluster database, never in the
CTL) with its SHA-256 fingerprint, and carried to each dependent phone in its configuration file
(`srstInfo/srstCertificate`).
"""

from __future__ import annotations

import datetime as _dt
import re

from sqlalchemy import Boolean, DateTime, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from ccmsec.db.base import Base
from ccmsec.db.devices import as_utc, utcnow
from ccmsec.textsafe import shown

_NAME = re.compile(r"[A-Za-z0-9.:_-]{1,64}")
MAX_CERTIFICATE = 16 * 1024


class InvalidSrstReference(ValueError):
    """A reference name, host or port that is not valid."""


def validate_reference_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidSrstReference(f"SRST reference name '{shown(name)}': 1-64 of letters, digits, '.:_-'")
    return name


def validate_port(port: int, what: str) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise InvalidSrstReference(f"{what} {port!r} is not a port (1-65535)")
    return port


class SrstReference(Base):
    __tablename__ = "srst_references"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(64), nullable=False)
    sccp_port: Mapped[int] = mapped_column(Integer, nullable=False, default=2000)
    sccp_tls_port: Mapped[int] = mapped_column(Integer, nullable=False, default=2443)
    credentials_port: Mapped[int] = mapped_column(Integer, nullable=False, default=2445)
    secure: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    certificate: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # DER (CERT-6)
    fingerprint: Mapped[str] = mapped_column(String(95), nullable=False, default="")
    certificate_subject: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    secured_at: Mapped[_dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                     default=utcnow)

    def to_dict(self) -> dict:
        return {"name": self.name, "host": self.host, "sccp_port": self.sccp_port,
                "sccp_tls_port": self.sccp_tls_port, "credentials_port": self.credentials_port,
                "secure": self.secure, "certificate_sha256": self.fingerprint,
                "certificate_subject": self.certificate_subject,
                "secured_at": as_utc(self.secured_at).isoformat() if self.secured_at else None}

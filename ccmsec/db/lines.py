"""Lines (directory numbers) on devices, and device pools (CallManager group, SRST reference).

A directory number may appear on several devices (a shared line); each appearance is one row.
The security status of a call stays that of each device (DEV-2): nothing here carries a
security mode, so sharing a line never changes a device's own mode.
"""

from __future__ import annotations

import datetime as _dt
import re

from sqlalchemy import DateTime, ForeignKey, Integer, String, UniqueConstraint, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column, validates

from ccmsec.db.base import Base
from ccmsec.db.devices import MAX_DEVICE_NAME, as_utc, utcnow
from ccmsec.textsafe import UnsafeText, checked_text, shown

MAX_LINES_PER_DEVICE = 34  # a 7970 with expansion modules has at most this many line buttons
MAX_CM_GROUP = 3  # primary, secondary, tertiary CallManager
MAX_LINE_LABEL = 40  # the column; the phone's LineStat shows 39 of them (Skinny: ASCII)
_DN = re.compile(r"[0-9*#+]{1,24}")
_POOL = re.compile(r"[A-Za-z0-9 _.-]{1,64}")
_HOST = re.compile(r"[A-Za-z0-9.:_-]{1,64}")


class InvalidLineOrPool(ValueError):
    """A directory number, pool name, CallManager group or SRST reference that is not valid."""


def validate_dn(dn: str) -> str:
    if not isinstance(dn, str) or not _DN.fullmatch(dn):
        raise InvalidLineOrPool(f"directory number {dn!r}: 1-24 characters of 0-9 * # +")
    return dn


def validate_line_label(label: str) -> str:
    """A line's label: printable ASCII (the phone gets it in a Skinny LineStat, whose text fields
    are ASCII), at most MAX_LINE_LABEL characters (`ccmsec.textsafe.checked_text`)."""
    return checked_text("label", label, MAX_LINE_LABEL, ascii_only=True)


def validate_pool_name(name: str) -> str:
    if not isinstance(name, str) or not _POOL.fullmatch(name):
        raise InvalidLineOrPool(f"device pool name '{shown(name)}': 1-64 of letters, digits, ' _.-'")
    return name


def validate_cm_group(hosts: list[str]) -> list[str]:
    if not hosts:
        raise InvalidLineOrPool("a CallManager group needs at least one server")
    if len(hosts) > MAX_CM_GROUP:
        raise InvalidLineOrPool(f"a CallManager group holds at most {MAX_CM_GROUP} servers")
    for host in hosts:
        if not _HOST.fullmatch(host):
            raise InvalidLineOrPool(f"CallManager '{shown(host)}' is not a host name or address")
    if len(set(hosts)) != len(hosts):
        raise InvalidLineOrPool("a CallManager group lists a server twice")
    return hosts


class Line(Base):
    __tablename__ = "lines"
    __table_args__ = (
        UniqueConstraint("device", "dn", name="uq_lines_device_dn"),
        UniqueConstraint("device", "line_index", name="uq_lines_device_line_index"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dn: Mapped[str] = mapped_column(String(24), nullable=False, index=True)
    device: Mapped[str] = mapped_column(
        String(MAX_DEVICE_NAME), ForeignKey("devices.name", ondelete="CASCADE"), nullable=False)
    line_index: Mapped[int] = mapped_column(Integer, nullable=False)  # button 1..34
    label: Mapped[str] = mapped_column(String(MAX_LINE_LABEL), nullable=False, default="")
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                     default=utcnow)

    @validates("label")
    def _checked_label(self, _key: str, value: str) -> str:
        return validate_line_label(value)  # the last guard, whoever writes

    def to_dict(self) -> dict:
        return {"dn": self.dn, "device": self.device, "line_index": self.line_index,
                "label": self.label, "created_at": as_utc(self.created_at).isoformat()}


class DevicePool(Base):
    __tablename__ = "device_pools"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    cm_group: Mapped[str] = mapped_column(String(200), nullable=False)  # comma-separated, ordered
    srst: Mapped[str] = mapped_column(String(64), nullable=False, default="")  # SRST reference
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                     default=utcnow)

    @property
    def cm_hosts(self) -> list[str]:
        return [h for h in self.cm_group.split(",") if h]

    def to_dict(self) -> dict:
        return {"name": self.name, "cm_group": self.cm_hosts, "srst": self.srst}


async def lines_of(session: AsyncSession, *, device: str | None = None,
                   dn: str | None = None) -> list[Line]:
    query = select(Line).order_by(Line.device, Line.line_index)
    if device:
        query = query.where(Line.device == device)
    if dn:
        query = query.where(Line.dn == dn)
    return list((await session.scalars(query)).all())


async def devices_sharing(session: AsyncSession, dn: str) -> list[str]:
    """The devices on which directory number `dn` appears (a shared line has several)."""
    return sorted({row.device for row in await lines_of(session, dn=dn)})

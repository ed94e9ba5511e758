"""Call-routing configuration owned by callmanager: speed dials, call forwarding per directory
number, regions (CALL-9's wideband codec), extension-mobility users and logins, and the softkey
set of a device or a device pool.

Lines themselves are in `ccmsec.db.lines`. Nothing here carries a security mode: a user's line
brought to a device by extension mobility runs with that device's own mode (DEV-2).
"""

from __future__ import annotations

import datetime as _dt
import re

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String, UniqueConstraint, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from ccmsec.db.base import Base
from ccmsec.db.devices import MAX_DEVICE_NAME, utcnow
from ccmsec.db.lines import validate_dn
from ccmsec.textsafe import UnsafeText, checked_text, shown

MAX_SPEED_DIALS = 42
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class InvalidCallConfig(ValueError):
    """A speed dial, forward, region or user value that is not valid."""


def validate_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidCallConfig(f"{what} '{shown(name)}': 1-64 of letters, digits, '_.-'")
    return name


def validate_label(label: str, size: int = 40, field: str = "label") -> str:
    """A speed dial's label, a mobility user's label or display name: printable ASCII (sent to the
    phone over Skinny), at most `size` characters — `ccmsec.textsafe.checked_text`, named `field`."""
    try:
        return checked_text(field, label, size, ascii_only=True)
    except UnsafeText as exc:
        raise InvalidCallConfig(str(exc)) from None


def validate_number(number: str) -> str:
    try:
        return validate_dn(number)
    except ValueError as exc:
        raise InvalidCallConfig(str(exc)) from None


class SpeedDial(Base):
    __tablename__ = "speed_dials"
    __table_args__ = (UniqueConstraint("device", "idx", name="uq_speed_dials_device_idx"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device: Mapped[str] = mapped_column(
        String(MAX_DEVICE_NAME), ForeignKey("devices.name", ondelete="CASCADE"), nullable=False)
    idx: Mapped[int] = mapped_column(Integer, nullable=False)   # button 1..42
    number: Mapped[str] = mapped_column(String(24), nullable=False)
    label: Mapped[str] = mapped_column(String(40), nullable=False, default="")


class LineForward(Base):
    """Call forward busy / no answer of a directory number (forward all is set on the phone)."""

    __tablename__ = "line_forwards"

    dn: Mapped[str] = mapped_column(String(24), primary_key=True)
    forward_busy: Mapped[str] = mapped_column(String(24), nullable=False, default="")
    forward_no_answer: Mapped[str] = mapped_column(String(24), nullable=False, default="")


class Region(Base):
    """A codec region: whether the wideband codec may be used between its devices (CALL-9)."""

    __tablename__ = "regions"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    wideband: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class DeviceRegion(Base):
    __tablename__ = "device_regions"

    device: Mapped[str] = mapped_column(
        String(MAX_DEVICE_NAME), ForeignKey("devices.name", ondelete="CASCADE"), primary_key=True)
    region: Mapped[str] = mapped_column(
        String(64), ForeignKey("regions.name", ondelete="CASCADE"), nullable=False)


class MobilityUser(Base):
    """An extension-mobility user: the line they bring to any device they log in to."""

    __tablename__ = "mobility_users"

    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(40), nullable=False, default="")
    dn: Mapped[str] = mapped_column(String(24), nullable=False)
    label: Mapped[str] = mapped_column(String(40), nullable=False, default="")
    # argon2 hash of the PIN typed at the phone to log in (None: no PIN yet, no login at a phone)
    pin_hash: Mapped[str | None] = mapped_column(String(128), nullable=True, default=None)


class MobilityLogin(Base):
    """Who is logged in where (one user per device, one device per user)."""

    __tablename__ = "mobility_logins"

    device: Mapped[str] = mapped_column(
        String(MAX_DEVICE_NAME), ForeignKey("devices.name", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("mobility_users.user_id", ondelete="CASCADE"), nullable=False,
        unique=True)
    since: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                default=utcnow)


class DeviceSoftkeys(Base):
    """The named softkey set of one device (wins over its pool's)."""

    __tablename__ = "device_softkeys"

    device: Mapped[str] = mapped_column(
        String(MAX_DEVICE_NAME), ForeignKey("devices.name", ondelete="CASCADE"), primary_key=True)
    softkey_set: Mapped[str] = mapped_column(String(32), nullable=False)


class PoolSoftkeys(Base):
    """The named softkey set of a device pool's devices (those without their own)."""

    __tablename__ = "pool_softkeys"

    pool: Mapped[str] = mapped_column(
        String(64), ForeignKey("device_pools.name", ondelete="CASCADE"), primary_key=True)
    softkey_set: Mapped[str] = mapped_column(String(32), nullable=False)


async def rows(session: AsyncSession, model) -> list:
    return list((await session.scalars(select(model))).all())

"""Devices (phones) and the cluster-wide settings table of the publisher database.

Names and value sets are checked here once (`validate_device_name`, `DEVICE_MODELS`,
`SECURITY_MODES`) so the API, the CLI and other services agree on them.
"""

from __future__ import annotations

import datetime as _dt
import re

from sqlalchemy.exc import IntegrityError
from sqlalchemy import Boolean, CheckConstraint, DateTime, Integer, String, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column, validates

from ccmsec.db.base import Base, table_exists
from ccmsec.domain import ClusterMode, DeviceSecurityMode
from ccmsec.textsafe import UnsafeText, checked_text, shown

DEVICE_MODELS = ("7970", "7960", "7940", "7912", "7910", "7905G", "7902")
SECURITY_MODES = DeviceSecurityMode.choices()  # DEV-1
CLUSTER_MODES = ClusterMode.choices()  # MODE-3
HARDENING_FIELDS = ("web_access", "pc_port", "settings_access", "garp", "voice_vlan_access",
                    "span_to_pc_port")

# cluster_settings keys
SETTING_SECURITY_MODE = "security_mode"  # MODE-1: absent or non-secure on a fresh cluster
SETTING_CTL_VERSION = "ctl_version"  # written by the CTL client; absent => no CTL (MODE-5)

MAX_DEVICE_NAME = 15
MAX_DESCRIPTION = 128  # the column's length, in characters
_SEP_NAME = re.compile(r"SEP[0-9A-F]{12}")
_OTHER_NAME = re.compile(r"[A-Za-z0-9_-]{1,15}")


class InvalidDeviceName(ValueError):
    """A device name that is neither SEP + 12 uppercase hex digits nor [A-Za-z0-9_-]{1,15}."""


def validate_description(value: str) -> str:
    """A device's description: ordinary text of any script, at most MAX_DESCRIPTION characters; no
    control or format characters (`ccmsec.textsafe.checked_text`). `UnsafeText` (a ValueError)
    naming the field otherwise."""
    return checked_text("description", value, MAX_DESCRIPTION)


def validate_device_name(name: str) -> str:
    """Return `name` if valid, else raise InvalidDeviceName saying why."""
    if not isinstance(name, str) or not name:
        raise InvalidDeviceName("device name is empty")
    if len(name) > MAX_DEVICE_NAME:
        raise InvalidDeviceName(f"device name is {len(name)} characters long (max {MAX_DEVICE_NAME})")
    # A SEP prefix promises a MAC address: hold it to exactly that shape.
    if name[:3].upper() == "SEP":
        if not _SEP_NAME.fullmatch(name):
            raise InvalidDeviceName(
                f"device name '{shown(name)}': SEP names are 'SEP' + 12 uppercase hex digits (the MAC)"
            )
        return name
    if not _OTHER_NAME.fullmatch(name):
        raise InvalidDeviceName(f"device name '{shown(name)}': only letters, digits, '_' and '-' allowed")
    return name


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def as_utc(value: _dt.datetime | None) -> _dt.datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=_dt.timezone.utc)


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (
        CheckConstraint(f"model IN ({_in(DEVICE_MODELS)})", name="model"),
        CheckConstraint(f"security_mode IN ({_in(SECURITY_MODES)})", name="security_mode"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(MAX_DEVICE_NAME), unique=True, nullable=False)
    model: Mapped[str] = mapped_column(String(8), nullable=False)
    security_mode: Mapped[str] = mapped_column(String(16), nullable=False, default=DeviceSecurityMode.NON_SECURE.value)
    description: Mapped[str] = mapped_column(String(MAX_DESCRIPTION), nullable=False, default="")
    device_pool: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # DEV-4 hardening: True = feature left enabled (the phone's factory behaviour).
    web_access: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    pc_port: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    settings_access: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    garp: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    voice_vlan_access: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    # Mirroring the phone's traffic to the PC port is off at the factory.
    span_to_pc_port: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # Bumped by SQLAlchemy on every UPDATE; a concurrent writer gets StaleDataError, not a lost update.
    config_version: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                     default=utcnow)
    updated_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                     default=utcnow, onupdate=utcnow)

    __mapper_args__ = {"version_id_col": config_version}

    @validates("description")
    def _checked_description(self, _key: str, value: str) -> str:
        # the last guard: every writer (API, call control's auto-registration, tests, scripts)
        return validate_description(value)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "model": self.model,
            "security_mode": self.security_mode,
            "description": self.description,
            "device_pool": self.device_pool,
            **{f: getattr(self, f) for f in HARDENING_FIELDS},
            "config_version": self.config_version,
            "created_at": as_utc(self.created_at).isoformat(),
            "updated_at": as_utc(self.updated_at).isoformat(),
        }


class ClusterSetting(Base):
    """Cluster-wide key/value settings (security_mode, ctl_version, ...)."""

    __tablename__ = "cluster_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(1024), nullable=False)
    updated_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                     default=utcnow, onupdate=utcnow)


async def get_setting(session: AsyncSession, key: str) -> str | None:
    """None when unset, or when ctl-provider has not created its table yet (it migrates its own
    schema branch): a cluster whose CTL provider never started never ran the CTL client (MODE-1)."""
    if not await table_exists(session, ClusterSetting.__tablename__):
        return None
    return await session.scalar(select(ClusterSetting.value).where(ClusterSetting.key == key))


async def set_setting(session: AsyncSession, key: str, value: str) -> None:
    """Insert or update one setting (caller commits)."""
    row = await session.get(ClusterSetting, key)
    if row is None:
        session.add(ClusterSetting(key=key, value=value))
    else:
        row.value = value


async def cluster_security_mode(session: AsyncSession) -> ClusterMode:
    """MODE-1: a cluster that never ran the CTL client is non-secure."""
    return ClusterMode.parse(await get_setting(session, SETTING_SECURITY_MODE) or ClusterMode.NON_SECURE)


async def ctl_exists(session: AsyncSession) -> bool:
    """MODE-5: a CTL exists once the CTL client recorded a ctl_version."""
    return await get_setting(session, SETTING_CTL_VERSION) is not None


async def ensure_cluster_defaults(sessionmaker: async_sessionmaker) -> None:
    """Write security_mode=non-secure on a fresh cluster (MODE-1); never changes an existing value."""
    try:
        async with sessionmaker() as session, session.begin():
            if await get_setting(session, SETTING_SECURITY_MODE) is None:
                session.add(ClusterSetting(key=SETTING_SECURITY_MODE, value=ClusterMode.NON_SECURE.value))
    except IntegrityError:
        pass  # another service wrote the default at the same moment

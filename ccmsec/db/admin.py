"""Administration accounts, their bearer tokens, and the audit log."""

from __future__ import annotations

import datetime as _dt

from sqlalchemy import Boolean, CheckConstraint, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ccmsec.db.base import Base
from ccmsec.db.devices import as_utc, utcnow

ROLES = ("admin", "readonly")
AUDIT_OUTCOMES = ("ok", "refused", "denied", "unauthenticated", "error")


class AdminAccount(Base):
    __tablename__ = "admin_accounts"
    __table_args__ = (CheckConstraint("role IN ('admin', 'readonly')", name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)  # argon2id, never the password
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    disabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                     default=utcnow)

    def to_dict(self) -> dict:
        return {"username": self.username, "role": self.role, "disabled": self.disabled,
                "created_at": as_utc(self.created_at).isoformat()}


class AdminToken(Base):
    """An opaque bearer token from POST /api/v1/login; only its SHA-256 is stored."""

    __tablename__ = "admin_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("admin_accounts.id", ondelete="CASCADE"), nullable=False, index=True
    )
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                     default=utcnow)
    expires_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class AuditEntry(Base):
    """Who did what to which target, when, and how it ended (refusals included)."""

    __tablename__ = "audit_log"
    __table_args__ = (
        CheckConstraint(
            "outcome IN ('ok', 'refused', 'denied', 'unauthenticated', 'error')", name="outcome"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow,
                                             index=True)
    actor: Mapped[str | None] = mapped_column(String(64), nullable=True)  # None: not authenticated
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    target: Mapped[str | None] = mapped_column(String(128), nullable=True)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[int] = mapped_column(Integer, nullable=False)  # HTTP status returned
    rule: Mapped[str | None] = mapped_column(String(16), nullable=True)
    detail: Mapped[str] = mapped_column(Text, nullable=False, default="")
    remote: Mapped[str | None] = mapped_column(String(64), nullable=True)

    def to_dict(self) -> dict:
        return {"id": self.id, "at": as_utc(self.at).isoformat(), "actor": self.actor,
                "action": self.action, "target": self.target, "outcome": self.outcome,
                "status": self.status, "rule": self.rule, "detail": self.detail,
                "remote": self.remote}

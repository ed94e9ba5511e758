"""The transactional outbox: events a change requires, written in the change's own transaction.

Each row is one serialized `ccmsec.v1.Event` (its `id` is the JetStream `Nats-Msg-Id`) waiting to be
relayed by the service that wrote it (`origin` = its node): a rolled-back change leaves no row, so
nothing is ever sent for it; a committed one keeps its rows until JetStream acknowledged each
(`sent_at`), or set it aside as refused for good (`last_error` starting "set aside: ", `sent_at`
empty; deleted after the stream's age). The relay is `ccmsec/runtime/outbox.py`. Each service writes only its own rows.
"""

from __future__ import annotations

import datetime as _dt

from sqlalchemy import DateTime, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from ccmsec.db.base import Base


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


class OutboxRow(Base):
    __tablename__ = "event_outbox"
    __table_args__ = (Index("ix_event_outbox_origin_sent", "origin", "sent_at", "seq"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    origin: Mapped[str] = mapped_column(String(128), nullable=False)
    kind: Mapped[str] = mapped_column(String(64), nullable=False)
    target: Mapped[str | None] = mapped_column(String(64), nullable=True)
    payload: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                     default=_utcnow)
    sent_at: Mapped[_dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str] = mapped_column(String(300), nullable=False, default="")

"""The SCCP registration registry as seen by other services: one row per registered device.

Call control keeps the live registry in memory and mirrors it here (batched), so the
administration API, the CLI and other nodes read who is registered where without asking
each call-control node. Each node owns the rows whose `node` is its own name and clears them on
start (a crashed node's phones are not registered anywhere any more).
"""

from __future__ import annotations

import datetime as _dt

from sqlalchemy import Boolean, DateTime, Integer, String, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from ccmsec.db.base import Base
from ccmsec.db.devices import MAX_DEVICE_NAME, as_utc

CERTIFICATE_KINDS = ("", "LSC", "MIC")


class Registration(Base):
    __tablename__ = "registrations"

    device: Mapped[str] = mapped_column(String(MAX_DEVICE_NAME), primary_key=True)
    node: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    model: Mapped[str] = mapped_column(String(8), nullable=False)
    security_mode: Mapped[str] = mapped_column(String(16), nullable=False)
    address: Mapped[str] = mapped_column(String(64), nullable=False)  # TCP peer ip:port
    reported_address: Mapped[str] = mapped_column(String(64), nullable=False)  # from Register
    nat_suspected: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)  # MODE-7
    transport_port: Mapped[int] = mapped_column(Integer, nullable=False)  # 2000 or 2443
    cipher: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    certificate_fingerprint: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    certificate_kind: Mapped[str] = mapped_column(String(8), nullable=False, default="")
    since: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    def to_dict(self) -> dict:
        return {
            "device": self.device, "node": self.node, "model": self.model,
            "security_mode": self.security_mode, "address": self.address,
            "reported_address": self.reported_address, "nat_suspected": self.nat_suspected,
            "transport_port": self.transport_port, "cipher": self.cipher,
            "certificate_fingerprint": self.certificate_fingerprint,
            "certificate_kind": self.certificate_kind,
            "since": as_utc(self.since).isoformat(),
        }


async def list_registrations(session: AsyncSession, *, device: str | None = None,
                             node: str | None = None, except_node: str | None = None) -> list[Registration]:
    """`except_node`: leave that node's rows out in the query (a node asking about the others
    has its own registry; at 10,000 phones its rows are 10,000 objects to load and drop)."""
    query = select(Registration).order_by(Registration.device)
    if device:
        query = query.where(Registration.device == device)
    if node:
        query = query.where(Registration.node == node)
    if except_node:
        query = query.where(Registration.node != except_node)
    return list((await session.scalars(query)).all())


async def registered_names(session: AsyncSession, *, node: str | None = None,
                           except_node: str | None = None) -> list[str]:
    """Names only (one column, no ORM objects): what a reset needs to count its targets. A
    reset-all at 10,000 phones otherwise loaded every row of this node as an object only to
    drop it (the live registry is the source for this node's own phones)."""
    query = select(Registration.device).order_by(Registration.device)  # callers and tests compare lists
    if node:
        query = query.where(Registration.node == node)
    if except_node:
        query = query.where(Registration.node != except_node)
    return list((await session.scalars(query)).all())


async def clear_node(session: AsyncSession, node: str) -> int:
    """Forget every registration of `node` (caller commits)."""
    result = await session.execute(delete(Registration).where(Registration.node == node))
    return result.rowcount or 0


async def apply_changes(session: AsyncSession, node: str, upserts: list[dict],
                        removals: list[str]) -> None:
    """One batch from a node: replace its rows for `upserts`, drop its rows in `removals`.

    A removal only deletes the row if this node owns it: a phone that moved to another node
    meanwhile stays registered there. Caller commits.
    """
    # Two statements per chunk whatever the batch size: a registration storm stays cheap.
    for chunk in _chunks(removals):
        await session.execute(delete(Registration).where(
            Registration.node == node, Registration.device.in_(chunk)))
    for chunk in _chunks(upserts):
        await session.execute(delete(Registration).where(
            Registration.device.in_([row["device"] for row in chunk])))
        await session.execute(insert(Registration), [{**row, "node": node} for row in chunk])


def _chunks(items: list, size: int = 500):
    """Keep IN lists under SQLite's bound-parameter limit."""
    for start in range(0, len(items), size):
        yield items[start:start + size]

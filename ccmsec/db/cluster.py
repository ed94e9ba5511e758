"""Trust anchors of the cluster: the trust lists the CTL client published, the CTL Provider's
per-server state, the MODE-6 registry of clusters sharing a TFTP server, and the PublishFile
generations tftp-signer may still write though the cluster did not record them (`ctl_take_backs`,
CHK-6): the take-backs it has not answered yet (kind `take_back`) and the write-ahead intents of
commits' publishes (kind `publish`: stored before the publish is sent, removed by the record).

The cluster security mode itself and `ctl_version` live in `cluster_settings` (ccmsec/db/devices.py)
because the administration API reads them there (MODE-5); `record_ctl` writes both places in one
transaction.
"""

from __future__ import annotations

import datetime as _dt

from sqlalchemy import BigInteger, Boolean, CheckConstraint, DateTime, Integer, LargeBinary, String, delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from ccmsec.db.base import Base
from ccmsec.domain import ClusterMode
from ccmsec.db.devices import SETTING_CTL_VERSION, set_setting, utcnow
from ccmsec.policy.tftp_paths import TftpClusterEntry


class CtlFileRow(Base):
    """Every CTLFile.tlv the CTL client published; the highest version is the current one."""

    __tablename__ = "ctl_files"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    content: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    signer: Mapped[str] = mapped_column(String(512), nullable=False)
    signer_serial: Mapped[str] = mapped_column(String(128), nullable=False)
    records: Mapped[int] = mapped_column(Integer, nullable=False)
    tftp_path: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                     default=utcnow)


class CtlProviderNode(Base):
    """CHK-1 activation and the TLS port (CHK-3, RST-7) of one CTL Provider instance."""

    __tablename__ = "ctl_provider_nodes"

    node: Mapped[str] = mapped_column(String(64), primary_key=True)
    activated: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                     default=utcnow, onupdate=utcnow)


TAKE_BACK = "take_back"  # a take-back tftp-signer has not answered
PUBLISH = "publish"      # a commit's publish sent (or about to be) and not recorded, not taken back
GENERATION_KINDS = (TAKE_BACK, PUBLISH)


class CtlTakeBackRow(Base):
    """A PublishFile generation tftp-signer may still write and the cluster did not record (CHK-6):
    a take-back it has not answered (`take_back`), or a commit's publish whose record has not
    landed and that no answered take-back named yet (`publish`, the write-ahead intent: stored
    before the publish is sent, so a crash between publish and record leaves it for the next start
    to take back). Every later publish names them in `takes_back` until one naming them is answered."""

    __tablename__ = "ctl_take_backs"
    __table_args__ = (CheckConstraint("kind IN ('take_back', 'publish')", name="kind"),)

    generation: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False, default=TAKE_BACK,
                                      server_default=TAKE_BACK)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                     default=utcnow)


class TftpClusterRow(Base):
    """MODE-6: one cluster using the shared TFTP server."""

    __tablename__ = "tftp_clusters"

    cluster_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tftp_path: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    alternate_path: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    mode: Mapped[str] = mapped_column(String(16), nullable=False, default=ClusterMode.NON_SECURE.value)

    def entry(self) -> TftpClusterEntry:
        return TftpClusterEntry(self.cluster_id, self.tftp_path, self.alternate_path, self.mode)


async def current_ctl(session: AsyncSession) -> CtlFileRow | None:
    return await session.scalar(select(CtlFileRow).order_by(CtlFileRow.version.desc()).limit(1))


async def record_ctl(session: AsyncSession, *, content: bytes, sha256: str, signer: str,
                     signer_serial: str, records: int, tftp_path: str) -> int:
    """Store a new trust list and point `cluster_settings.ctl_version` at it (caller commits)."""
    latest = await current_ctl(session)
    version = 1 if latest is None else latest.version + 1
    session.add(CtlFileRow(version=version, sha256=sha256, content=content, signer=signer,
                           signer_serial=signer_serial, records=records, tftp_path=tftp_path))
    await set_setting(session, SETTING_CTL_VERSION, str(version))
    return version


async def provider_node(session: AsyncSession, node: str) -> CtlProviderNode:
    """The node's row, created not activated on first use (CHK-1)."""
    row = await session.get(CtlProviderNode, node)
    if row is None:
        row = CtlProviderNode(node=node, activated=False, port=None)
        session.add(row)
        await session.flush()
    return row


async def tftp_registry(session: AsyncSession) -> list[TftpClusterEntry]:
    rows = (await session.scalars(select(TftpClusterRow).order_by(TftpClusterRow.cluster_id))).all()
    return [r.entry() for r in rows]


async def save_tftp_registry(session: AsyncSession, registry: list[TftpClusterEntry]) -> None:
    """Replace the registry by `registry` (already checked by ccmsec.policy.tftp_paths)."""
    existing = {r.cluster_id: r for r in (await session.scalars(select(TftpClusterRow))).all()}
    wanted = {e.cluster_id for e in registry}
    for cluster_id, row in existing.items():
        if cluster_id not in wanted:
            await session.delete(row)
    await session.flush()
    for entry in registry:
        row = existing.get(entry.cluster_id)
        if row is None:
            session.add(TftpClusterRow(cluster_id=entry.cluster_id, tftp_path=entry.tftp_path,
                                       alternate_path=entry.alternate_path, mode=entry.mode))
        else:
            row.tftp_path, row.alternate_path, row.mode = (entry.tftp_path, entry.alternate_path,
                                                           entry.mode)


async def _generations(session: AsyncSession, kind: str) -> list[int]:
    rows = (await session.scalars(select(CtlTakeBackRow).where(CtlTakeBackRow.kind == kind).order_by(
        CtlTakeBackRow.created_at, CtlTakeBackRow.generation))).all()
    return [r.generation for r in rows]


async def _save_generations(session: AsyncSession, kind: str, generations: list[int]) -> None:
    existing = set(await _generations(session, kind))
    wanted = list(dict.fromkeys(generations))
    gone = existing - set(wanted)
    if gone:
        await session.execute(delete(CtlTakeBackRow).where(CtlTakeBackRow.kind == kind,
                                                           CtlTakeBackRow.generation.in_(gone)))
    now = utcnow()
    for i, generation in enumerate(g for g in wanted if g not in existing):
        # distinct, increasing stamps keep "oldest first" exact within one save
        session.add(CtlTakeBackRow(generation=generation, kind=kind,
                                   created_at=now + _dt.timedelta(microseconds=i)))
    await session.flush()


async def unsettled_take_backs(session: AsyncSession) -> list[int]:
    """The generations of the take-backs not answered yet, oldest first."""
    return await _generations(session, TAKE_BACK)


async def save_unsettled_take_backs(session: AsyncSession, generations: list[int]) -> None:
    """Replace the unanswered take-backs by `generations` (oldest first; caller commits)."""
    await _save_generations(session, TAKE_BACK, generations)


async def publishes_in_flight(session: AsyncSession) -> list[int]:
    """The generations of commits' publishes neither recorded nor taken back, oldest first."""
    return await _generations(session, PUBLISH)


async def save_publishes_in_flight(session: AsyncSession, generations: list[int]) -> None:
    """Replace the publishes in flight by `generations` (oldest first; caller commits)."""
    await _save_generations(session, PUBLISH, generations)

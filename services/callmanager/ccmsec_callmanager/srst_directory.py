"""The SRST directory (SRST-1): what an SRST reference needs to serve its phones on its own.

The devices whose configuration file names the reference at `host` — through their pool's SRST
reference (a row of `srst_references` with that host, or a bare host reference), or, with
`include_default`, through no reference at all (the cluster's own srst service is then their SRST,
as the TFTP server writes it) — with their model, configured security mode and lines; the
cluster security mode; and the issuers of phone certificates call control trusts. Read-only: the
SRST keeps the last answer and never writes call control's tables.
"""

from __future__ import annotations

import time

from cryptography.hazmat.primitives import serialization
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from ccmsec.db.devices import Device
from ccmsec.db.lines import DevicePool, InvalidLineOrPool, Line, validate_cm_group
from ccmsec.db.srst import SrstReference
from ccmsec.domain import ClusterMode, DeviceSecurityMode
from ccmsec.policy.registration import PhoneTrust
from ccmsec_proto import callmanager_pb2 as pb


class InvalidRequest(ValueError):
    pass


def _der(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


async def srst_directory(db: async_sessionmaker, trust: PhoneTrust | None, host: str,
                         include_default: bool, mode: str) -> pb.SrstDirectory:
    """`mode`: the cluster mode as call control follows it from the CTL Provider."""
    try:
        validate_cm_group([host])
    except InvalidLineOrPool as exc:
        raise InvalidRequest(f"SRST host: {exc}") from None
    async with db() as session:
        references = (await session.scalars(select(SrstReference).where(SrstReference.host == host))).all()
        names = [r.name for r in references]
        pool_filter = DevicePool.srst.in_([*names, host])
        pools = set((await session.scalars(select(DevicePool.name).where(pool_filter))).all())
        conditions = [Device.device_pool.in_(pools)] if pools else []
        if include_default:
            no_reference = select(DevicePool.name).where(DevicePool.srst == "")
            conditions += [Device.device_pool.is_(None), Device.device_pool.in_(no_reference)]
        devices = []
        if conditions:
            devices = (await session.execute(
                select(Device.name, Device.model, Device.security_mode).where(or_(*conditions))
                .order_by(Device.name))).all()
        lines: dict[str, list[Line]] = {}
        if devices:
            for line in (await session.scalars(select(Line).where(
                    Line.device.in_([d.name for d in devices])).order_by(Line.device, Line.line_index))).all():
                lines.setdefault(line.device, []).append(line)
    reply = pb.SrstDirectory(
        cluster_mode=ClusterMode.parse(mode).to_proto(),
        generated_unix_ms=int(time.time() * 1000),
        reference=references[0].name if references else "",
        secure=any(r.secure and r.certificate for r in references))
    for d in devices:
        reply.phones.append(pb.SrstPhone(
            device=d.name, model=d.model, mode=DeviceSecurityMode.parse(d.security_mode).to_proto(),
            lines=[pb.Line(dn=ln.dn, device=ln.device, line_index=ln.line_index, label=ln.label)
                   for ln in lines.get(d.name, [])]))
    if trust is not None:
        reply.lsc_issuers.extend(_der(c) for c in trust.lsc_anchors)
        if trust.manufacturer is not None:
            reply.manufacturer_ca = _der(trust.manufacturer)
    return reply

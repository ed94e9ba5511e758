"""What the TFTP server builds each SEP<MAC>.cnf.xml from, answered by call control, the owner of
devices, pools and SRST references (issue 9 §5): `CallManager/GetDeviceConfigs`, which only
tftp-signer may call.

One read transaction (one snapshot) of the devices asked for (all when none), their pools and the
pools' SRST references; streamed in pages of `PAGE` devices, ordered by name, so 10,000 devices
are a few messages of bounded size. The TFTP server keeps the answer in memory and asks again only
after a commit (its version check) or a change event (tftp-signer's devicefiles.py).
"""

from __future__ import annotations

from typing import AsyncIterator

from sqlalchemy import select

from ccmsec.db.devices import HARDENING_FIELDS, Device
from ccmsec.db.lines import DevicePool
from ccmsec.db.srst import SrstReference
from ccmsec.domain import DeviceSecurityMode
from ccmsec_proto import callmanager_pb2 as pb

PAGE = 500
MAX_NAMES = 10_000  # one request names at most this many devices

_COLUMNS = (Device.name, Device.model, Device.security_mode, Device.device_pool, Device.config_version,
            *(getattr(Device, f) for f in HARDENING_FIELDS))


async def read_device_configs(db, names: list[str] | None = None) -> list[pb.DeviceConfigInput]:
    """The inputs of `names` (every device when None), in one read transaction, ordered by name."""
    query = select(*_COLUMNS).order_by(Device.name)
    if names is not None:
        query = query.where(Device.name.in_(names))
    async with db() as session, session.begin():
        devices = (await session.execute(query)).all()
        wanted = sorted({d.device_pool for d in devices if d.device_pool})
        pools = (await session.execute(select(DevicePool.name, DevicePool.cm_group, DevicePool.srst)
                                       .where(DevicePool.name.in_(wanted)))).all() if wanted else []
        refs = sorted({p.srst for p in pools if p.srst})
        references = {r.name: r for r in (await session.execute(
            select(SrstReference.name, SrstReference.host, SrstReference.sccp_port, SrstReference.sccp_tls_port,
                   SrstReference.secure, SrstReference.certificate)
            .where(SrstReference.name.in_(refs)))).all()} if refs else {}
    pool_messages: dict[str, pb.PoolConfig] = {}
    for p in pools:
        message = pb.PoolConfig(name=p.name, cm_group=[h for h in p.cm_group.split(",") if h], srst=p.srst or "")
        ref = references.get(p.srst) if p.srst else None
        if ref is not None:
            message.reference.CopyFrom(pb.SrstReferenceConfig(
                name=ref.name, host=ref.host, sccp_port=ref.sccp_port, sccp_tls_port=ref.sccp_tls_port,
                secure=bool(ref.secure), certificate=ref.certificate or b""))
        pool_messages[p.name] = message
    out = []
    for d in devices:
        message = pb.DeviceConfigInput(
            name=d.name, model=d.model, mode=DeviceSecurityMode.parse(d.security_mode).to_proto(),
            device_pool=d.device_pool or "", config_version=d.config_version or 0,
            hardening=pb.DeviceHardening(**{f: bool(getattr(d, f)) for f in HARDENING_FIELDS}))
        pool = pool_messages.get(d.device_pool or "")
        if pool is not None:
            message.pool.CopyFrom(pool)
        out.append(message)
    return out


async def device_config_pages(db, names: list[str] | None = None,
                              page: int = PAGE) -> AsyncIterator[pb.DeviceConfigsPage]:
    devices = await read_device_configs(db, names)
    for start in range(0, len(devices), page):
        yield pb.DeviceConfigsPage(devices=devices[start:start + page])
    if not devices:
        yield pb.DeviceConfigsPage()  # one (empty) page: the answer is "no device", not silence

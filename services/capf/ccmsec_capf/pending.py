"""The CAPF operation each device's SEP<MAC>.cnf.xml must carry, answered by CAPF, the owner of
operations (issue 9 §5): `Capf/GetPendingOperations`, which only tftp-signer may call.

The latest pending or in-progress operation of each device asked for (all when none), in one read,
streamed in pages ordered by device. Never the auth string (only its hash is stored anyway).
"""

from __future__ import annotations

from typing import AsyncIterator

from sqlalchemy import select

from ccmsec.db.capf import CapfOperation as OperationRow
from ccmsec.domain import CapfAuthMode, CapfOperation
from ccmsec_proto import capf_pb2

PENDING_STATES = ("pending", "in_progress")
PAGE = 1000


async def read_pending(db, names: list[str] | None = None) -> list[capf_pb2.PendingOperation]:
    query = (select(OperationRow.device_name, OperationRow.operation, OperationRow.auth_mode,
                    OperationRow.key_type, OperationRow.id)
             .where(OperationRow.state.in_(PENDING_STATES)).order_by(OperationRow.id))
    if names is not None:
        query = query.where(OperationRow.device_name.in_(names))
    async with db() as session:
        rows = (await session.execute(query)).all()
    latest = {r.device_name: r for r in rows}  # ordered by id: the latest wins
    return [capf_pb2.PendingOperation(device=r.device_name, operation=CapfOperation.parse(r.operation).to_proto(),
                                      auth_mode=CapfAuthMode.parse(r.auth_mode).to_proto(),
                                      key_type=r.key_type, id=r.id)
            for _, r in sorted(latest.items())]


async def pending_pages(db, names: list[str] | None = None,
                        page: int = PAGE) -> AsyncIterator[capf_pb2.PendingOperationsPage]:
    operations = await read_pending(db, names)
    for start in range(0, len(operations), page):
        yield capf_pb2.PendingOperationsPage(operations=operations[start:start + page])
    if not operations:
        yield capf_pb2.PendingOperationsPage()

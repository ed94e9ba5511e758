"""CHK-2: whether the CAPF service is activated on the publisher, kept in CAPF's own table
(`capf_settings`, capf its only writer).

A fresh cluster has no row, which means *not activated*: CAPF refuses phone sessions and
schedules until an administrator activates it (ideally before the CTL client runs, so the CTL
need not be rebuilt to name the CAPF certificate).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ccmsec.db.capf import get_capf_setting

SETTING_CAPF_ACTIVATED = "capf.activated"
NOT_ACTIVATED = ("CAPF service is not activated on the publisher (CHK-2); activate it with "
                 "`ccmsec capf activate`")


async def read_activated(factory: async_sessionmaker[AsyncSession]) -> bool:
    async with factory() as s:
        return await get_capf_setting(s, SETTING_CAPF_ACTIVATED) == "1"

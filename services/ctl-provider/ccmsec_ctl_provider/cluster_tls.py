"""The cluster's TLS settings for the listeners phones reach (LATER-8), owned here.

`legacy_tls` lets phones of the source's era — TLS 1.0 with AES128-SHA or NULL-SHA — register on
SCCP 2443 and enrol on CAPF 3804. Off by default. The CTL Provider is the one writer (key
`legacy_tls` of `cluster_settings`); callmanager and capf learn it through `GetClusterTls` when
they start, and a change restarts them (`policy.resets.LegacyTlsChanged`), in the same call that
stored it.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from ccmsec.db.devices import get_setting, set_setting

SETTING_LEGACY_TLS = "legacy_tls"


async def read_legacy_tls(session: AsyncSession) -> bool:
    return await get_setting(session, SETTING_LEGACY_TLS) == "on"


async def write_legacy_tls(session: AsyncSession, enabled: bool) -> bool:
    """Store the setting; True when it changed."""
    before = await read_legacy_tls(session)
    if before != enabled:
        await set_setting(session, SETTING_LEGACY_TLS, "on" if enabled else "off")
    return before != enabled

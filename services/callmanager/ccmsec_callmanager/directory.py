"""What the call agent needs to know about each device, read from callmanager's tables.

One snapshot of the call-routing configuration (lines, call forwarding, speed dials, regions,
extension-mobility users and logins) is loaded in a few queries and reused for `TTL` seconds, so a
registration storm costs one load, not one per phone; a `config.changed` event or a write through
this service drops it. `profile()` turns a device's registration and the snapshot into the
`DeviceProfile` the core runs with; `refreshed()` re-reads the routing of a device already
registered (its forwards, speed dials, region) so a change applies to its next call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from ccmsec.calls.config import DeviceProfile, LineConfig, ProfileError, SpeedDial
from ccmsec.calls.setup import STANDARD
from ccmsec.db import calls as calls_db
from ccmsec.db.devices import Device
from ccmsec.db.lines import Line
from ccmsec.policy.devices import SecurityMode

TTL = 2.0


@dataclass
class Snapshot:
    lines: dict[str, list[Line]] = field(default_factory=dict)            # device -> lines
    forwards: dict[str, calls_db.LineForward] = field(default_factory=dict)
    speed_dials: dict[str, list[calls_db.SpeedDial]] = field(default_factory=dict)
    wideband: dict[str, bool] = field(default_factory=dict)               # device -> region
    users: dict[str, calls_db.MobilityUser] = field(default_factory=dict)
    logins: dict[str, str] = field(default_factory=dict)                  # device -> user id
    numbers: set[str] = field(default_factory=set)                        # every configured DN
    softkeys: dict[str, str] = field(default_factory=dict)                # device -> softkey set
    loaded_at: float = 0.0


class CallDirectory:
    def __init__(self, sessionmaker: async_sessionmaker) -> None:
        self.db = sessionmaker
        self.snapshot = Snapshot()
        self._lock = asyncio.Lock()
        self.loads = 0

    def forget(self) -> None:
        self.snapshot.loaded_at = 0.0

    async def current(self) -> Snapshot:
        if time.monotonic() - self.snapshot.loaded_at <= TTL:
            return self.snapshot
        async with self._lock:  # one load for a whole registration storm
            if time.monotonic() - self.snapshot.loaded_at > TTL:
                self.snapshot = await self._load()
        return self.snapshot

    async def _load(self) -> Snapshot:
        snap = Snapshot()
        async with self.db() as session:
            for line in (await session.scalars(select(Line).order_by(Line.device, Line.line_index))).all():
                snap.lines.setdefault(line.device, []).append(line)
                snap.numbers.add(line.dn)
            for fwd in await calls_db.rows(session, calls_db.LineForward):
                snap.forwards[fwd.dn] = fwd
            for sd in (await session.scalars(select(calls_db.SpeedDial).order_by(
                    calls_db.SpeedDial.device, calls_db.SpeedDial.idx))).all():
                snap.speed_dials.setdefault(sd.device, []).append(sd)
            regions = {r.name: r.wideband for r in await calls_db.rows(session, calls_db.Region)}
            for dr in await calls_db.rows(session, calls_db.DeviceRegion):
                snap.wideband[dr.device] = regions.get(dr.region, False)
            for user in await calls_db.rows(session, calls_db.MobilityUser):
                snap.users[user.user_id] = user
                snap.numbers.add(user.dn)
            for login in await calls_db.rows(session, calls_db.MobilityLogin):
                snap.logins[login.device] = login.user_id
            # softkey set: the device's own, else its pool's ("standard" when neither)
            pools = {row.pool: row.softkey_set for row in await calls_db.rows(session, calls_db.PoolSoftkeys)}
            if pools:
                for name, pool in (await session.execute(
                        select(Device.name, Device.device_pool).where(Device.device_pool.in_(list(pools))))).all():
                    snap.softkeys[name] = pools[pool]
            for row in await calls_db.rows(session, calls_db.DeviceSoftkeys):
                snap.softkeys[row.device] = row.softkey_set
        snap.loaded_at = time.monotonic()
        self.loads += 1
        return snap

    def _line(self, snap: Snapshot, dn: str, label: str = "", display_name: str = "") -> LineConfig:
        fwd = snap.forwards.get(dn)
        return LineConfig(dn, label=label, display_name=display_name,
                          forward_busy=fwd.forward_busy if fwd else "",
                          forward_no_answer=fwd.forward_no_answer if fwd else "")

    async def profile(self, name: str, model: str, mode: str) -> DeviceProfile:
        """The profile of a device registering with effective security `mode` (DEV-1). An
        extension-mobility login replaces the device's lines with the user's (DEV-2: the mode
        stays the device's)."""
        return self._profile(await self.current(), name, model, mode)

    def profile_now(self, name: str, model: str, mode: str) -> DeviceProfile | None:
        """`profile()` from the snapshot in hand; None when it must be (re)loaded first."""
        if time.monotonic() - self.snapshot.loaded_at > TTL:
            return None
        return self._profile(self.snapshot, name, model, mode)

    def _profile(self, snap: Snapshot, name: str, model: str, mode: str) -> DeviceProfile:
        user_id = snap.logins.get(name, "")
        user = snap.users.get(user_id) if user_id else None
        try:
            if user is not None:
                lines = (self._line(snap, user.dn, user.label, user.display_name or user.user_id),)
            else:
                lines = tuple(self._line(snap, ln.dn, ln.label) for ln in snap.lines.get(name, ()))
            speed = tuple(SpeedDial(sd.idx, sd.number, sd.label)
                          for sd in snap.speed_dials.get(name, ()))
            return DeviceProfile(name, model=model, security_mode=SecurityMode(mode), lines=lines,
                                 speed_dials=speed, wideband_region=snap.wideband.get(name, False),
                                 user=user.user_id if user else "",
                                 softkey_set=snap.softkeys.get(name, STANDARD))
        except (ProfileError, ValueError):
            # A row the core cannot use must not stop the phone registering: no lines then.
            return DeviceProfile(name, model=model, security_mode=SecurityMode(mode))

    async def refreshed(self, profile: DeviceProfile) -> DeviceProfile:
        """`profile` with today's routing: call forward busy / no answer of its lines, its speed
        dials and codec region. The lines themselves stay those it registered with (the phone
        shows them; a new set of lines needs its restart, as on a real CallManager)."""
        snap = await self.current()
        try:
            lines = tuple(self._line(snap, ln.dn, ln.label, ln.display_name) for ln in profile.lines)
            speed = tuple(SpeedDial(sd.idx, sd.number, sd.label)
                          for sd in snap.speed_dials.get(profile.name, ()))
            return dataclasses.replace(profile, lines=lines, speed_dials=speed,
                                       wideband_region=snap.wideband.get(profile.name, False))
        except (ProfileError, ValueError):
            return profile   # a row the core cannot use: keep what it runs with

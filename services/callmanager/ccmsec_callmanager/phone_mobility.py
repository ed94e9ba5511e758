"""Extension mobility at the phone (issue 10, DEV-2): a user logs in or out FROM THE PHONE.

The phone sends DeviceToUserData with `<emLogin user=… pin=…/>` or `<emLogout/>`
(`ccmsec.calls.mobility`) on its own registered connection, so the device is the one that
registered — over TLS for authenticated and encrypted phones — and no other device can log a user
in to it. Call control checks the user's PIN (argon2 hash, `mobility_users.pin_hash`), stores the
login or logout through the one write path (`domain.mobility_login` / `mobility_logout`, audited
with the actor `phone/<device>` via sccp), answers the phone in UserToDeviceData, then restarts
it (SCCP Reset, restart) so it registers again with the user's line — keeping its own security
mode (DEV-2: mobility brings a line, never a status).

Refusals are answered to the phone, never a traceback: unknown user and wrong PIN get the same
text (no user enumeration); after `MAX_FAILURES` wrong PINs within `WINDOW` seconds a device is
refused for the rest of the window; a phone in a call is told to hang up first (the restart would
cut the call); malformed data is refused and logged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ccmsec.calls.mobility import (
    PIN_RE,
    LoginRequest,
    MobilityRequestError,
    MobilityResult,
    parse_request,
    result_message,
)
from ccmsec.db import calls as calls_db
from ccmsec.wire.sccp import ResetType
from ccmsec.wire.sccp_userdata import DeviceToUserData

from .domain import Actor, OwnerRefused

log = logging.getLogger("ccmsec.callmanager.mobility")

MAX_FAILURES = 5
WINDOW = 60.0
REFUSED = "wrong user id or PIN"
_hasher = PasswordHasher()


def hash_pin(pin: str) -> str:
    if not isinstance(pin, str) or not PIN_RE.fullmatch(pin):
        raise ValueError("the PIN is 4-16 digits")
    return _hasher.hash(pin)


def pin_matches(stored: str | None, pin: str) -> bool:
    if not stored:
        _hasher.hash(pin)   # same cost whether or not the user has a PIN
        return False
    try:
        return _hasher.verify(stored, pin)
    except (VerificationError, InvalidHashError):
        return False


class PhoneMobility:
    """Serves extension-mobility requests from phones registered on this node."""

    def __init__(self, service) -> None:
        self.service = service
        self._failures: dict[str, collections.deque[float]] = {}
        self.logins = self.logouts = self.refused = 0

    def _throttled(self, device: str, now: float) -> bool:
        recent = self._failures.setdefault(device, collections.deque(maxlen=MAX_FAILURES))
        while recent and now - recent[0] > WINDOW:
            recent.popleft()
        return len(recent) >= MAX_FAILURES

    def received(self, conn, device: str, message: DeviceToUserData) -> None:
        cc = self.service.callcontrol
        if cc is None or cc.calls is None or cc.calls.connections.get(device) is not conn:
            return   # not the connection that holds the device's registration
        self.service.spawn(self._serve(conn, device, message))

    async def _serve(self, conn, device: str, message: DeviceToUserData) -> None:
        try:
            result = await self._decide(conn, device, message)
        except Exception:   # never leave the phone without an answer
            log.exception("extension mobility request failed", extra={"device": device})
            result = MobilityResult(False, "login", "", "call control could not do it; try again")
        cc = self.service.callcontrol
        if cc is None or cc.calls is None or cc.calls.connections.get(device) is not conn \
                or conn.transport is None or conn.transport.is_closing():
            return   # the phone went away meanwhile
        conn.session.send(result_message(result, message.transaction_id))
        conn.flush()
        if result.ok:
            cc.directory.forget()   # it registers again with the new lines
            await cc.reset([device], ResetType.RESTART)
        else:
            self.refused += 1

    async def _decide(self, conn, device: str, message: DeviceToUserData) -> MobilityResult:
        try:
            request = parse_request(message)
        except MobilityRequestError as exc:
            log.warning("extension mobility: malformed request", extra={"device": device, "error": str(exc)})
            return MobilityResult(False, "login", "", "not understood")
        action = "login" if isinstance(request, LoginRequest) else "logout"
        user = request.user if isinstance(request, LoginRequest) else ""
        cc = self.service.callcontrol
        station = cc.calls.agent.stations.get(device) if cc is not None and cc.calls is not None else None
        if station is not None and station.legs:
            return MobilityResult(False, action, user, "hang up first")
        peer = conn.session.peer_address
        actor = Actor(f"phone/{device}", "sccp", remote=peer[0] if peer else None)
        domain = self.service.domain
        if isinstance(request, LoginRequest):
            now = time.monotonic()
            if self._throttled(device, now):
                return MobilityResult(False, action, user, "too many wrong PINs; wait a minute")
            # Counted as a failure before the check and taken back unless the PIN is wrong: tries
            # sent together would otherwise all pass the limit before the first one was counted.
            recent = self._failures[device]
            recent.append(now)
            wrong = False
            try:
                async with self.service.db() as session:
                    row = await session.get(calls_db.MobilityUser, user)
                    stored = row.pin_hash if row is not None else None
                wrong = not await asyncio.to_thread(pin_matches, stored, request.pin)
            finally:
                if not wrong:
                    with contextlib.suppress(ValueError):
                        recent.remove(now)
            if wrong:
                log.info("extension mobility login refused", extra={"device": device, "user": user})
                return MobilityResult(False, action, user, REFUSED)
            try:
                login = await domain.mobility_login(actor, device=device, user_id=user)
            except OwnerRefused as exc:
                return MobilityResult(False, action, user, exc.message)
            self.logins += 1
            return MobilityResult(True, action, user, f"logged in: line {login['dn']}")
        try:
            logout = await domain.mobility_logout(actor, device=device)
        except OwnerRefused as exc:
            return MobilityResult(False, action, "", exc.message)
        self.logouts += 1
        return MobilityResult(True, action, logout["user_id"], "logged out")

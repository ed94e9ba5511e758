"""Checking and recording one administrator request for a CAPF operation on a device.

Every check that can refuse a schedule is here, in order: the device exists (asked of its owner,
call control: `CallManager/GetDevice`, issue 9 §5 — unknown: refused; call control not answering:
refused as unavailable, before anything is written), its model can hold
an LSC (DEV-3: 7912/7910/7905G/7902 cannot), the operation / auth mode / key type are known, an
auth string goes with (and only with) auth mode "string", the deadline lies in the future. The
row itself is written by `ccmsec.db.capf.schedule_operation` into `capf_operations`, the one
source of truth the CAPF port and the TFTP signer (cnf.xml) read (CHK-7).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ccmsec.db.capf import AUTH_MODES, AUTH_STRING, OPERATIONS, schedule_operation, utcnow
from ccmsec.policy.devices import PolicyViolation, check_capf_allowed

from .devices import DevicesUnavailable
from .parameters import KEY_TYPES, CapfParameters

DeviceModel = Callable[[str], Awaitable["str | None"]]  # the owner's answer: model, None = unknown

MAX_DEADLINE = _dt.timedelta(days=366)


class ScheduleRefused(ValueError):
    """A schedule request refused; `kind` says how: invalid | unknown_device | policy | unavailable
    (call control, the devices' owner, did not answer)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ScheduleRequest:
    device: str
    operation: str
    auth_mode: str = ""          # "" = the enterprise default
    auth_string: str = ""
    key_type: str = ""           # "" = the enterprise default
    deadline: _dt.datetime | None = None


@dataclass(frozen=True)
class Scheduled:
    op_id: int
    device: str
    model: str
    operation: str
    auth_mode: str
    key_type: str
    deadline: _dt.datetime | None


def _check_fields(req: ScheduleRequest, params: CapfParameters, now: _dt.datetime) -> tuple[str, str, _dt.datetime | None]:
    if req.operation not in OPERATIONS:
        raise ScheduleRefused("invalid", f"unknown CAPF operation {req.operation!r} (one of {', '.join(OPERATIONS)})")
    auth_mode = req.auth_mode or params.get("default_auth_mode")
    if auth_mode not in AUTH_MODES:
        raise ScheduleRefused("invalid", f"unknown auth mode {auth_mode!r} (one of {', '.join(AUTH_MODES)})")
    if auth_mode == "string" and not req.auth_string:
        raise ScheduleRefused("invalid", "auth mode 'string' needs an auth string (4 to 10 digits)")
    if auth_mode == "string" and not AUTH_STRING.match(req.auth_string):
        raise ScheduleRefused("invalid", "the auth string must be 4 to 10 digits")
    if auth_mode != "string" and req.auth_string:
        raise ScheduleRefused("invalid", f"an auth string only goes with auth mode 'string', not {auth_mode!r}")
    key_type = req.key_type or params.get("default_key_type")
    if key_type not in KEY_TYPES:
        raise ScheduleRefused("invalid", f"unknown key type {key_type!r} (one of {', '.join(KEY_TYPES)})")
    deadline = req.deadline
    if deadline is not None:
        if deadline.tzinfo is None:
            raise ScheduleRefused("invalid", "the deadline needs a time zone")
        if deadline <= now:
            raise ScheduleRefused("invalid", f"the deadline {deadline.isoformat()} is not in the future")
        if deadline > now + MAX_DEADLINE:
            raise ScheduleRefused("invalid", "the deadline is more than a year away")
    elif params.int("operation_days"):
        deadline = now + _dt.timedelta(days=params.int("operation_days"))
    return auth_mode, key_type, deadline


async def schedule(factory: async_sessionmaker[AsyncSession], req: ScheduleRequest, params: CapfParameters,
                   *, device_model: DeviceModel, now: _dt.datetime | None = None,
                   also: Callable[[AsyncSession, Scheduled], None] | None = None) -> Scheduled:
    """Check the request and record it (replacing any unfinished operation of the device).
    `also(session, scheduled)` adds to the recording transaction (audit record, events)."""
    now = now or utcnow()
    auth_mode, key_type, deadline = _check_fields(req, params, now)
    try:
        model = await device_model(req.device)
    except DevicesUnavailable as exc:
        raise ScheduleRefused("unavailable", f"{exc}; nothing was scheduled") from None
    if model is None:
        raise ScheduleRefused("unknown_device", f"unknown device {req.device!r}")
    try:
        check_capf_allowed(model)
    except PolicyViolation as exc:
        raise ScheduleRefused("policy", f"{req.device}: {exc}") from None
    def then(session: AsyncSession, op_id: int) -> None:
        if also is not None:
            also(session, Scheduled(op_id, req.device, model, req.operation, auth_mode, key_type, deadline))

    op_id = await schedule_operation(factory, req.device, req.operation, auth_mode=auth_mode,
                                     auth_string=req.auth_string or None, key_type=key_type, deadline=deadline,
                                     also=then)
    return Scheduled(op_id, req.device, model, req.operation, auth_mode, key_type, deadline)

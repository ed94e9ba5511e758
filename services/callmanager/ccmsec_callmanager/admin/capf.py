"""/api/v1/capf/*: the CAPF service's administration through its gRPC API (CHK-2, issue 5 §1).

The CAPF service checks and records everything (scheduling rules, DEV-3, CHK-2, CHK-7); this
module only translates: JSON in, gRPC to `ccmsec.v1.Capf` over the cluster's mTLS (naming the
administrator, so CAPF's own audit record of each write — `owner.change` — names them), JSON out, and
gRPC refusals to the API's error shape (FAILED_PRECONDITION → 409 with the rule the message
names, NOT_FOUND → 404, INVALID_ARGUMENT → 422, UNAVAILABLE → 503). The channel comes from a
factory the service passes in (`Service.peer_channel("capf")`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
from typing import Callable, Literal

import grpc
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from ccmsec.db.devices import validate_device_name
from ccmsec.domain import CapfAuthMode, CapfOperation, DomainError
from ccmsec.runtime.servicer import ADMIN_USER_METADATA
from ccmsec_proto import capf_pb2, capf_pb2_grpc, ctl_provider_pb2

from .audit import actor_of
from .auth import Principal, require_admin, require_user
from .devices import checked_name
from . import schemas
from .errors import ApiError, body_schema, read_json
from .pagination import cursor_query, decode_cursor, encode_cursor, limit_query

log = logging.getLogger(__name__)

router = APIRouter(tags=["capf"])

CapfChannelFactory = Callable[[], grpc.aio.Channel]

CAPF_TIMEOUT = 10.0  # seconds per gRPC call
CAPF_WINDOW = 10_000  # the most rows CAPF answers with; the API's cursors page within them
UNREACHABLE = "CAPF service unreachable"
_RULE = re.compile(r"\b((?:AUTH|CALL|CERT|CHK|CTL|DEV|ENC|MODE|RST|SRST)-[0-9]{1,2})\b")
_STATUS = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 422,
           grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.PERMISSION_DENIED: 403}


def _name(cls, number: int) -> str:
    """The text of a proto enum number CAPF answered with ("" for one this version does not know)."""
    try:
        return cls.from_proto(number).value
    except DomainError:
        return ""


class CapfScheduleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    device: str = Field(max_length=64)
    operation: Literal[CapfOperation.choices()]  # type: ignore[valid-type]
    auth_mode: Literal[CapfAuthMode.choices()]  # type: ignore[valid-type]
    auth_string: str | None = Field(None, pattern=r"^[0-9]{4,10}$", description="4-10 digits")
    key_type: Literal["rsa1024", "rsa2048", "rsa4096", "ec256"] | None = Field(
        None, description="null = the CAPF enterprise default")
    deadline: str | None = Field(None, max_length=40,
                                 description="ISO 8601 with a time zone; not carried out after it")

    @field_validator("device")
    @classmethod
    def _valid_device(cls, value: str) -> str:
        return validate_device_name(value)

    @field_validator("deadline")
    @classmethod
    def _valid_deadline(cls, value: str | None) -> str | None:
        if value is not None:
            parse_deadline(value)
        return value


class CapfActivation(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    active: StrictBool


def parse_deadline(value: str) -> _dt.datetime:
    try:
        when = _dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"deadline {value!r} is not an ISO 8601 date and time") from None
    if when.tzinfo is None:
        raise ValueError("the deadline needs a time zone (e.g. 2030-01-01T00:00:00+00:00)")
    return when


def refusal(exc: grpc.aio.AioRpcError, device: str = "") -> ApiError:
    """A CAPF gRPC error as the API's answer (`device` is left out when looking for the rule)."""
    code, details = exc.code(), (exc.details() or "").strip()[:300]
    if code == grpc.StatusCode.UNAVAILABLE and "devices' owner" in details:
        return ApiError(503, details)  # CAPF answered: call control, asked for the device, did not
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return ApiError(503, f"{UNREACHABLE}: {details or code.name}")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        match = _RULE.search(details.replace(device, "") if device else details)
        return ApiError(409, details or "refused by the CAPF service", rule=match and match.group(1))
    status = _STATUS.get(code)
    if status is not None:
        return ApiError(status, details or code.name)
    return ApiError(502, f"CAPF service error {code.name}: {details}")


def _stub(request: Request) -> capf_pb2_grpc.CapfStub:
    factory: CapfChannelFactory | None = request.app.state.capf_channel
    if factory is None:
        raise ApiError(503, f"{UNREACHABLE}: no CAPF address configured for this API")
    try:
        return capf_pb2_grpc.CapfStub(factory())
    except Exception as exc:  # e.g. no peer address, unreadable client certificate
        raise ApiError(503, f"{UNREACHABLE}: {exc}") from None


async def _call(request: Request, method: str, message, device: str = ""):
    # CAPF audits its own writes (owner.change, recorded here by callmanager): it names the
    # administrator this API acts for, believed from the admin-api identity only.
    user = actor_of(request) or ""
    metadata = ((ADMIN_USER_METADATA, user),) if user else None
    try:
        return await getattr(_stub(request), method)(message, timeout=CAPF_TIMEOUT, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        log.info("CAPF %s refused: %s %s", method, exc.code().name, exc.details())
        raise refusal(exc, device) from None


def _iso(unix: int) -> str | None:
    return _dt.datetime.fromtimestamp(unix, _dt.timezone.utc).isoformat() if unix else None


def operation_dict(op: capf_pb2.CapfOperationState) -> dict:
    """An operation as JSON; the auth string is never sent back (CAPF does not return it either)."""
    s = op.schedule
    return {"id": op.id, "device": s.device, "operation": _name(CapfOperation, s.operation),
            "auth_mode": _name(CapfAuthMode, s.auth_mode), "key_type": s.key_type,
            "deadline": _iso(s.deadline_unix), "state": op.state, "reason": op.reason,
            "failed_attempts": op.failed_attempts, "created_at": _iso(op.created_unix),
            "updated_at": _iso(op.updated_unix), "issued_fingerprint": op.issued_fingerprint or None}


def issued_dict(entry: capf_pb2.IssuedCertificate) -> dict:
    c = entry.certificate
    return {"device": entry.device, "operation": entry.operation, "outcome": entry.outcome,
            "operation_id": entry.operation_id or None, "at": _iso(entry.at_unix),
            "certificate": {"serial": c.serial, "fingerprint_sha256": c.fingerprint_sha256,
                            "subject": c.subject, "issuer": c.issuer,
                            "not_before": _iso(c.not_before_unix), "not_after": _iso(c.not_after_unix)}}


def _status_request(device: str | None, limit: int) -> capf_pb2.CapfStatusRequest:
    return capf_pb2.CapfStatusRequest(device=checked_name(device) if device else "", limit=limit)


@router.post("/api/v1/capf/operations", name="capf.schedule", status_code=201,
             openapi_extra=body_schema(CapfScheduleRequest), responses={201: {"model": schemas.CapfOperationState}})
async def schedule(request: Request, _: Principal = Depends(require_admin)) -> dict:
    """Schedule install / upgrade / delete / troubleshoot of a phone's LSC (replaces an unfinished one)."""
    body = await read_json(request, CapfScheduleRequest)
    request.state.audit_target = body.device
    message = capf_pb2.CapfSchedule(
        device=body.device, operation=CapfOperation.parse(body.operation).to_proto(),
        auth_mode=CapfAuthMode.parse(body.auth_mode).to_proto(),
        auth_string=body.auth_string or "", key_type=body.key_type or "",
        deadline_unix=int(parse_deadline(body.deadline).timestamp()) if body.deadline else 0)
    op = await _call(request, "ScheduleOperation", message, body.device)
    return operation_dict(op)  # audited by CAPF with the schedule (owner.change), never the auth string


@router.get("/api/v1/capf/operations", name="capf.operations", responses={200: {"model": schemas.CapfOperationList}})
async def operations(request: Request, _: Principal = Depends(require_user),
                     device: str | None = Query(None, max_length=64),
                     limit: int = limit_query(), cursor: str | None = cursor_query()) -> dict:
    """Pending, in-progress, done, failed, expired and locked operations, with reasons; newest
    first. Page with `cursor` (over the newest 10 000 operations CAPF answers with)."""
    after = decode_cursor(cursor, int)
    reply = await _call(request, "GetOperations",
                        _status_request(device, CAPF_WINDOW if after else min(limit + 1, CAPF_WINDOW)))
    ops = [op for op in reply.operations if after is None or op.id < after[0]]
    next_cursor = encode_cursor(ops[limit - 1].id) if len(ops) > limit else None
    return {"operations": [operation_dict(op) for op in ops[:limit]], "next_cursor": next_cursor}


@router.get("/api/v1/capf/log", name="capf.log", responses={200: {"model": schemas.CapfLog}})
async def issued_log(request: Request, _: Principal = Depends(require_user),
                     device: str | None = Query(None, max_length=64),
                     limit: int = limit_query(), cursor: str | None = cursor_query()) -> dict:
    """Every issuance, installation, fetch and deletion CAPF recorded (CHK-7), oldest first within
    the newest 10 000. Page with `cursor` (a position in that window)."""
    start = decode_cursor(cursor, int)
    skip = start[0] if start else 0
    reply = await _call(request, "GetIssuedLog", _status_request(device, CAPF_WINDOW))
    entries = list(reply.entries)[skip:skip + limit + 1]
    next_cursor = encode_cursor(skip + limit) if len(entries) > limit else None
    return {"entries": [issued_dict(e) for e in entries[:limit]], "next_cursor": next_cursor}


@router.post("/api/v1/capf/activation", name="capf.activate",
             openapi_extra=body_schema(CapfActivation), responses={200: {"model": schemas.CapfActivation}})
async def activate(request: Request, _: Principal = Depends(require_admin)) -> dict:
    """CHK-2: activate (or deactivate) the CAPF service on the publisher."""
    body = await read_json(request, CapfActivation)
    request.state.audit_target = "capf"
    status = await _call(request, "Activate", ctl_provider_pb2.ActivateRequest(active=body.active))
    # audited by CAPF with the write (owner.change; an unchanged flag is no change)
    return {"role": status.role, "node": status.node, "activated": status.activated,
            "state": status.state, "details": dict(status.details)}

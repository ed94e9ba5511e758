"""SRST references and security on them (SRST-2, CERT-6, RST-5, CHK-10).

* `POST /api/v1/srst` creates a reference (name, host, ports); device pools name it in `srst`.
* `PUT /api/v1/srst/{name}/security` with `{"secure": true}` fetches the router's self-signed
  certificate from its credentials service (TLS, port `credentials_port`, 2445 by default), stores
  it with the reference (CERT-6: the cluster database, not the CTL), announces `config.changed` for
  every device whose pool names the reference (their `srstInfo` now carries the certificate) and
  resets exactly those devices (RST-5). A certificate that differs from the stored one is refused
  (409, CERT-6) unless the request confirms it with `accept_sha256` equal to the new fingerprint.
  An unreachable router changes nothing (502). `{"secure": false}` removes the certificate and
  resets the same devices.

The fetch happens before the transaction: nothing is written unless the certificate was obtained
and accepted.
"""

from __future__ import annotations

import datetime as _dt

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ccmsec.aio.srstcreds import (
    SrstCertificateChanged,
    SrstCredentialsError,
    SrstUnreachable,
    fetch_srst_certificate,
)
from ccmsec.db.devices import Device
from ccmsec.db.lines import DevicePool, validate_cm_group
from ccmsec.db.srst import InvalidSrstReference, SrstReference, validate_reference_name
from ccmsec.policy.resets import SrstSecurityChanged, required_actions

from .audit import new_entry
from .auth import Principal, require_admin, require_user
from . import schemas
from .errors import ApiError, body_schema, read_json
from .pagination import cursor_query, decode_cursor, limit_query, page

router = APIRouter(tags=["SRST references"])

FETCH_TIMEOUT = 10.0


class ReferenceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(max_length=64, description="what device pools name in `srst`")
    host: str = Field(max_length=64, description="the SRST router's address")
    sccp_port: int = Field(2000, ge=1, le=65535)
    sccp_tls_port: int = Field(2443, ge=1, le=65535)
    credentials_port: int = Field(2445, ge=1, le=65535, description="the credentials service (TLS)")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return validate_reference_name(value)

    @field_validator("host")
    @classmethod
    def _valid_host(cls, value: str) -> str:
        validate_cm_group([value])  # same host syntax as a CallManager
        return value


class SecurityChange(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    secure: bool
    accept_sha256: str = Field("", max_length=95, pattern=r"^[0-9A-Fa-f:]*$",
                               description="confirm a certificate that differs from the stored one")


def _checked_name(name: str) -> str:
    try:
        return validate_reference_name(name)
    except InvalidSrstReference as exc:
        raise ApiError(422, str(exc)) from None


async def dependent_devices(session, reference: str) -> list[str]:
    """Devices whose pool names this reference (the only ones SRST-2/RST-5 touch)."""
    pools = select(DevicePool.name).where(DevicePool.srst == reference)
    return list((await session.scalars(
        select(Device.name).where(Device.device_pool.in_(pools)).order_by(Device.name))).all())


@router.get("/api/v1/srst", name="srst.list", responses={200: {"model": schemas.SrstList}})
async def list_references(request: Request, _: Principal = Depends(require_user),
                          limit: int = limit_query(), cursor: str | None = cursor_query()) -> dict:
    """By name. Page with `cursor`."""
    after = decode_cursor(cursor, str)
    query = select(SrstReference).order_by(SrstReference.name).limit(limit + 1)
    if after is not None:
        query = query.where(SrstReference.name > after[0])
    async with request.app.state.sessionmaker() as session:
        rows, next_cursor = page((await session.scalars(query)).all(), limit, lambda r: (r.name,))
    return {"references": [row.to_dict() for row in rows], "next_cursor": next_cursor}


@router.get("/api/v1/srst/{name}", name="srst.show", responses={200: {"model": schemas.SrstReferenceDetail}})
async def show_reference(name: str, request: Request, _: Principal = Depends(require_user)) -> dict:
    name = _checked_name(name)
    async with request.app.state.sessionmaker() as session:
        row = await session.get(SrstReference, name)
        if row is None:
            raise ApiError(404, f"no SRST reference named {name}")
        devices = await dependent_devices(session, name)
        pools = list((await session.scalars(
            select(DevicePool.name).where(DevicePool.srst == name).order_by(DevicePool.name))).all())
    return {**row.to_dict(), "pools": pools, "devices": devices}


@router.post("/api/v1/srst", name="srst.create", status_code=201,
             openapi_extra=body_schema(ReferenceCreate), responses={201: {"model": schemas.SrstReference}})
async def create_reference(request: Request, _: Principal = Depends(require_admin)) -> dict:
    body = await read_json(request, ReferenceCreate)
    request.state.audit_target = body.name
    async with request.app.state.sessionmaker() as session:
        row = SrstReference(name=body.name, host=body.host, sccp_port=body.sccp_port,
                            sccp_tls_port=body.sccp_tls_port, credentials_port=body.credentials_port,
                            secure=False, fingerprint="", certificate_subject="")
        session.add(row)
        session.add(new_entry(request, status=201, detail=f"host={body.host} sccp={body.sccp_port} "
                                                          f"tls={body.sccp_tls_port}"))
        try:
            await session.flush()
        except IntegrityError:
            raise ApiError(409, f"SRST reference {body.name} already exists") from None
        result = row.to_dict()
        devices = await dependent_devices(session, body.name)
        # Pools may already name this reference as a bare host: their files now carry its ports.
        events = request.app.state.domain.events(session)  # committed with the change (outbox)
        events.config_changed(devices, "srst_reference")
        await session.commit()
    await request.app.state.domain.deliver(events, body.name)
    return result


@router.delete("/api/v1/srst/{name}", name="srst.delete", responses={200: {"model": schemas.Deleted}})
async def delete_reference(name: str, request: Request, _: Principal = Depends(require_admin)) -> dict:
    name = _checked_name(name)
    async with request.app.state.sessionmaker() as session:
        row = await session.get(SrstReference, name)
        if row is None:
            raise ApiError(404, f"no SRST reference named {name}")
        pools = list((await session.scalars(select(DevicePool.name).where(DevicePool.srst == name))).all())
        if pools:
            raise ApiError(409, f"SRST reference {name} is used by device pool(s) {', '.join(sorted(pools))}; "
                                "change their SRST reference first")
        await session.delete(row)
        session.add(new_entry(request, status=200, detail=f"host={row.host}"))
        await session.commit()
    return {"deleted": name}


@router.put("/api/v1/srst/{name}/security", name="srst.security",
            openapi_extra=body_schema(SecurityChange), responses={200: {"model": schemas.SrstSecurityResult}})
async def set_security(name: str, request: Request, _: Principal = Depends(require_admin)) -> dict:
    """Configure (or remove) security on the reference: SRST-2, CERT-6, RST-5."""
    name = _checked_name(name)
    body = await read_json(request, SecurityChange)
    async with request.app.state.sessionmaker() as session:
        row = await session.get(SrstReference, name)
        if row is None:
            raise ApiError(404, f"no SRST reference named {name}")
        host, port, stored = row.host, row.credentials_port, row.fingerprint
    fetched = None
    if body.secure:
        accept = body.accept_sha256.replace(":", "").lower()
        try:
            fetched = await fetch_srst_certificate(host, port, expected=stored, timeout=FETCH_TIMEOUT)
        except SrstCertificateChanged as exc:
            if accept != exc.fingerprint:
                raise ApiError(409, f"{exc}: repeat with accept_sha256={exc.fingerprint}",
                               rule="CERT-6") from None
            fetched = await _refetch_accepted(host, port, exc.fingerprint)
        except SrstUnreachable as exc:
            raise ApiError(502, f"SRST-2: {exc}; nothing changed", rule="SRST-2") from None
        except SrstCredentialsError as exc:
            raise ApiError(502, f"SRST-2: {exc}; nothing changed", rule="SRST-2") from None
    async with request.app.state.sessionmaker() as session:
        row = await session.get(SrstReference, name)
        if row is None:
            raise ApiError(404, f"no SRST reference named {name}")
        if fetched is not None and row.fingerprint not in ("", stored):
            raise ApiError(409, f"SRST reference {name} was changed by someone else meanwhile; retry")
        before, was_secure = row.fingerprint, row.secure
        if fetched is not None:
            row.secure = True
            row.certificate = fetched.der
            row.fingerprint = fetched.fingerprint
            row.certificate_subject = fetched.certificate.subject.rfc4514_string()[:255]
            row.secured_at = _dt.datetime.now(_dt.timezone.utc)
        else:
            row.secure = False
            row.certificate = None
            row.fingerprint = ""
            row.certificate_subject = ""
            row.secured_at = None
        changed = row.fingerprint != before or row.secure != was_secure
        devices = await dependent_devices(session, name)
        session.add(new_entry(request, status=200, rule="SRST-2",
                              detail=f"secure={row.secure} sha256={row.fingerprint or '-'} "
                                     f"(was {before or '-'}); {len(devices)} dependent devices"))
        result = row.to_dict()
        # config.changed and the RST-5 resets commit with the change (outbox, issue 9 §4)
        events = request.app.state.domain.events(session)
        if changed:
            events.config_changed(devices, "srst_security")
            events.actions(required_actions(SrstSecurityChanged(name, tuple(devices))),
                           reason=f"security on SRST reference {name}: secure={result['secure']}")
        await session.commit()
    delivery = await request.app.state.domain.deliver(events, name)
    return {**result, "devices": devices, "reset": devices if changed else [], "delivery": delivery}


async def _refetch_accepted(host: str, port: int, fingerprint: str):
    """The administrator confirmed `fingerprint`: fetch again and keep it only if it is that one."""
    try:
        return await fetch_srst_certificate(host, port, expected=fingerprint, timeout=FETCH_TIMEOUT)
    except SrstCertificateChanged as exc:
        raise ApiError(409, f"{exc} (changed again while confirming)", rule="CERT-6") from None
    except SrstCredentialsError as exc:
        raise ApiError(502, f"SRST-2: {exc}; nothing changed", rule="SRST-2") from None

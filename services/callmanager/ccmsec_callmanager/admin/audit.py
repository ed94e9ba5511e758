"""Audit log writing: every change and every refusal (who, what, when, target, outcome)."""

from __future__ import annotations

import logging

import datetime as _dt

from starlette.requests import Request
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from ccmsec.db.admin import AuditEntry
from ccmsec.db.devices import utcnow
from ccmsec.textsafe import fitted

log = logging.getLogger(__name__)

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_MAX_DETAIL = 1000


def outcome_for_status(status: int) -> str:
    if status < 400:
        return "ok"
    if status == 401:
        return "unauthenticated"
    if status == 403:
        return "denied"
    if status >= 500:
        return "error"
    return "refused"


def action_of(request: Request) -> str:
    """The route's name (e.g. device.update); unmatched paths are never audited."""
    route = request.scope.get("route")
    return getattr(route, "name", None) or f"{request.method} {request.url.path}"[:64]


def target_of(request: Request) -> str | None:
    target = getattr(request.state, "audit_target", None) or request.path_params.get("name")
    return None if target is None else fitted(target, 128)  # a path's name: the client's text


def actor_of(request: Request) -> str | None:
    principal = getattr(request.state, "principal", None)
    if principal is not None:
        return principal.username
    return getattr(request.state, "attempted_user", None)


def new_entry(request: Request, *, status: int, detail: str = "", rule: str | None = None,
              action: str | None = None, target: str | None = None) -> AuditEntry:
    client = request.client
    actor = actor_of(request)
    return AuditEntry(
        actor=fitted(actor, 64) if actor else None,  # may be a user name nobody has (a failed login)
        action=(action or action_of(request))[:64],
        target=target if target is not None else target_of(request),
        outcome=outcome_for_status(status),
        status=status,
        rule=rule,
        detail=detail[:_MAX_DETAIL],
        remote=f"{client.host}:{client.port}"[:64] if client else None,
    )


def should_audit_refusal(request: Request, status: int) -> bool:
    if request.scope.get("route") is None:
        return False  # unknown paths: noise from scanners, not an administrative act
    return status in (401, 403) or request.method in MUTATING_METHODS or status >= 500


async def record_refusal(request: Request, status: int, detail: str, rule: str | None) -> None:
    """Write a refusal in its own transaction (the request's own transaction, if any, is rolled back)."""
    if not should_audit_refusal(request, status):
        return
    sessionmaker: async_sessionmaker = request.app.state.sessionmaker
    try:
        async with sessionmaker() as session, session.begin():
            session.add(new_entry(request, status=status, detail=detail, rule=rule))
    except Exception:  # the refusal is still answered; losing its audit row is logged loudly
        log.exception("could not write audit row for refused %s %s", request.method, request.url.path)


PRUNE_BATCH = 10_000  # rows per DELETE: a big backlog never holds the database for long


async def prune_audit(sessionmaker: async_sessionmaker, *, max_age_days: int, max_rows: int,
                      now: _dt.datetime | None = None) -> int:
    """Retention: delete rows older than `max_age_days` and, beyond them, the oldest rows over
    `max_rows` (0 disables either limit). Returns how many rows went; each batch is its own
    transaction, so writers are never blocked for long."""
    removed = 0
    cutoff = (now or utcnow()) - _dt.timedelta(days=max_age_days) if max_age_days else None
    while True:
        async with sessionmaker() as session, session.begin():
            last = None
            if cutoff is not None:  # `at` is indexed, and ids grow with time
                last = await session.scalar(
                    select(func.max(AuditEntry.id)).where(AuditEntry.at < cutoff))
            if max_rows:
                over = await session.scalar(select(AuditEntry.id).order_by(AuditEntry.id.desc())
                                            .offset(max_rows).limit(1))
                last = over if last is None or (over is not None and over > last) else last
            if last is None:
                return removed
            first = await session.scalar(select(func.min(AuditEntry.id)))
            upto = min(last, first + PRUNE_BATCH - 1)
            result = await session.execute(delete(AuditEntry).where(AuditEntry.id <= upto))
            removed += result.rowcount or 0
        if upto >= last:
            return removed

"""Announcing committed changes on the bus: `config.changed`, and the resets/restarts a change
requires according to `ccmsec.policy.resets.required_actions` (RST-1..9), nothing more.

Called after commit. A bus outage must not undo a committed change, so a failed or stuck publish
is logged and audited (`event.publish` / `error`) instead of failing the request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Iterable

from starlette.requests import Request

from ccmsec.policy.resets import Action
from ccmsec_proto import events_pb2

from ccmsec.runtime.actions import event_bodies
from ccmsec_callmanager.domain import merge_resets  # noqa: F401  (the one definition)

from .audit import new_entry

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 5.0  # seconds; a stuck bus must not hang the request


async def announce(request: Request, kind: str, target: str | None, payload: dict,
                   *, about: str | None = None) -> bool:
    """Publish one event; False (logged and audited against `about`) when it could not be sent."""
    try:
        await asyncio.wait_for(request.app.state.events.publish(kind, target, payload),
                               PUBLISH_TIMEOUT)
        return True
    except Exception as exc:  # includes TimeoutError
        log.exception("could not publish %s for %s", kind, about or target)
        async with request.app.state.sessionmaker() as session, session.begin():
            session.add(new_entry(request, status=500, action="event.publish",
                                  target=(about or target or "")[:128] or None,
                                  detail=f"{kind} not published: {exc!r}"))
        return False


async def config_changed(request: Request, devices: Iterable[str], what: str) -> bool:
    """`config.changed` for these devices (their configuration files must be rebuilt)."""
    devices = sorted(set(devices))
    if not devices:
        return True
    body = events_pb2.ConfigChanged(devices=devices, what=what)
    return await announce(request, "config.changed", None, {"config_changed": body},
                          about=devices[0] if len(devices) == 1 else f"{len(devices)} devices")


async def publish_actions(request: Request, actions: Iterable[Action], *, reason: str = "",
                          request_id: str = "", about: str | None = None) -> bool:
    """The events for policy actions, through the one mapping (`ccmsec.runtime.actions`)."""
    ok = True
    for kind, target, body in event_bodies(merge_resets(actions), reason=reason,
                                           request_id=request_id):
        ok &= await announce(request, kind, target, body, about=about)
    return ok

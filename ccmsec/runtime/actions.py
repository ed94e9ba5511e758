"""Carry out the actions of `ccmsec.policy.resets.required_actions` as bus events.

The rule table lives in the policy module; this is the one place where an action becomes an event:
each `ResetDevices` one `device.reset`, each `RestartService` one `service.restart.<role>`, nothing
more. Used by every service that makes a change the RST-* rules cover.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Iterable

from ccmsec.policy.resets import ALL, Action, DevicesOnServer, ResetDevices, ResetKind, RestartService
from ccmsec_proto import events_pb2

Publish = Callable[..., Awaitable[events_pb2.Event]]  # Service.publish(kind, target, **body)

_KINDS = {ResetKind.RESET: events_pb2.RESET, ResetKind.RESTART: events_pb2.RESTART}


def event_for(action: Action, reason: str = "", request_id: str = "") -> tuple[str, str | None, dict]:
    """(event kind, subject target, body) for one action."""
    if isinstance(action, ResetDevices):
        body = events_pb2.DeviceReset(kind=_KINDS[action.kind], rule=action.rule_id, reason=reason,
                                      request_id=request_id)
        if action.devices is ALL:
            body.all = True
        elif isinstance(action.devices, DevicesOnServer):
            body.server = action.devices.server
        else:
            body.devices.extend(action.devices)
        return "device.reset", None, {"device_reset": body}
    if isinstance(action, RestartService):
        nodes = [] if action.nodes is ALL else list(action.nodes)
        body = events_pb2.ServiceRestart(role=action.role, nodes=nodes, rule=action.rule_id, reason=reason)
        return "service.restart", action.role, {"service_restart": body}
    raise TypeError(f"not a reset or restart action: {action!r}")


def event_bodies(actions: Iterable[Action], *, reason: str = "",
                 request_id: str = "") -> list[tuple[str, str | None, dict]]:
    """(kind, target, body) for each action, in order."""
    return [event_for(a, reason, request_id) for a in actions]


def describe(kind: str, target: str | None, body: dict) -> str:
    """'<kind>[.<target>] <rule>': what was emitted, for RPC replies, logs and tests."""
    rule = ""
    for value in body.values():
        rule = getattr(value, "rule", "") or rule
    return f"{kind}{'.' + target if target else ''} {rule}".strip()


async def publish_actions(publish: Publish, actions: Iterable[Action], *, reason: str = "",
                          request_id: str = "") -> list[str]:
    """Publish one event per action; returns what was published, described."""
    published = []
    for kind, target, body in event_bodies(actions, reason=reason, request_id=request_id):
        await publish(kind, target, **body)
        published.append(describe(kind, target, body))
    return published

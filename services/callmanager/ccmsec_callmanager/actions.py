"""Turn policy actions (ccmsec.policy.resets) into bus events.

`publish_actions` is the one place where a configuration change becomes `device.reset` /
`service.restart` events: exactly the actions `required_actions(change)` returns, nothing more.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from ccmsec.policy.resets import (
    ALL,
    Action,
    DevicesOnServer,
    ResetDevices,
    ResetKind,
    RestartService,
)
from ccmsec_proto import events_pb2

Publish = Callable[..., Awaitable[events_pb2.Event]]  # Service.publish(kind, target, **body)

_KINDS = {ResetKind.RESET: events_pb2.RESET, ResetKind.RESTART: events_pb2.RESTART}


def event_bodies(actions: list[Action], *, reason: str = "",
                 request_id: str = "") -> list[tuple[str, str | None, dict]]:
    """(kind, target, body) for each action, in order."""
    out: list[tuple[str, str | None, dict]] = []
    for action in actions:
        if isinstance(action, ResetDevices):
            body = events_pb2.DeviceReset(kind=_KINDS[action.kind], rule=action.rule_id,
                                          reason=reason, request_id=request_id)
            if action.devices is ALL:
                body.all = True
            elif isinstance(action.devices, DevicesOnServer):
                body.server = action.devices.server
            else:
                body.devices.extend(action.devices)
            out.append(("device.reset", None, {"device_reset": body}))
        elif isinstance(action, RestartService):
            nodes = [] if action.nodes is ALL else list(action.nodes)
            body = events_pb2.ServiceRestart(role=action.role, nodes=nodes, rule=action.rule_id,
                                             reason=reason)
            out.append(("service.restart", action.role, {"service_restart": body}))
        else:  # pragma: no cover - the policy module only returns these two
            raise TypeError(f"unknown action {action!r}")
    return out


async def publish_actions(publish: Publish, actions: list[Action], *, reason: str = "",
                          request_id: str = "") -> list[events_pb2.Event]:
    return [await publish(kind, target, **body)
            for kind, target, body in event_bodies(actions, reason=reason, request_id=request_id)]

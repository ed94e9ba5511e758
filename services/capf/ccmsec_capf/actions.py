"""Carry out the reset/restart actions `ccmsec.policy.resets.required_actions` returned, as events.

The rule table lives in the policy module; this module only turns each action into exactly one
event on the bus (`device.reset` or `service.restart.<role>`) and nothing more.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from ccmsec.policy.resets import ALL, Action, DevicesOnServer, ResetDevices, ResetKind, RestartService
from ccmsec_proto import events_pb2

Publish = Callable[..., Awaitable[events_pb2.Event]]

_KIND = {ResetKind.RESET: events_pb2.RESET, ResetKind.RESTART: events_pb2.RESTART}


def event_for(action: Action, reason: str) -> tuple[str, str | None, dict]:
    """(event kind, subject target, body) for one action."""
    if isinstance(action, RestartService):
        nodes = [] if action.nodes is ALL else list(action.nodes)
        body = events_pb2.ServiceRestart(role=action.role, nodes=nodes, rule=action.rule_id, reason=reason)
        return "service.restart", action.role, {"service_restart": body}
    if isinstance(action, ResetDevices):
        msg = events_pb2.DeviceReset(kind=_KIND[action.kind], rule=action.rule_id, reason=reason)
        if action.devices is ALL:
            msg.all = True
        elif isinstance(action.devices, DevicesOnServer):
            msg.server = action.devices.server
        else:
            msg.devices.extend(action.devices)
        return "device.reset", None, {"device_reset": msg}
    raise TypeError(f"not a reset action: {action!r}")


async def execute(publish: Publish, actions: list[Action], reason: str) -> list[str]:
    """Publish one event per action; returns "<kind>[.<target>] <rule>" for each."""
    done = []
    for action in actions:
        kind, target, body = event_for(action, reason)
        await publish(kind, target, **body)
        done.append(f"{kind}{'.' + target if target else ''} {action.rule_id}")
    return done

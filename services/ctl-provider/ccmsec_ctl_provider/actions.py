"""Turn the reset/restart actions of ccmsec.policy.resets into bus events — one place, no rules.

`action_events(actions, reason)` is pure: it returns (kind, target, body) triples that
`Service.publish(kind, target, **body)` sends; `describe` gives the "<subject> <rule>" strings the
RPC replies list so an administrator (and a test) sees exactly what was emitted.
"""

from __future__ import annotations

from ccmsec.policy.resets import ALL, Action, DevicesOnServer, ResetDevices, ResetKind, RestartService
from ccmsec_proto import events_pb2

_KINDS = {ResetKind.RESET: events_pb2.RESET, ResetKind.RESTART: events_pb2.RESTART}


def action_events(actions: list[Action], reason: str) -> list[tuple[str, str | None, dict]]:
    events = []
    for action in actions:
        if isinstance(action, ResetDevices):
            body = events_pb2.DeviceReset(kind=_KINDS[action.kind], rule=action.rule_id, reason=reason)
            if action.devices is ALL:
                body.all = True
            elif isinstance(action.devices, DevicesOnServer):
                body.server = action.devices.server
            else:
                body.devices.extend(action.devices)
            events.append(("device.reset", None, {"device_reset": body}))
        elif isinstance(action, RestartService):
            nodes = [] if action.nodes is ALL else list(action.nodes)
            body = events_pb2.ServiceRestart(role=action.role, nodes=nodes, rule=action.rule_id,
                                             reason=reason)
            events.append(("service.restart", action.role, {"service_restart": body}))
        else:  # pragma: no cover - the policy module only returns the two kinds
            raise TypeError(f"unknown action {action!r}")
    return events


def describe(kind: str, target: str | None, body: dict) -> str:
    rule = ""
    for value in body.values():
        rule = getattr(value, "rule", "") or rule
    subject = kind + (f".{target}" if target else "")
    return f"{subject} {rule}".strip()

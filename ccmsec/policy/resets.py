"""RST-1..9 (and LATER-8): what a configuration change requires to be reset or restarted — a
pure function.

`required_actions(change)` maps one typed change to the list of actions, exactly as the rule
table says and nothing more. Services act on the actions (events `device.reset`,
`service.restart.<role>`); each action names the rule it comes from.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Union


class ResetKind(str, enum.Enum):
    RESET = "reset"  # SCCP Reset type 1: the phone re-runs its boot
    RESTART = "restart"  # SCCP Reset type 2: the phone restarts its application


class _All(enum.Enum):
    ALL = "all"


ALL = _All.ALL  # every device / every node


@dataclass(frozen=True)
class DevicesOnServer:
    """The devices registered to one call-control server at the time the action runs."""

    server: str


DeviceTarget = Union[tuple[str, ...], _All, DevicesOnServer]

# RST-9's server is a call-control node of the cluster (the CallManager group: docs/rules.md,
# docs/survivability.md): the publisher `callmanager` or a subscriber `callmanager-subK`, K from 1
# to MAX_SUBSCRIBERS (ccmsec/cluster/topology.py). An SRST reference (`srst`) is no call-control
# node — it takes over while call control cannot serve phones (SRST-1) — nor is any other service:
# its phones in fallback are reset by name or with every device (CHK-13), never "on a server".
MAX_SUBSCRIBERS = 4
_CALL_CONTROL_NODE = re.compile(r"callmanager(?:-sub([1-9][0-9]?))?")


class NotACallControlNode(ValueError):
    """A reset on a server (RST-9) naming something that is no call-control node."""


class NoSuchCallControlNode(LookupError):
    """A reset on a server (RST-9) naming a call-control node this cluster does not run: a well-
    formed name (`callmanager-sub3`) that would reach no phone, the request accepted for nothing."""


def check_reset_server(server: str, nodes: frozenset[str] | None = None) -> str:
    """`server` if it names a call-control node (RST-9); else NotACallControlNode saying why.
    `nodes`: the cluster's call-control nodes when known (setting CCMSEC_CLUSTER_CALL_CONTROL_NODES,
    which the local runner and compose both set from `ccmsec.cluster.topology.call_control_node_names`);
    a node not among them is NoSuchCallControlNode. None: not known (a service run alone), the
    form alone decides."""
    match = _CALL_CONTROL_NODE.fullmatch(server) if isinstance(server, str) else None
    if match is None or (match.group(1) and int(match.group(1)) > MAX_SUBSCRIBERS):
        shown = repr(str(server)[:64])
        hint = (" (an SRST reference: its phones in fallback are reset by name or with every "
                "device)" if server == "srst" else "")
        raise NotACallControlNode(
            f"server {shown} is no call-control node{hint}: a reset on a server (RST-9) names the "
            f"publisher callmanager or a subscriber callmanager-sub1…callmanager-sub{MAX_SUBSCRIBERS}")
    if nodes is not None and server not in nodes:
        raise NoSuchCallControlNode(
            f"server {server!r} is no node of this cluster: its call-control nodes are "
            f"{', '.join(sorted(nodes))}; a reset on it would reach no phone")
    return server


# Changes -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeviceSecurityModeChanged:
    device: str


@dataclass(frozen=True)
class HardeningChanged:
    device: str


@dataclass(frozen=True)
class ClusterModeChanged:
    pass


@dataclass(frozen=True)
class CtlUpdated:
    pass


@dataclass(frozen=True)
class SrstSecurityChanged:
    srst: str
    dependent_devices: tuple[str, ...]


@dataclass(frozen=True)
class CapfEnterpriseParamsChanged:
    pass


@dataclass(frozen=True)
class CtlProviderPortChanged:
    pass


@dataclass(frozen=True)
class CapfServiceParamsChanged:
    pass


@dataclass(frozen=True)
class ResetDevicesOnServer:
    server: str


@dataclass(frozen=True)
class LegacyTlsChanged:
    """LATER-8: the cluster's legacy-TLS setting (TLS 1.0 on 2443 and 3804)."""


Change = Union[DeviceSecurityModeChanged, HardeningChanged, ClusterModeChanged, CtlUpdated,
               SrstSecurityChanged, CapfEnterpriseParamsChanged, CtlProviderPortChanged,
               CapfServiceParamsChanged, ResetDevicesOnServer, LegacyTlsChanged]


# Actions -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResetDevices:
    devices: DeviceTarget
    kind: ResetKind
    rule_id: str


@dataclass(frozen=True)
class RestartService:
    role: str  # service role name as in the topology (callmanager, tftp-signer, ...)
    rule_id: str
    nodes: tuple[str, ...] | _All = ALL


Action = Union[ResetDevices, RestartService]


def required_actions(change: Change) -> list[Action]:
    """The resets and restarts one change requires (RST-1..9)."""
    match change:
        case DeviceSecurityModeChanged(device=device):
            return [ResetDevices((device,), ResetKind.RESET, "RST-1")]
        case HardeningChanged(device=device):
            return [ResetDevices((device,), ResetKind.RESET, "RST-2")]
        case ClusterModeChanged():
            return [ResetDevices(ALL, ResetKind.RESET, "RST-3"),
                    RestartService("callmanager", "RST-3")]
        case CtlUpdated():
            return [ResetDevices(ALL, ResetKind.RESTART, "RST-4"),
                    RestartService("callmanager", "RST-4"),
                    RestartService("tftp-signer", "RST-4")]
        case SrstSecurityChanged(dependent_devices=devices):
            if not devices:
                return []
            return [ResetDevices(tuple(devices), ResetKind.RESET, "RST-5")]
        case CapfEnterpriseParamsChanged():
            return [ResetDevices(ALL, ResetKind.RESET, "RST-6")]
        case CtlProviderPortChanged():
            return [RestartService("ctl-provider", "RST-7")]
        case CapfServiceParamsChanged():
            return [RestartService("capf", "RST-8")]
        case ResetDevicesOnServer(server=server):
            return [ResetDevices(DevicesOnServer(server), ResetKind.RESET, "RST-9")]
        case LegacyTlsChanged():
            # The listeners phones reach over TLS are rebuilt with the new protocol versions.
            return [RestartService("callmanager", "LATER-8"), RestartService("capf", "LATER-8")]
    raise TypeError(f"not a configuration change: {change!r}")

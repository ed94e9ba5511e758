"""Who may call what: every gRPC method of every ccmsec service and the roles allowed to call it.

The caller's role comes from its certificate (`ccmsec.runtime.identity`). The runtime checks this
table before any handler runs (`ccmsec.runtime.authz`), for every service: **default deny** — a
method missing here is refused, and `tests/unit/test_rpc_policy.py` fails for any proto method
without an entry. When you add an RPC (or a new call site of one), add or widen its entry here.

Roles: the eight service roles, `cli` (the command line: the administrator on the host, the CTL
client, benches) and `admin-api` (the HTTPS administration API inside callmanager). Each entry is
built from the real call sites (stubs in services/, ccmsec/cli, ccmsec/demo.py) and the owner of
the state the method changes:

* key material (KeyManager) only to call control;
* CA changes (CAPF third-party CA, certificate imports) and cluster-mode changes only from the
  administration path (`cli`, `admin-api`); the cluster mode is ctl-provider's own state, changed
  only through `CtlProvider/SetSecurityMode` and `CommitCtl`;
* each service's `Status` to the administration path and to the service itself (its own
  healthcheck); gRPC health and reflection to any identity of the cluster (liveness and tooling).
"""

from __future__ import annotations

from typing import Iterable

ADMIN = frozenset({"cli", "admin-api"})
ANY = frozenset({"*"})  # any valid cluster identity


def _roles(*groups: Iterable[str] | str) -> frozenset[str]:
    out: set[str] = set()
    for g in groups:
        out |= {g} if isinstance(g, str) else set(g)
    return frozenset(out)


def _status(role: str) -> frozenset[str]:
    return _roles(ADMIN, role)


# service -> method -> roles allowed
_TABLE: dict[str, dict[str, frozenset[str]]] = {
    "ccmsec.v1.CallManager": {
        "Status": _status("callmanager"),
        "GetRegistrations": ADMIN,
        "ResetDevices": ADMIN,                       # ccmsec device reset / reset-all (RST-9, CHK-13)
        "GetResetProgress": ADMIN,
        "GetClusterMode": _roles(ADMIN, "srtp-gateway"),  # the gateway: GW-4
        "GetRefusals": ADMIN,
        "AddLine": ADMIN,
        "GetLines": ADMIN,
        "AddDevicePool": ADMIN,
        "GetDevicePools": ADMIN,
        "SetDevicePool": ADMIN,
        "GetSrstDirectory": _roles(ADMIN, "srst"),   # SRST-1: the phones the reference serves
        "ListCalls": ADMIN,                          # ccmsec calls; read-only (CALL-1)
        "WatchCalls": ADMIN,                         # ccmsec calls --watch
        "DriveCtiPort": ADMIN,                       # ccmsec calls cti: an application's CTI port
        "AddMobilityUser": ADMIN,                    # ccmsec mobility add
        "GetMobilityUsers": ADMIN,
        "SetMobilityPin": ADMIN,                     # ccmsec mobility pin
        # extension mobility (`ccmsec phones login|logout`); not phone-sim: it changes nothing (issue 9)
        "MobilityLogin": ADMIN,
        "MobilityLogout": ADMIN,
        "SetSpeedDial": ADMIN,                       # ccmsec device speed-dial
        "SetLineForward": ADMIN,                     # ccmsec line forward
        "SetRegion": ADMIN,                          # ccmsec region set (CALL-9)
        "SetDeviceRegion": ADMIN,                    # ccmsec region assign
        # CAPF's device look-ups (schedules, phone sessions, CHK-8): devices are call control's
        # (issue 9 §5), and only CAPF needs them this way.
        "GetDevice": frozenset({"capf"}),
        "ListDevices": frozenset({"capf"}),
        # What the TFTP server builds each SEP<MAC>.cnf.xml from (devices, pools, SRST references
        # are call control's, issue 9 §5): only the TFTP server reads it this way.
        "GetDeviceConfigs": frozenset({"tftp-signer"}),
        # This node's ccmserver.cer (CERT-5): the CTL Provider's CallManager record of it (AUTH-2).
        "GetServerCertificate": frozenset({"ctl-provider"}),
    },
    "ccmsec.v1.Capf": {
        "Status": _status("capf"),
        "Activate": ADMIN,
        "ScheduleOperation": ADMIN,
        "GetOperations": ADMIN,
        # The pending operation each device's cnf.xml carries (operations are CAPF's, issue 9 §5).
        "GetPendingOperations": frozenset({"tftp-signer"}),
        "GetIssuedLog": ADMIN,
        "GetCapfCertificate": _roles(ADMIN, "ctl-provider"),  # the CAPF record of the CTL
        "GetParameters": ADMIN,
        "SetServiceParameters": ADMIN,
        "SetEnterpriseParameters": ADMIN,
        "CheckLscs": ADMIN,
        "ExportCsrs": ADMIN,
        "ImportCertificates": ADMIN,                 # offline CA: certificates signed outside
        "SetThirdPartyCa": ADMIN,                    # the CA call control trusts for LSCs
        # the offline issuer's CA, from its owner: call control trusts its LSCs on 2443, phone-sim's
        # phones store them (never read from a file another role could write)
        "GetThirdPartyCa": _roles(ADMIN, "callmanager", "phone-sim"),
    },
    "ccmsec.v1.CtlProvider": {
        "Status": _status("ctl-provider"),
        "Activate": ADMIN,
        "GetServerCertificates": ADMIN,
        "GetProviderSettings": ADMIN,
        "SetProviderPort": ADMIN,
        "GetCurrentCtl": _roles(ADMIN, "capf"),      # CERT-3: CAPF asks whether a CTL exists
        "CommitCtl": ADMIN,                          # the CTL client (ccmsec ctl update)
        # call control follows the mode (MODE-4/5); the TFTP server signs by it (AUTH-3)
        "GetSecurityMode": _roles(ADMIN, "callmanager", "tftp-signer"),
        "SetSecurityMode": ADMIN,
        "ListTftpClusters": ADMIN,
        "RegisterTftpCluster": ADMIN,
        "RemoveTftpCluster": ADMIN,
        # LATER-8: the two services whose phone listeners follow the setting read it at start.
        "GetClusterTls": _roles(ADMIN, "callmanager", "capf"),
        "SetClusterTls": ADMIN,
    },
    "ccmsec.v1.KeyManager": {
        "Status": _roles(_status("keymanager"), "callmanager"),  # its one client reads its counters
        "GenerateCallKeys": frozenset({"callmanager"}),  # SRTP master keys: call control only
    },
    "ccmsec.v1.PhoneSim": {
        "Status": _status("phone-sim"),
        "AddPhones": ADMIN,
        "BootPhones": ADMIN,
        "ResetPhones": ADMIN,
        "ListPhones": ADMIN,
        "GetPhone": ADMIN,
        "FactoryReset": ADMIN,
        "SetAuthString": ADMIN,
        "OpenSettings": ADMIN,  # DEV-4: the Settings menu, as a user at the phone would open it
        "SetServers": ADMIN,                         # phones set-servers: point phones at other servers
        "PhoneAction": ADMIN,                        # ccmsec phones dial|answer|hangup|… (issue 10)
        "GetPhoneCalls": ADMIN,                      # ccmsec phones calls: the display, lock/shield
    },
    "ccmsec.v1.Srst": {
        "Status": _status("srst"),
        "GetSrstStatus": ADMIN,
        "GetCertificate": ADMIN,
    },
    "ccmsec.v1.SrtpGateway": {
        "Status": _status("srtp-gateway"),
        "CreateConnection": frozenset({"callmanager"}),  # call control drives the gateway (GW-*)
        "ModifyConnection": frozenset({"callmanager"}),
        "DeleteConnection": frozenset({"callmanager"}),
        "AuditEndpoint": _roles(ADMIN, "callmanager"),   # read-only: connections and their counters
    },
    "ccmsec.v1.TftpSigner": {
        "Status": _status("tftp-signer"),
        "PublishFile": frozenset({"ctl-provider"}),  # the CTL file after a commit
        "Resign": ADMIN,
        "GetSigningCertificate": _roles(ADMIN, "ctl-provider", "phone-sim"),
        "ListFiles": ADMIN,
        "AddSharedCluster": ADMIN,
        "ListSharedClusters": ADMIN,
    },
    # Every service's own outbox (runtime/servicer.py OutboxServicer): its set-aside rows, listed
    # and re-queued by the operator only (`ccmsec outbox list|resend`).
    "ccmsec.v1.Outbox": {
        "ListSetAside": ADMIN,
        "Resend": ADMIN,
    },
    # Open to every identity of the cluster: liveness probes and tooling.
    "grpc.health.v1.Health": {"Check": ANY, "Watch": ANY},
    "grpc.reflection.v1.ServerReflection": {"ServerReflectionInfo": ANY},
    "grpc.reflection.v1alpha.ServerReflection": {"ServerReflectionInfo": ANY},
}

POLICY: dict[str, frozenset[str]] = {
    f"/{service}/{method}": roles for service, methods in _TABLE.items() for method, roles in methods.items()
}


def allowed_roles(method: str) -> frozenset[str] | None:
    """The roles that may call `/package.Service/Method`; None = no entry (refused)."""
    return POLICY.get(method)


def is_allowed(method: str, role: str) -> bool:
    roles = POLICY.get(method)
    return roles is not None and (role in roles or roles is ANY)


def services() -> tuple[str, ...]:
    return tuple(_TABLE)


def describe() -> str:
    """The table as Markdown (docs/architecture.md embeds it; a test keeps the two equal)."""
    lines = ["| method | roles allowed |", "|---|---|"]
    for service, methods in _TABLE.items():
        for method, roles in methods.items():
            shown = "any cluster identity" if roles is ANY else ", ".join(sorted(roles))
            name = service if service.startswith("grpc.") else service.rsplit(".", 1)[-1]
            lines.append(f"| `{name}/{method}` | {shown} |")
    return "\n".join(lines)

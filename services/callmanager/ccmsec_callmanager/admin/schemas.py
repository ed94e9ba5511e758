"""Typed response models of the administration API (what each endpoint answers, for the OpenAPI
document). Every model forbids undeclared fields, so the document cannot silently drift from the
answers: tests/integration/test_admin_openapi.py validates real answers against it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ccmsec.domain import DeviceSecurityMode

SecurityMode = Literal[DeviceSecurityMode.choices()]  # type: ignore[valid-type]
Cursor = str | None
CURSOR_FIELD = Field(None, description="pass as `cursor` for the next page; null on the last page")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- accounts ------------------------------------------------------------------------------------
class LoginAnswer(Strict):
    token: str
    token_type: Literal["bearer"]
    expires_at: str
    username: str
    role: Literal["admin", "readonly"]


class LogoutAnswer(Strict):
    logged_out: str


class WhoAmI(Strict):
    username: str
    role: Literal["admin", "readonly"]


class Account(Strict):
    username: str
    role: Literal["admin", "readonly"]
    disabled: bool
    created_at: str


class AccountList(Strict):
    accounts: list[Account]
    next_cursor: Cursor = CURSOR_FIELD


# --- devices -------------------------------------------------------------------------------------
class Device(Strict):
    name: str
    model: str
    security_mode: SecurityMode
    description: str
    device_pool: str | None
    web_access: bool
    pc_port: bool
    settings_access: bool
    garp: bool
    voice_vlan_access: bool
    span_to_pc_port: bool
    config_version: int
    created_at: str
    updated_at: str


class DeviceChanged(Device):
    delivery: Literal["sent", "pending"] = Field(
        description="sent: the events the change requires (config.changed, RST-* resets) were "
                    "acknowledged by the event stream; pending: the change is saved and its events "
                    "are queued (outbox), delivered once the bus is back (issue 9 §4)")


class DeviceList(Strict):
    devices: list[Device]
    total: int = Field(description="devices in the cluster (all pages)")
    next_cursor: Cursor = CURSOR_FIELD


class Deleted(Strict):
    deleted: str


# --- audit ---------------------------------------------------------------------------------------
class AuditEntry(Strict):
    id: int
    at: str
    actor: str | None
    action: str
    target: str | None
    outcome: Literal["ok", "refused", "denied", "unauthenticated", "error"]
    status: int
    rule: str | None
    detail: str
    remote: str | None


class AuditList(Strict):
    entries: list[AuditEntry]
    next_cursor: Cursor = CURSOR_FIELD


# --- registrations, resets -----------------------------------------------------------------------
class Registration(Strict):
    device: str
    node: str
    model: str
    security_mode: str
    address: str
    reported_address: str
    nat_suspected: bool
    transport_port: int
    cipher: str
    certificate_fingerprint: str
    certificate_kind: Literal["", "LSC", "MIC"]
    since: str


class RegistrationList(Strict):
    registrations: list[Registration]
    total: int = Field(description="registrations matching the filters (all pages)")
    next_cursor: Cursor = CURSOR_FIELD


class ResetAccepted(Strict):
    request_id: str
    rule: str
    kind: Literal["reset", "restart"]
    targeted: int
    delivery: Literal["sent", "pending"] = Field(
        description="sent: the device.reset event was acknowledged by the event stream; pending: "
                    "the request is saved and its event queued (outbox), delivered once the bus is back")


class DeviceResetAccepted(ResetAccepted):
    device: str
    registered: bool


class ResetProgress(Strict):
    request_id: str
    targeted: int
    reset_sent: int
    back: int
    not_back: list[str]
    not_back_total: int
    complete: bool
    age_seconds: float


# --- lines, pools --------------------------------------------------------------------------------
class Line(Strict):
    dn: str
    device: str
    line_index: int
    label: str
    created_at: str


class LineCreated(Line):
    delivery: Literal["sent", "pending"] = Field(description="as for a device change")


class LineList(Strict):
    lines: list[Line]
    next_cursor: Cursor = CURSOR_FIELD


class Pool(Strict):
    name: str
    cm_group: list[str]
    srst: str


class PoolUpdated(Pool):
    devices: int | None = Field(None, description="devices in the pool (when something changed)")
    delivery: Literal["sent", "pending"] | None = Field(None, description="as for a device change")


class PoolList(Strict):
    pools: list[Pool]
    next_cursor: Cursor = CURSOR_FIELD


# --- SRST references -----------------------------------------------------------------------------
class SrstReference(Strict):
    name: str
    host: str
    sccp_port: int
    sccp_tls_port: int
    credentials_port: int
    secure: bool
    certificate_sha256: str
    certificate_subject: str
    secured_at: str | None


class SrstReferenceDetail(SrstReference):
    pools: list[str]
    devices: list[str]


class SrstSecurityResult(SrstReference):
    devices: list[str]
    reset: list[str]
    delivery: Literal["sent", "pending"] = Field(description="as for a device change")


class SrstList(Strict):
    references: list[SrstReference]
    next_cursor: Cursor = CURSOR_FIELD


# --- cluster -------------------------------------------------------------------------------------
class CtlState(Strict):
    version: int | str
    sha256: str | None
    records: int | None
    created_at: str | None


class DeviceCounts(Strict):
    total: int
    by_security_mode: dict[str, int]


class ClusterState(Strict):
    security_mode: str
    ctl: CtlState | None
    devices: DeviceCounts
    registered: int


# --- CAPF ----------------------------------------------------------------------------------------
class CapfOperationState(Strict):
    id: int
    device: str
    operation: str
    auth_mode: str
    key_type: str
    deadline: str | None
    state: str
    reason: str
    failed_attempts: int
    created_at: str | None
    updated_at: str | None
    issued_fingerprint: str | None


class CapfOperationList(Strict):
    operations: list[CapfOperationState]
    next_cursor: Cursor = CURSOR_FIELD


class CapfCertificate(Strict):
    serial: str
    fingerprint_sha256: str
    subject: str
    issuer: str
    not_before: str | None
    not_after: str | None


class CapfIssued(Strict):
    device: str
    operation: str
    outcome: str
    operation_id: int | None
    at: str | None
    certificate: CapfCertificate


class CapfLog(Strict):
    entries: list[CapfIssued]
    next_cursor: Cursor = CURSOR_FIELD


class CapfActivation(Strict):
    role: str
    node: str
    activated: bool
    state: str
    details: dict[str, str]


# --- calls ---------------------------------------------------------------------------------------
class CallLeg(Strict):
    device: str
    model: str
    kind: str
    device_mode: str
    line: int
    dn: str
    call_reference: int
    state: str
    role: str
    shown: Literal["lock", "shield", "none"] | str = Field(description="what the phone displays (CALL-2)")
    rx: str
    tx: str
    user: str
    codec: str = Field(description="CALL-9: this leg's codec (g711u, g711a, …) — on a conference "
                       "bridge or cBarge each leg's own G.711 law, towards music on hold the law it "
                       "hears, otherwise the call's codec")


class Call(Strict):
    id: int
    phase: str
    calling: str
    called: str
    original_called: str
    legs: list[CallLeg]
    codec: str = Field(description="CALL-9: the call's codec between phones; on a conference bridge "
                       "or cBarge the bridge's, each leg's own law in legs[].codec")
    codec_rule: str
    status: str = Field(description="CALL-1: encrypted, authenticated, non-secure, or unknown")
    rule: str
    reasons: list[str]
    resources: list[str]
    barge: str
    barge_rule: str
    created_unix_ms: int
    connected_unix_ms: int
    node: str


class CallList(Strict):
    calls: list[Call]
    total: int = Field(description="calls matching the filter (all pages)")
    next_cursor: Cursor = CURSOR_FIELD

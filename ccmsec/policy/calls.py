"""Call security rules CALL-1..9 — pure functions with the rule and reason in every answer.

* `call_security(endpoints)` — CALL-1 (weakest device wins; encrypted needs SRTP everywhere) and
  CALL-3 (endpoint kinds and situations that never carry security). Re-run it whenever the media
  legs change (hold, transfer, conference — CALL-2); `shows_lock_icon` tells the phones.
* `barge(initiator, call_level, cbarge=...)` — CALL-4..8.
* `choose_codec(...)` — CALL-9 (no wideband codec in an encrypted call with a 7960/7940).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Sequence

from ccmsec.policy.devices import PolicyViolation, SecurityMode, model_supports, normalise_model


class CallSecurityLevel(enum.IntEnum):
    """Ordered: a call is as secure as its weakest participant. Values are the SCCP CallInfo
    `callSecurityStatus` codes (1 not authenticated, 2 authenticated, 3 encrypted)."""

    NON_SECURE = 1
    AUTHENTICATED = 2
    ENCRYPTED = 3


def _level(mode: SecurityMode | str) -> CallSecurityLevel:
    """The best level a device in `mode` can give a call (its call security status, CALL-1)."""
    return CallSecurityLevel(SecurityMode.parse(mode).call_status.to_wire())


class EndpointKind(str, enum.Enum):
    PHONE = "phone"
    GATEWAY = "gateway"  # MGCP gateway; secure only with SRTP support
    CTI = "cti"
    INTER_CLUSTER_TRUNK = "inter-cluster trunk"
    TRANSCODER = "transcoder"
    MTP = "media termination point"
    CONFERENCE = "conference bridge"  # ad hoc and meet-me
    MUSIC_ON_HOLD = "music on hold"
    # SRST's tone on hold: a stream from the router to the held phone, keyed like the call's own
    # media (no party of the call: what it is worth is the held leg's keyed media, CALL-1)
    TONE_ON_HOLD = "tone on hold"
    SIP = "sip"
    H323 = "h323"


# CALL-3: kinds that never carry security.
UNSECURABLE_KINDS = frozenset(EndpointKind) - {EndpointKind.PHONE, EndpointKind.GATEWAY,
                                                EndpointKind.TONE_ON_HOLD}


@dataclass(frozen=True)
class Endpoint:
    name: str
    kind: EndpointKind = EndpointKind.PHONE
    model: str | None = None  # phones: checked against DEV-3
    configured_mode: SecurityMode = SecurityMode.NON_SECURE
    registered_mode: SecurityMode = SecurityMode.NON_SECURE  # what its connection provides
    media_srtp: bool = False
    srtp_capable: bool = True  # gateways: SRTP support
    cluster: str = "local"


@dataclass(frozen=True)
class CallSecurity:
    level: CallSecurityLevel
    rule_id: str
    reasons: tuple[str, ...] = field(default=())

    @property
    def sccp_status(self) -> int:
        return int(self.level)


def _endpoint_level(ep: Endpoint) -> tuple[CallSecurityLevel, str | None]:
    """The level one endpoint can contribute, with a CALL-3 reason when it is forced down."""
    if ep.kind in UNSECURABLE_KINDS:
        return CallSecurityLevel.NON_SECURE, f"{ep.name}: {ep.kind.value} provides no security"
    if ep.kind is EndpointKind.GATEWAY and not ep.srtp_capable:
        return CallSecurityLevel.NON_SECURE, f"{ep.name}: gateway without SRTP support"
    if ep.kind is EndpointKind.PHONE and ep.model is not None:
        try:
            secure_model = model_supports(ep.model, SecurityMode.AUTHENTICATED)
        except PolicyViolation:
            secure_model = False
        if not secure_model:
            return CallSecurityLevel.NON_SECURE, f"{ep.name}: model {ep.model} has no security"
    configured = _level(ep.configured_mode)
    registered = _level(ep.registered_mode)
    return min(configured, registered), None


def call_security(endpoints: Sequence[Endpoint]) -> CallSecurity:
    """CALL-1 and CALL-3: the security level of a call among `endpoints`."""
    if len(endpoints) < 2:
        raise ValueError("a call needs at least two endpoints")
    reasons: list[str] = []
    clusters = {ep.cluster for ep in endpoints}
    if len(clusters) > 1:
        reasons.append(f"call crosses clusters {sorted(clusters)}")
    levels = []
    for ep in endpoints:
        level, why = _endpoint_level(ep)
        levels.append(level)
        if why:
            reasons.append(why)
    if reasons:
        return CallSecurity(CallSecurityLevel.NON_SECURE, "CALL-3", tuple(reasons))
    level = min(levels)
    if level is CallSecurityLevel.ENCRYPTED:
        plain = [ep.name for ep in endpoints if not ep.media_srtp]
        if plain:
            # Signalling is encrypted everywhere, but media is not: at best authenticated.
            return CallSecurity(CallSecurityLevel.AUTHENTICATED, "CALL-1",
                                (f"media not SRTP for {', '.join(plain)}",))
        return CallSecurity(level, "CALL-1", ("every device encrypted with SRTP media",))
    weakest = [ep.name for ep, lv in zip(endpoints, levels) if lv == level]
    return CallSecurity(level, "CALL-1", (f"weakest device(s): {', '.join(weakest)}",))


def shows_lock_icon(security: CallSecurity | CallSecurityLevel) -> bool:
    """CALL-2: the lock icon is shown only while the media is encrypted."""
    level = security.level if isinstance(security, CallSecurity) else security
    return level is CallSecurityLevel.ENCRYPTED


# -- barge (CALL-4..8) ----------------------------------------------------------------------------

@dataclass(frozen=True)
class BargeResult:
    allowed: bool
    level: CallSecurityLevel | None  # what the original parties show afterwards; None if refused
    rule_id: str
    reason: str
    busy_tone: bool = False


def barge(initiator: Endpoint, call_level: CallSecurityLevel, *, cbarge: bool = False) -> BargeResult:
    if cbarge:
        return BargeResult(True, CallSecurityLevel.NON_SECURE, "CALL-8",
                           "cBarge is allowed; the joined call is non-secure")
    initiator_encrypted = SecurityMode.parse(initiator.configured_mode) is SecurityMode.ENCRYPTED
    if call_level is CallSecurityLevel.ENCRYPTED:
        if not initiator_encrypted:
            return BargeResult(False, None, "CALL-4",
                               f"{initiator.name} is not configured for encryption; cannot barge "
                               "into an encrypted call", busy_tone=True)
        return BargeResult(True, CallSecurityLevel.ENCRYPTED, "CALL-6",
                           "encrypted initiator into an encrypted call; it stays encrypted")
    if initiator_encrypted:
        return BargeResult(True, CallSecurityLevel.NON_SECURE, "CALL-5",
                           f"encrypted initiator into a {call_level.name.lower()} call; "
                           "the call becomes non-secure")
    initiator_level = _level(initiator.configured_mode)
    if call_level is CallSecurityLevel.AUTHENTICATED and initiator_level is CallSecurityLevel.NON_SECURE:
        return BargeResult(True, CallSecurityLevel.AUTHENTICATED, "CALL-7",
                           "non-secure initiator into an authenticated call; the authenticated "
                           "devices keep the authenticated icon")
    return BargeResult(True, min(call_level, initiator_level), "CALL-1",
                       "barge allowed; the call is as secure as its weakest party")


# -- wideband codec (CALL-9) ----------------------------------------------------------------------

WIDEBAND_CODECS = frozenset({0x19})  # Media_Payload_Wide_Band_256k
NO_WIDEBAND_IN_ENCRYPTED_CALLS = frozenset({"7960", "7940"})


@dataclass(frozen=True)
class CodecChoice:
    codec: int | None
    rule_id: str
    reason: str


def choose_codec(offered: Sequence[int], *, call_level: CallSecurityLevel,
                 endpoints: Sequence[Endpoint], wideband_region: bool) -> CodecChoice:
    """Pick the first codec of the phone's `offered` list (its preference order) that is allowed.

    CALL-9: in an encrypted call involving a 7960/7940, wideband is skipped even in a wideband
    region; when the call is authenticated or non-secure the wideband codec may be used.
    """
    def is_7960_7940(ep: Endpoint) -> bool:
        try:
            return ep.model is not None and normalise_model(ep.model) in NO_WIDEBAND_IN_ENCRYPTED_CALLS
        except PolicyViolation:
            return False

    forbid_wideband = not wideband_region
    rule, reason = "CALL-9", "wideband codec allowed"
    if not wideband_region:
        reason = "region does not allow the wideband codec"
    elif call_level is CallSecurityLevel.ENCRYPTED and any(is_7960_7940(ep) for ep in endpoints):
        forbid_wideband = True
        reason = "encrypted call with a 7960/7940: wideband codec ignored"
    for codec in offered:
        if forbid_wideband and codec in WIDEBAND_CODECS:
            continue
        return CodecChoice(codec, rule, reason)
    return CodecChoice(None, rule, reason + "; no other codec offered")

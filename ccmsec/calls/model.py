"""The core's state: stations (registered devices), legs (a device's part in a call), calls,
media channels — and the immutable views the interfaces show.

A **leg** is one call instance on one device: its call reference, the line it is on and what it
is doing. A **call** joins legs; its media is planned from who is in it (two legs talk directly,
a conference or a cBarge goes through the bridge, a held party hears music on hold, a barge
through the target phone's built-in bridge). A **channel** is one receive/transmit pair on a
device (SCCP's pass-through party): OpenReceiveChannel → ack with the device's RTP address →
StartMediaTransmission to the peer's address.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ccmsec.calls.config import DeviceProfile
from ccmsec.policy.calls import BargeResult, CallSecurity, CallSecurityLevel, EndpointKind
from ccmsec.wire.sccp import EncryptionInfo


class LegState(str, enum.Enum):
    OFF_HOOK = "off-hook"      # dial tone, waiting for the first digit
    DIALING = "dialing"        # collecting digits
    RING_OUT = "ring-out"      # routed; the far end is alerting (ring-back)
    RINGING = "ringing"        # incoming, alerting this device
    CONNECTED = "connected"
    HOLD = "hold"              # this device put the call on hold
    FAILED = "failed"          # busy or reorder tone until hang-up


class CallPhase(str, enum.Enum):
    SETUP = "setup"            # the caller is alerting the far end
    CONNECTED = "connected"
    ENDED = "ended"


class Purpose(str, enum.Enum):
    CALL = "call"
    FORWARD_ALL = "forward-all"  # digits set call forward all on the line


class Consult(str, enum.Enum):
    TRANSFER = "transfer"
    CONFERENCE = "conference"


@dataclass(eq=False, slots=True)
class Station:
    """A registered device in the core."""

    profile: DeviceProfile
    registered_at: float
    legs: dict[int, "Leg"] = field(default_factory=dict)   # call reference -> leg
    hints: dict[int, int] = field(default_factory=dict)    # hint reference -> call id (shared line)
    codecs: tuple[int, ...] | None = None                  # CapabilitiesRes, in preference order
                                                           # (None: not sent; () offers nothing)
    srtp_capable: bool = False
    last_dialed: str = ""
    messages: int = 0

    @property
    def name(self) -> str:
        return self.profile.name

    def line(self, instance: int):
        lines = self.profile.lines
        return lines[instance - 1] if 1 <= instance <= len(lines) else None

    def active_leg(self) -> "Leg | None":
        """The leg holding the handset (not on hold, not just ringing)."""
        for leg in self.legs.values():
            if leg.state not in (LegState.HOLD, LegState.RINGING):
                return leg
        return None

    def ringing_leg(self, reference: int = 0) -> "Leg | None":
        if reference:
            leg = self.legs.get(reference)
            return leg if leg is not None and leg.state is LegState.RINGING else None
        return next((leg for leg in self.legs.values() if leg.state is LegState.RINGING), None)

    @property
    def busy(self) -> bool:
        """Busy for a new incoming call: something other than held calls is going on."""
        return any(leg.state is not LegState.HOLD for leg in self.legs.values())


@dataclass(eq=False, slots=True)
class Leg:
    reference: int                # SCCP call reference (unique in the agent)
    station: Station
    line: int                     # line instance on the device
    dn: str                       # the line's directory number
    state: LegState
    since: float
    role: str = "caller"          # caller, called, barge, cbarge
    call: "Call | None" = None
    digits: str = ""
    digit_deadline: float | None = None
    fail_deadline: float | None = None
    purpose: Purpose = Purpose.CALL
    consult_for: "Leg | None" = None   # the held leg a transfer/conference consultation serves
    consult: Consult | None = None
    shown_status: int = 0              # last CallInfo security status sent
    tone: int = 0
    hold_tone: bool = False            # playing tone on hold (held, no MoH codec it offered)
    # (number, name) this leg's phone shows as the other party since a consultative transfer put
    # it with someone the call's calling/called numbers do not name, a conference ("Conference"),
    # or a conference down to two (the other party again);
    # None: those numbers say it
    far: tuple[str, str] | None = None
    # the number its party is shown by when it is not its line's: a trunk's or gateway's leg, the
    # number dialled through it (its line is the device's own, 5550000); "": `dn`
    shown_dn: str = ""

    @property
    def device(self) -> str:
        return self.station.profile.name


@dataclass(eq=False, slots=True)
class Channel:
    """One receive/transmit pair of a leg's device towards one peer."""

    party_id: int
    leg: Leg
    peer: tuple                    # ("leg", leg ref, tag) | (EndpointKind, call id, leg ref)
    sends: bool                    # the device transmits on it (not when listening to MoH)
    codec: int = 4                 # this channel's codec: one the device offered (CALL-9)
    rx: tuple[str, int] | None = None        # what the device acked
    tx: tuple[str, int] | None = None        # where it was told to send
    rx_encryption: EncryptionInfo = EncryptionInfo()
    tx_encryption: EncryptionInfo = EncryptionInfo()
    resource_started: bool = False

    @property
    def keyed(self) -> bool:
        return self.rx_encryption.is_encrypted and (not self.sends or self.tx_encryption.is_encrypted)


@dataclass(eq=False, slots=True)
class BargeState:
    initiator: Leg
    target: Leg
    result: BargeResult
    cbarge: bool


@dataclass(eq=False, slots=True)
class Call:
    id: int
    created: float
    caller: Leg
    legs: list[Leg] = field(default_factory=list)
    phase: CallPhase = CallPhase.SETUP
    connected_at: float | None = None
    calling_dn: str = ""
    calling_name: str = ""
    called_dn: str = ""
    original_called: str = ""     # the number dialled (before forwarding)
    # forwarding (all, busy, no answer) sent the call on from `original_called` to another
    # number: every CallInfo of the call carries it as the original called party (`ui.original_called`)
    forwarded: bool = False
    ring_deadline: float | None = None
    no_answer_target: str = ""    # CFNA target while alerting
    forward_hops: int = 0
    codec: int = 4
    codec_rule: str = ""
    bridge: bool = False          # media through the conference bridge
    barge: BargeState | None = None
    channels: dict[tuple, Channel] = field(default_factory=dict)
    security: CallSecurity | None = None   # shown (CALL-1 with the media as it is)
    potential: CallSecurity | None = None  # every leg keyed, no music on hold (barge decisions)
    # shared line: device -> (hint reference, line instance) of each appearance showing this
    # call "in use remote" (kept in step with who is in the call: `CallAgent._sync_hints`)
    hint_refs: dict[str, tuple[int, int]] = field(default_factory=dict)
    # device -> what its hint's CallInfo last showed (`ui.hint_shows`): sent again when it changes
    hint_shown: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    # device -> the callSecurityStatus its hint's CallInfo last carried: the call's status
    # (CALL-2: the lock icon follows the call), sent again when it changes
    hint_status: dict[str, int] = field(default_factory=dict)

    def parties(self) -> list[Leg]:
        return [leg for leg in self.legs if leg.state in (LegState.CONNECTED, LegState.HOLD)]

    def resources(self) -> list[EndpointKind]:
        # tone on hold is no party (its channel's keys count in the held leg's keyed media)
        kinds = {ch.peer[0] for ch in self.channels.values() if isinstance(ch.peer[0], EndpointKind)
                 and ch.peer[0] is not EndpointKind.TONE_ON_HOLD}
        if self.bridge:
            kinds.add(EndpointKind.CONFERENCE)
        return sorted(kinds, key=lambda k: k.value)


# -- views for the interfaces (immutable) -------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LegView:
    device: str
    model: str
    kind: str
    device_mode: str           # the device's own registered security mode (DEV-1/DEV-2)
    line: int
    dn: str
    call_reference: int
    state: str
    role: str
    shown_status: int          # what this phone displays (CallInfo security status)
    rx: str = ""
    tx: str = ""
    user: str = ""
    # this leg's codec (SCCP compression type, CALL-9): its media channels' — on a conference
    # bridge or cBarge the G.711 law of its own stream, towards music on hold the law it hears —
    # or, with no channel open now (ringing, holding), the one it talks in the call: its law on
    # the bridge, else the call's codec.
    codec: int = 0


@dataclass(frozen=True, slots=True)
class CallView:
    id: int
    phase: str
    calling: str
    called: str
    original_called: str
    legs: tuple[LegView, ...]
    codec: int                 # the call's codec between phones; on a bridge, the bridge's (legs[].codec per leg)
    codec_rule: str
    status: int                # shown status (CallSecurityLevel value) of the call as a whole
    rule: str
    reasons: tuple[str, ...]
    resources: tuple[str, ...]
    barge: str                 # "", "barge" or "cbarge"
    barge_rule: str
    created: float
    connected_at: float | None

    @property
    def status_name(self) -> str:
        return call_status_name(self.status)


def call_status_name(level: int) -> str:
    """A call security level as the call views spell it (encrypted, non-secure …; unknown for 0)."""
    return CallSecurityLevel(level).name.lower().replace("_", "-") if level else "unknown"


@dataclass(frozen=True, slots=True)
class CallEvent:
    kind: str                  # created, updated, ended, refused
    call: CallView
    at: float
    detail: str = ""

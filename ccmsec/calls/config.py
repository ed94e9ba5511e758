"""What the call-processing core knows about devices and lines: plain, immutable values.

The adapter (callmanager, later SRST) builds a `DeviceProfile` for each device that registers from
its own store — the device row, its lines, speed dials, region, an extension-mobility login — and
hands it to the core. Nothing here carries state; the core never reads a database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ccmsec.policy.calls import EndpointKind
from ccmsec.policy.devices import SecurityMode

DN_RE = re.compile(r"[0-9*#+]{1,24}")
PATTERN_RE = re.compile(r"[0-9X]{1,24}")
MAX_LINES = 34
MAX_SPEED_DIALS = 42


class ProfileError(ValueError):
    """A profile or setting the core cannot run with (bad number, too many lines…)."""


@dataclass(frozen=True, slots=True)
class LineConfig:
    """One line appearance: a directory number on a device (shared lines have several)."""

    dn: str
    label: str = ""
    display_name: str = ""
    forward_busy: str = ""       # call forward busy target ("" = none)
    forward_no_answer: str = ""  # call forward no answer target ("" = none)

    def __post_init__(self) -> None:
        if not DN_RE.fullmatch(self.dn):
            raise ProfileError(f"directory number {self.dn!r}: 1-24 characters of 0-9 * # +")
        for target in (self.forward_busy, self.forward_no_answer):
            if target and not DN_RE.fullmatch(target):
                raise ProfileError(f"forward target {target!r} is not a number")


@dataclass(frozen=True, slots=True)
class SpeedDial:
    index: int
    number: str
    label: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.index <= MAX_SPEED_DIALS:
            raise ProfileError(f"speed dial index {self.index} not in 1..{MAX_SPEED_DIALS}")
        if not DN_RE.fullmatch(self.number):
            raise ProfileError(f"speed dial number {self.number!r} is not a number")


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """A registered device as the core sees it.

    `security_mode` is the mode the device registered with (DEV-1: per device; the registration
    decision already enforced the transport). Lines do not carry a mode: a shared line or an
    extension-mobility login keeps each device's own status (DEV-2).
    """

    name: str
    model: str = "7960"
    kind: EndpointKind = EndpointKind.PHONE
    security_mode: SecurityMode = SecurityMode.NON_SECURE
    lines: tuple[LineConfig, ...] = ()
    speed_dials: tuple[SpeedDial, ...] = ()
    wideband_region: bool = False  # CALL-9: the device's region allows the wideband codec
    user: str = ""                 # extension mobility: the user logged in ("" = none)
    route_pattern: str = ""        # trunks: the digits routed to this device, e.g. "8XXX"
    auto_answer: bool = False      # trunks: the far side answers by itself
    softkey_set: str = "standard"  # the named softkey set its display offers (calls.setup)
    srtp_capable: bool = True      # gateways: it does SRTP (CALL-3: without, its calls are non-secure)

    def __post_init__(self) -> None:
        from ccmsec.calls.setup import SOFTKEY_SETS   # (setup imports this module)
        if self.softkey_set not in SOFTKEY_SETS:
            raise ProfileError(f"{self.name}: unknown softkey set {self.softkey_set!r} "
                               f"(known: {', '.join(sorted(SOFTKEY_SETS))})")
        if len(self.lines) > MAX_LINES:
            raise ProfileError(f"{self.name}: {len(self.lines)} lines exceed {MAX_LINES}")
        if len(self.speed_dials) > MAX_SPEED_DIALS:
            raise ProfileError(f"{self.name}: too many speed dials")
        if self.route_pattern and not PATTERN_RE.fullmatch(self.route_pattern):
            raise ProfileError(f"route pattern {self.route_pattern!r}: digits and X only")


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """Timers and names; time is always passed in by the caller, never read."""

    inter_digit_timeout: float = 3.0   # seconds after the last digit before routing what we have
    no_answer_timeout: float = 12.0    # ringing this long forwards (CFNA) when a target is set
    max_ring_time: float = 180.0       # nobody answers: the caller is cleared
    failed_call_timeout: float = 30.0  # busy/reorder tone this long, then the leg is cleared
    max_forward_hops: int = 4
    server_name: str = "callmanager"
    servers: tuple[tuple[str, str, int], ...] = field(default=())  # (name, ip, port)
    music_on_hold: bool = True         # held parties hear music from the MoH source
    # Without music on hold: the media resources stream tone on hold (TONE_ON_HOLD) to a held
    # party in a G.711 law it offered (SRST's limited service); one offering neither law plays
    # tone on hold itself (StartTone hold), as without a music-on-hold law (CALL-9).
    tone_on_hold: bool = False
    default_codec: int = 4             # G.711 u-law 64k
    bridge_codec: int = 4              # the bridge's codec shown for a conference (its first law)

"""Which call-control node a phone registers with — failover, SRST fallback and fail-back
(LATER-7, SRST-1) — sans-IO: time and outcomes in, decisions out.

The phone's configuration lists up to three call-control nodes in priority order (its pool's
CallManager group) and, last, its SRST reference. The selector keeps:

* the **active** target (the one the phone is registered with) and the **standby**: the next
  target below it, to which the phone keeps a connection open so that a failover needs no new
  TCP/TLS handshake and so that a dead standby is known before it is needed;
* where to go when the active one is lost (connection reset, or missed keepalives — the caller
  detects both): the targets below it in order, the standby first, SRST last, then again from
  the top; after a whole pass without success the next pass waits a back-off that doubles up to
  `retry_max`, with jitter (`random()` in [0, 1) is passed in), so a fleet that lost its node does
  not come back in lock-step;
* **fail-back**: while registered below the top, the caller probes the higher targets; one that
  has answered every probe for `stable_period` seconds is where the phone returns — never while a
  call is up (`in_call`), and only to a higher target.

Outcomes are fed with `registered`, `attempt_failed`, `lost`, `probe`; `next_attempt(now)` says
which target to try and from when; `standby_target()` and `fail_back_target(now, in_call)` say
what the caller should hold and whether to move now.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable


class TargetKind(str, enum.Enum):
    CALL_CONTROL = "call-control"
    SRST = "srst"


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    kind: TargetKind = TargetKind.CALL_CONTROL
    secure: bool = False   # TLS (the caller knows which certificate to pin)

    @property
    def label(self) -> str:
        return f"{'SRST ' if self.kind is TargetKind.SRST else ''}{self.host}:{self.port}"


@dataclass(frozen=True)
class FailoverSettings:
    stable_period: float = 120.0   # seconds a higher target must stay reachable before fail-back
    probe_interval: float = 10.0   # how often the caller probes higher targets while below the top
    retry_base: float = 1.0        # the wait after the first pass in which nothing answered
    retry_max: float = 60.0
    jitter: float = 0.5            # the wait is scaled by a factor in [1 - jitter, 1]

    def __post_init__(self) -> None:
        if self.stable_period < 0 or self.probe_interval <= 0 or self.retry_base <= 0:
            raise ValueError("stable_period >= 0, probe_interval > 0 and retry_base > 0")
        if self.retry_max < self.retry_base or not 0 <= self.jitter < 1:
            raise ValueError("retry_max >= retry_base and 0 <= jitter < 1")


@dataclass(frozen=True)
class Attempt:
    index: int
    target: Target
    not_before: float   # the caller waits until then (back-off after a whole failed pass)


@dataclass
class _Health:
    reachable_since: float | None = None   # continuous successful probes since then
    failures: int = 0


class CallControlSelector:
    MAX_TARGETS = 4   # three call-control nodes and the SRST reference

    def __init__(self, targets: list[Target] | tuple[Target, ...], settings: FailoverSettings | None = None,
                 random: Callable[[], float] | None = None) -> None:
        if not targets:
            raise ValueError("no call-control node and no SRST reference in the configuration")
        if len(targets) > self.MAX_TARGETS:
            raise ValueError(f"at most {self.MAX_TARGETS} targets (three nodes and SRST)")
        self.targets = tuple(targets)
        self.settings = settings or FailoverSettings()
        self._random = random or (lambda: 0.0)
        self.active: int | None = None
        self._health = [_Health() for _ in self.targets]
        self._next = 0               # where the current pass continues
        self._pass_failures = 0      # targets tried in this pass without success
        self.passes_failed = 0       # whole passes without success since the last registration
        self._not_before = 0.0
        self.history: list[tuple[float, str]] = []   # (time, what), bounded

    # --- outcomes ----------------------------------------------------------------------------------
    def registered(self, index: int, now: float) -> None:
        self.active = index
        self.passes_failed = self._pass_failures = 0
        self._not_before = now
        health = self._health[index]
        health.failures = 0
        health.reachable_since = health.reachable_since if health.reachable_since is not None else now
        self._note(now, f"registered with {self.targets[index].label}")

    def attempt_failed(self, index: int, now: float, reason: str = "") -> None:
        self._health[index] = _Health(None, self._health[index].failures + 1)
        self._note(now, f"{self.targets[index].label} failed: {reason}")
        self._pass_failures += 1
        self._next = index + 1
        if self._next >= len(self.targets) or self._pass_failures >= len(self.targets):
            # A whole pass without success: wait, then start again from the top.
            self.passes_failed += 1
            self._pass_failures = 0
            self._next = 0
            self._not_before = now + self.backoff(self.passes_failed)

    def lost(self, now: float, reason: str = "") -> None:
        """The active target is gone: continue below it (standby first), SRST last."""
        if self.active is None:
            return
        index, self.active = self.active, None
        self._health[index] = _Health(None, self._health[index].failures + 1)
        self._note(now, f"lost {self.targets[index].label}: {reason}")
        self._pass_failures = 1
        self._next = index + 1 if index + 1 < len(self.targets) else 0
        self._not_before = now

    def probe(self, index: int, now: float, ok: bool) -> None:
        health = self._health[index]
        if ok:
            if health.reachable_since is None:
                health.reachable_since = now
            health.failures = 0
        else:
            health.reachable_since = None
            health.failures += 1

    def closed_early(self, index: int, silence_allowed: float, last_answer: float, now: float) -> None:
        """The kept probe connection to `index` was found closed. A node drops a quiet connection
        only after `silence_allowed` seconds without a keepalive; closed sooner, the node closed it
        on its own — it restarted (or shed us) — so its stable period starts again (LATER-7: a node
        that keeps restarting between probes is never returned to). Not a failed probe."""
        if now - last_answer < silence_allowed:
            self._health[index].reachable_since = None

    def left(self, now: float, towards: int = 0) -> None:
        """The phone left the active target on purpose (fail-back to `towards`); not a failure."""
        self.active = None
        self._next = towards
        self._pass_failures = 0
        self._not_before = now

    # --- decisions ---------------------------------------------------------------------------------
    def backoff(self, passes: int) -> float:
        s = self.settings
        # The exponent is capped: after ~1,000 failed passes (about 1.4 h at a 5 s cap) 2**n made
        # the float product overflow and the phone's failover task died for good.
        wait = min(s.retry_max, s.retry_base * (2 ** min(max(0, passes - 1), 62)))
        return wait * (1 - s.jitter * self._random())

    def next_attempt(self, now: float) -> Attempt:
        """The target to try next and the earliest time to try it."""
        index = self._next % len(self.targets)
        return Attempt(index, self.targets[index], max(now, self._not_before))

    def standby_target(self) -> int | None:
        """The target below the active one, to hold a standby connection to (None: nothing below)."""
        if self.active is None or self.active + 1 >= len(self.targets):
            return None
        return self.active + 1

    def higher_targets(self) -> list[int]:
        """Targets above the active one: the caller probes them every `probe_interval`."""
        return list(range(self.active)) if self.active else []

    def fail_back_target(self, now: float, in_call: bool) -> int | None:
        """The highest target above the active one that has been reachable for the stable period;
        None while a call is up or when none qualifies."""
        if in_call or not self.active:
            return None
        for index in range(self.active):
            since = self._health[index].reachable_since
            if since is not None and now - since >= self.settings.stable_period:
                return index
        return None

    def reachable_since(self, index: int) -> float | None:
        return self._health[index].reachable_since

    def _note(self, now: float, what: str) -> None:
        self.history.append((now, what))
        del self.history[:-50]


def targets_from_config(call_managers, srst, *, secure: bool,
                        srst_secure_allowed: bool) -> list[Target]:
    """The phone's list from its configuration: the CallManager group members in order (their TLS
    port when the phone is secure), then the first SRST address when SRST is enabled — over TLS
    when the reference is secure and the phone may use it (`srst_secure_allowed`: it holds the
    certificate to pin and its own), otherwise on the clear port."""
    out = [Target(m.host, m.secure_port if secure else m.ethernet_phone_port, TargetKind.CALL_CONTROL, secure)
           for m in list(call_managers)[:3]]
    if srst is not None and srst.option == "Enable" and srst.addresses:
        tls = secure and srst.is_secure and srst_secure_allowed
        port = srst.secure_port(0) if tls else (srst.ports[0] if srst.ports else 2000)
        out.append(Target(srst.addresses[0], port, TargetKind.SRST, tls))
    return out

"""The simulated telephone network behind the gateway: parties reachable by number.

A party produces the audio the gateway sends on the IP leg (`payload()`, one 20 ms G.711 frame)
and hears what the IP leg sends (`hear()`); the echo party hands each payload straight back.
Looping sources are encoded once (whole periods), so a frame costs nothing per call.
"""

from __future__ import annotations

from typing import Callable

from ccmsec.media import g711, tones


class Party:
    name = "party"
    talks = True       # sends a frame every 20 ms by itself (the gateway's ticker asks `payload()`)
    answers = False    # `hear()` may hand back a payload to send at once
    echoes = False     # answers every payload with itself: the relay sends it back in place

    def payload(self) -> bytes | None:
        return None

    def hear(self, payload: bytes) -> bytes | None:
        """A payload to send back at once (echo), or None."""
        return None


class LoopParty(Party):
    """Plays a looping tone source; `frames` covers whole periods, so the loop is seamless."""

    def __init__(self, name: str, source: tones.ToneSource, frames: int, payload_type: int):
        self.name = name
        encode = g711.CODECS[payload_type][0]
        self._frames = [encode(source.frame()) for _ in range(frames)]
        self._next = 0

    def payload(self) -> bytes:
        frame = self._frames[self._next]
        self._next = (self._next + 1) % len(self._frames)
        return frame


class EchoParty(Party):
    name = "echo"
    talks = False
    answers = echoes = True

    def hear(self, payload: bytes) -> bytes:
        return payload


class _Cached:
    """Encoded loops shared by every call to the same number (they are read-only)."""

    def __init__(self, make: Callable[[int], LoopParty]):
        self._make, self._by_pt = make, {}

    def __call__(self, payload_type: int) -> Party:
        if payload_type not in self._by_pt:
            self._by_pt[payload_type] = self._make(payload_type)
        template = self._by_pt[payload_type]
        party = LoopParty.__new__(LoopParty)
        party.name, party._frames, party._next = template.name, template._frames, 0
        return party


# number -> (what it is, factory(payload_type) -> Party)
NUMBERS: dict[str, tuple[str, Callable[[int], Party]]] = {
    "5550100": ("1004 Hz test tone", _Cached(lambda pt: LoopParty("tone", tones.tone(1004), 50, pt))),
    "5550101": ("recorded announcement", _Cached(lambda pt: LoopParty("announcement", tones.announcement(), 65, pt))),
    "5550102": ("echo", lambda pt: EchoParty()),
}


def party_for(number: str, payload_type: int) -> Party | None:
    entry = NUMBERS.get(number)
    return entry[1](payload_type) if entry else None

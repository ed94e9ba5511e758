"""Audio sources for the simulated telephone network and for phones: tones, an announcement,
music on hold. Each yields phase-continuous 20 ms frames of 16-bit PCM at 8 kHz."""

from __future__ import annotations

import math
import struct

from ccmsec.media.g711 import SAMPLE_RATE
from ccmsec.media.packetiser import SAMPLES_PER_FRAME

Segment = tuple[tuple[float, ...], int]   # (frequencies in Hz, duration in ms); () = silence


class ToneSource:
    """Plays `segments` in order (looping by default), one 20 ms frame per `frame()` call."""

    def __init__(self, segments: list[Segment], *, amplitude: int = 8000, loop: bool = True):
        if not segments:
            raise ValueError("a tone source needs at least one segment")
        self.segments = segments
        self.amplitude = amplitude
        self.loop = loop
        self._index = 0
        self._left = segments[0][1] * SAMPLE_RATE // 1000
        self._n = 0  # running sample counter keeps phase continuous across frames
        self.finished = False

    def _advance(self) -> None:
        """Move to the next segment with samples left; past the end, loop or fall silent."""
        while self._left <= 0 and not self.finished:
            self._index += 1
            if self._index >= len(self.segments):
                if not self.loop:
                    self.finished = True
                    return
                self._index = 0
            self._left = self.segments[self._index][1] * SAMPLE_RATE // 1000

    def frame(self) -> bytes:
        out = []
        for _ in range(SAMPLES_PER_FRAME):
            self._advance()
            freqs = () if self.finished else self.segments[self._index][0]
            t = self._n / SAMPLE_RATE
            value = sum(math.sin(2 * math.pi * f * t) for f in freqs) / max(len(freqs), 1)
            out.append(int(self.amplitude * value))
            self._n += 1
            self._left -= 1
        return struct.pack(f"<{SAMPLES_PER_FRAME}h", *out)


def tone(*freqs: float) -> ToneSource:
    """A steady tone (one or two frequencies), e.g. tone(1004) — the milliwatt test tone."""
    return ToneSource([(tuple(freqs), 1000)])


def announcement() -> ToneSource:
    """A recognisable spoken-announcement stand-in: three rising notes, a pause, repeated."""
    return ToneSource([((523.25,), 300), ((659.25,), 300), ((783.99,), 300), ((), 400)])


def music_on_hold() -> ToneSource:
    """A short looping melody (CALL-3: music on hold is never secure media)."""
    notes = [392.0, 440.0, 493.88, 523.25, 493.88, 440.0]
    return ToneSource([((n, n / 2), 250) for n in notes])


def tone_on_hold() -> ToneSource:
    """SRST's tone on hold: two short 1400 Hz beeps, then a pause (no music: limited service)."""
    return ToneSource([((1400.0,), 100), ((), 100), ((1400.0,), 100), ((), 1700)])


def silence() -> ToneSource:
    return ToneSource([((), 1000)])

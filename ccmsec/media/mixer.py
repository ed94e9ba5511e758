"""The conference bridge's mixer — sans-IO: 20 ms frames of 16-bit PCM in per party, and on every
tick, for each party, the sum of everybody else (never its own voice back), clipped to 16 bits.

Each party has a short queue (`max_queue` frames, 100 ms by default): a party whose packets come in
bursts is smoothed, one that sends faster than the tick loses its oldest frames (bounded memory),
and a party with nothing queued adds silence. Mixing totals every party once and subtracts each
party's own frame, so a tick costs O(parties × samples).
"""

from __future__ import annotations

import array
import sys
from collections import deque
from typing import Hashable

FRAME_SAMPLES = 160            # 20 ms at 8 kHz
FRAME_BYTES = FRAME_SAMPLES * 2
MAX_PARTIES = 64


class MixerError(ValueError):
    pass


class Mixer:
    def __init__(self, *, max_queue: int = 5) -> None:
        if not 1 <= max_queue <= 50:
            raise MixerError("max_queue must be 1..50 frames")
        self.max_queue = max_queue
        self._queues: dict[Hashable, deque[array.array]] = {}
        self.dropped = 0          # frames dropped because a party's queue was full
        self.malformed = 0        # frames that were not 20 ms of 16-bit PCM

    @property
    def parties(self) -> list[Hashable]:
        return list(self._queues)

    def add(self, party: Hashable) -> None:
        if party not in self._queues:
            if len(self._queues) >= MAX_PARTIES:
                raise MixerError(f"a bridge mixes at most {MAX_PARTIES} parties")
            self._queues[party] = deque()

    def remove(self, party: Hashable) -> None:
        self._queues.pop(party, None)

    def push(self, party: Hashable, pcm: bytes) -> None:
        """One received frame of `party` (ignored for a party not in the mix)."""
        queue = self._queues.get(party)
        if queue is None:
            return
        if len(pcm) != FRAME_BYTES:
            self.malformed += 1
            return
        if len(queue) >= self.max_queue:
            queue.popleft()
            self.dropped += 1
        samples = array.array("h")
        samples.frombytes(pcm)
        if sys.byteorder == "big":     # PCM is little-endian throughout ccmsec.media
            samples.byteswap()
        queue.append(samples)

    def tick(self) -> dict[Hashable, bytes]:
        """The 20 ms frame each party hears now: everybody else's next frame, summed and clipped."""
        current = {party: (queue.popleft() if queue else None) for party, queue in self._queues.items()}
        speaking = [f for f in current.values() if f is not None]
        if not speaking:
            silence = bytes(FRAME_BYTES)
            return {party: silence for party in current}
        total = [sum(column) for column in zip(*speaking)]
        out: dict[Hashable, bytes] = {}
        for party, own in current.items():
            mixed = array.array("h", (
                32767 if v > 32767 else -32768 if v < -32768 else v
                for v in (total if own is None else map(int.__sub__, total, own))))
            if sys.byteorder == "big":
                mixed.byteswap()
            out[party] = mixed.tobytes()
        return out

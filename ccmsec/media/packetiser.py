"""20 ms G.711 framing on the send side and loss accounting on the receive side (RFC 3550).

`Packetiser` gives each frame the next sequence number (mod 2^16) and a timestamp advanced by
the samples it carries (8 kHz clock: 160 per 20 ms); initial sequence, timestamp and SSRC are
random as RFC 3550 §5.1 asks. `SequenceTracker` follows one SSRC's extended sequence number
(RFC 3550 appendix A.1, simplified) to count packets expected, received, lost and out of order.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from ccmsec.media.rtp import HEADER, RtpPacket

FRAME_MS = 20
SAMPLES_PER_FRAME = 160          # 20 ms at 8 kHz
FRAME_BYTES_PCM = SAMPLES_PER_FRAME * 2
MAX_DROPOUT = 3000               # a forward jump larger than this is a new sequence (A.1)
MAX_MISORDER = 100


class Packetiser:
    def __init__(self, payload_type: int, *, ssrc: int | None = None, sequence: int | None = None,
                 timestamp: int | None = None):
        self.payload_type = payload_type
        self.ssrc = secrets.randbits(32) if ssrc is None else ssrc
        self.sequence = secrets.randbits(16) if sequence is None else sequence
        self.timestamp = secrets.randbits(32) if timestamp is None else timestamp
        self._first = True

    def packet(self, payload: bytes, *, samples: int | None = None) -> RtpPacket:
        """The next packet; the first one of the stream carries the marker bit (talkspurt start)."""
        pkt = RtpPacket(self.payload_type, self.sequence, self.timestamp, self.ssrc, payload,
                        marker=self._first)
        self._first = False
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + (len(payload) if samples is None else samples)) & 0xFFFFFFFF
        return pkt

    def datagram(self, payload: bytes) -> bytes:
        """`packet(payload).to_bytes()` without the intermediate object: the per-packet path of a
        relay (a G.711 payload carries one sample per byte)."""
        header = HEADER.pack(0x80, self.payload_type | (0x80 if self._first else 0),
                             self.sequence, self.timestamp, self.ssrc)
        self._first = False
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + len(payload)) & 0xFFFFFFFF
        return header + payload

    def header_into(self, buffer, payload_length: int) -> None:
        """`datagram()` for a payload already in place after byte 12 of `buffer`: writes the
        header in front of it (a relay re-originating a packet inside one buffer)."""
        HEADER.pack_into(buffer, 0, 0x80, self.payload_type | (0x80 if self._first else 0),
                         self.sequence, self.timestamp, self.ssrc)
        self._first = False
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + payload_length) & 0xFFFFFFFF


@dataclass
class SequenceTracker:
    """Receive statistics for one SSRC."""

    base: int = -1          # extended sequence number of the first packet
    highest: int = -1       # highest extended sequence number seen
    received: int = 0
    out_of_order: int = 0
    restarts: int = 0

    def update(self, sequence: int) -> None:
        if self.highest < 0:
            self.base = self.highest = sequence
            self.received = 1
            return
        cycles, last = self.highest & ~0xFFFF, self.highest & 0xFFFF
        delta = (sequence - last) & 0xFFFF
        if 0 < delta < MAX_DROPOUT:
            if sequence < last:
                cycles += 0x10000  # wrapped
            self.highest = cycles | sequence
        elif delta == 0 or delta > 0x10000 - MAX_MISORDER:
            self.out_of_order += 1  # late or duplicate: counts as received, not as a gap
        else:  # a jump: the sender restarted its sequence; start counting again from here
            self.restarts += 1
            self.base = self.highest = sequence
            self.received = 1
            return
        self.received += 1

    @property
    def expected(self) -> int:
        return 0 if self.highest < 0 else self.highest - self.base + 1

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.received)

"""One direction pair of a media stream, sans-IO: frames in → datagrams out, datagrams in →
audio out, with the counters a phone or gateway reports.

`MediaStream(codec, send_key=…, receive_key=…)`: with keys both directions are SRTP (ENC-4: the
sender's set protects, the peer's set authenticates and decrypts); without, plain RTP. Keys are
set per direction, so `is_srtp` is true only when both are (the CALL-2 lock condition).
"""

from __future__ import annotations

from dataclasses import dataclass

from ccmsec.media import g711
from ccmsec.media.packetiser import Packetiser, SequenceTracker
from ccmsec.media.rtp import HEADER, HEADER_SIZE, MAX_PACKET, RtpError, parse_rtp
from ccmsec.media.srtp import (MAX_SRTP_PACKET, MasterKey, PacketBuffer, Refusal, SrtpReceiver, SrtpRefused,
                               SrtpSender, libsrtp_protect, libsrtp_unprotect, refusal)


@dataclass
class MediaCounters:
    sent: int = 0
    received: int = 0
    lost: int = 0
    refused_authentication: int = 0
    refused_replay: int = 0
    malformed: int = 0
    foreign: int = 0           # a second SSRC, or a payload type we did not agree

    @property
    def refused(self) -> int:
        return self.refused_authentication + self.refused_replay

    def as_dict(self) -> dict[str, int]:
        return {"sent": self.sent, "received": self.received, "lost": self.lost,
                "refused": self.refused, "refused_authentication": self.refused_authentication,
                "refused_replay": self.refused_replay, "malformed": self.malformed,
                "foreign": self.foreign}


class AudioReceived:
    """One accepted packet: its header fields and payload; `pcm` decodes the G.711 payload on
    demand (a relay never needs it). A plain slotted class: one is made per packet."""

    __slots__ = ("payload_type", "sequence", "timestamp", "ssrc", "marker", "payload", "_decode")

    def __init__(self, payload_type, sequence, timestamp, ssrc, marker, payload, decode):
        self.payload_type, self.sequence, self.timestamp = payload_type, sequence, timestamp
        self.ssrc, self.marker, self.payload, self._decode = ssrc, marker, payload, decode

    @property
    def pcm(self) -> bytes:
        return self._decode(self.payload)

    def __repr__(self) -> str:
        return f"AudioReceived(seq={self.sequence}, ssrc={self.ssrc:#010x}, {len(self.payload)} bytes)"


@dataclass(frozen=True)
class PacketRefused:
    reason: Refusal
    detail: str


class MediaStream:
    def __init__(self, payload_type: int = 0, *, send_key: MasterKey | None = None,
                 receive_key: MasterKey | None = None, ssrc: int | None = None):
        if payload_type not in g711.CODECS:
            raise ValueError(f"payload type {payload_type} is not G.711 (0 PCMU or 8 PCMA)")
        self.payload_type = payload_type
        self._encode, self._decode = g711.CODECS[payload_type]
        self.packetiser = Packetiser(payload_type, ssrc=ssrc)
        self._counters = MediaCounters()
        self.tracker = SequenceTracker()
        self._lost_before = 0
        self.remote_ssrc: int | None = None
        self.set_keys(send_key, receive_key)

    def set_keys(self, send_key: MasterKey | None, receive_key: MasterKey | None) -> None:
        """New master values (or none: plain RTP) — e.g. after a transfer or resume (CALL-2)."""
        self.set_send_key(send_key)
        self.set_receive_key(receive_key)

    def set_send_key(self, key: MasterKey | None) -> None:
        self._sender = SrtpSender(key) if key else None

    def set_receive_key(self, key: MasterKey | None) -> None:
        """A new receive side: a new far end, so its SSRC and sequence are followed afresh."""
        self._receiver = SrtpReceiver(key) if key else None
        self.reset_remote()

    @property
    def counters(self) -> MediaCounters:
        """The counters, with `lost` brought up to date (computed on read, not per packet)."""
        self._counters.lost = self._lost_before + self.tracker.lost
        return self._counters

    @counters.setter
    def counters(self, value: MediaCounters) -> None:
        self._counters = value

    def reset_remote(self) -> None:
        """A new far end (transfer, resume): follow its SSRC and sequence from scratch, keeping
        the losses counted so far."""
        self._lost_before = self.counters.lost
        self.remote_ssrc = None
        self.tracker = SequenceTracker()

    @property
    def send_srtp(self) -> bool:
        return self._sender is not None

    @property
    def receive_srtp(self) -> bool:
        return self._receiver is not None

    @property
    def is_srtp(self) -> bool:
        return self.send_srtp and self.receive_srtp

    # -- send -------------------------------------------------------------------------------
    def packet_for(self, pcm: bytes) -> bytes:
        """One 20 ms frame of 16-bit PCM → the datagram to send (SRTP when a send key is set)."""
        return self.packet_for_payload(self._encode(pcm))

    def packet_for_payload(self, payload: bytes) -> bytes:
        rtp = self.packetiser.datagram(payload)
        self._counters.sent += 1
        return self._sender.protect(rtp) if self._sender else rtp

    def send_in_place(self, packet: PacketBuffer, payload_end: int) -> int:
        """`packet_for_payload` for a payload already at HEADER_SIZE..payload_end of `packet`
        (what `receive_in_place` left there): the header goes in front of it and, with a send key,
        libsrtp encrypts it where it lies. Returns the datagram's length."""
        self.packetiser.header_into(packet.view, payload_end - HEADER_SIZE)
        self._counters.sent += 1
        sender = self._sender
        if sender is None:
            return payload_end
        # SrtpSender.protect_in_place, inlined: this runs once per relayed packet
        length_p = packet.length_p
        length_p[0] = payload_end
        status = libsrtp_protect(sender._ctx, packet.cdata, length_p)
        if status:
            raise refusal(status)
        return length_p[0]

    # -- receive ----------------------------------------------------------------------------
    def _count_refusal(self, exc: SrtpRefused) -> PacketRefused:
        c = self._counters
        if exc.reason is Refusal.AUTHENTICATION:
            c.refused_authentication += 1
        elif exc.reason is Refusal.REPLAY:
            c.refused_replay += 1
        else:
            c.malformed += 1
        return PacketRefused(exc.reason, str(exc))

    def receive_in_place(self, packet: PacketBuffer, length: int) -> int:
        """`receive` for the datagram in `packet[:length]` without a Python object per packet (the
        relay's path): decrypted in place, checked and counted exactly as `receive` does. Returns
        the end of the payload, which starts at HEADER_SIZE (a header with CSRCs, an extension or
        padding is normalised to the fixed 12 bytes), or 0 when the packet was refused."""
        receiver = self._receiver
        if receiver is not None:
            # SrtpReceiver.unprotect_in_place, inlined (once per relayed packet): same bounds, same
            # reasons for what libsrtp refuses
            if length < receiver._shortest or length > MAX_SRTP_PACKET:
                self._counters.malformed += 1
                return 0
            length_p = packet.length_p
            length_p[0] = length
            status = libsrtp_unprotect(receiver._ctx, packet.cdata, length_p)
            if status:
                self._count_refusal(refusal(status))
                return 0
            length = length_p[0]
        elif length > MAX_PACKET:
            self._counters.malformed += 1
            return 0
        view = packet.view
        if length >= HEADER_SIZE and view[0] == 0x80:
            _, second, seq, _, ssrc = HEADER.unpack_from(view)
            pt = second & 0x7F
        else:
            event = self._accept(bytes(view[:length]))
            if not isinstance(event, AudioReceived):
                return 0
            end = HEADER_SIZE + len(event.payload)
            view[HEADER_SIZE:end] = event.payload
            return end
        if pt != self.payload_type or (self.remote_ssrc is not None and ssrc != self.remote_ssrc):
            self._counters.foreign += 1
            return 0
        self.remote_ssrc = ssrc
        self.tracker.update(seq)
        self._counters.received += 1
        return length

    def receive(self, datagram: bytes) -> AudioReceived | PacketRefused:
        if self._receiver is not None:
            try:
                datagram = self._receiver.unprotect(datagram)
            except SrtpRefused as exc:
                return self._count_refusal(exc)
        return self._accept(datagram)

    def _accept(self, datagram: bytes) -> AudioReceived | PacketRefused:
        """The checks after decryption: RTP header, agreed payload type, one far-end SSRC."""
        c = self._counters
        if len(datagram) >= HEADER_SIZE and datagram[0] == 0x80:
            # the usual packet (V=2, no padding, extension or CSRCs): the fixed header only
            _, second, seq, ts, ssrc = HEADER.unpack_from(datagram)
            pt, marker, payload = second & 0x7F, bool(second & 0x80), datagram[HEADER_SIZE:]
        else:
            try:
                packet = parse_rtp(datagram)
            except RtpError as exc:
                c.malformed += 1
                return PacketRefused(Refusal.MALFORMED, str(exc))
            pt, marker, seq, ts, ssrc, payload = (packet.payload_type, packet.marker, packet.sequence,
                                                  packet.timestamp, packet.ssrc, packet.payload)
        if pt != self.payload_type or (self.remote_ssrc is not None and ssrc != self.remote_ssrc):
            c.foreign += 1
            return PacketRefused(Refusal.MALFORMED, f"unexpected payload type {pt} or SSRC {ssrc:#010x}")
        self.remote_ssrc = ssrc
        self.tracker.update(seq)
        c.received += 1
        return AudioReceived(pt, seq, ts, ssrc, marker, payload, self._decode)

"""Thin asyncio UDP adapter over `ccmsec.media.stream.MediaStream`: one socket per media
endpoint (it receives on the port it reports and sends from it), a sender that emits one packet
every 20 ms on the loop clock, and an optional bounded recording of the audio received."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from ccmsec.media.packetiser import FRAME_MS, FRAME_BYTES_PCM
from ccmsec.media.stream import AudioReceived, MediaStream

log = logging.getLogger("ccmsec.media")

FrameSource = Callable[[], "bytes | None"]   # next 20 ms of PCM, or None when done
MAX_RECORD_SECONDS = 120
# A sender that fell this far behind (a stalled loop) skips ahead instead of bursting.
MAX_LAG = 0.2


class MediaEndpoint(asyncio.DatagramProtocol):
    def __init__(self, stream: MediaStream, *, record: bool = False,
                 on_audio: Callable[[AudioReceived], None] | None = None):
        self.stream = stream
        self.record = record
        self.recording = bytearray()
        self.on_audio = on_audio
        self.remote: tuple[str, int] | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self._sender: asyncio.Task | None = None
        self.receiving = True         # False: datagrams are dropped unread (MGCP sendonly/inactive)
        self.datagrams_in = 0
        self.discarded = 0
        self.octets_in = 0
        self.octets_out = 0
        self.send_errors = 0

    @classmethod
    async def open(cls, host: str, port: int = 0, stream: MediaStream | None = None,
                   **kw) -> "MediaEndpoint":
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(
            lambda: cls(stream or MediaStream(), **kw), local_addr=(host, port))
        return proto

    # -- DatagramProtocol ------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.datagrams_in += 1
        if not self.receiving:
            self.discarded += 1
            return
        event = self.stream.receive(data)
        if isinstance(event, AudioReceived):
            self.octets_in += len(event.payload)
            if self.record and len(self.recording) < MAX_RECORD_SECONDS * 50 * FRAME_BYTES_PCM:
                self.recording += event.pcm
            if self.on_audio is not None:
                self.on_audio(event)

    def error_received(self, exc) -> None:  # e.g. ICMP port unreachable from a closed peer
        self.send_errors += 1

    # -- control ---------------------------------------------------------------------------
    @property
    def local_address(self) -> tuple[str, int]:
        return self.transport.get_extra_info("sockname")[:2]

    def send_pcm(self, pcm: bytes) -> None:
        if self.remote is not None and self.transport is not None:
            self.octets_out += len(pcm) // 2
            self.transport.sendto(self.stream.packet_for(pcm), self.remote)

    def send_payload(self, payload: bytes) -> None:
        """An already-encoded G.711 frame (a relay or a pre-encoded loop)."""
        if self.remote is not None and self.transport is not None:
            self.octets_out += len(payload)
            self.transport.sendto(self.stream.packet_for_payload(payload), self.remote)

    def start_sending(self, source: FrameSource, remote: tuple[str, int]) -> None:
        """Send one frame every 20 ms to `remote` until the source ends or `stop_sending()`."""
        self.remote = remote
        self._source = source
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._pace())

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            frame = self._source()
            if frame is None:
                return
            self.send_pcm(frame)
            due += FRAME_MS / 1000
            now = loop.time()
            if now - due > MAX_LAG:
                due = now
            await asyncio.sleep(max(0.0, due - now))

    async def stop_sending(self) -> None:
        task, self._sender = self._sender, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def close(self) -> None:
        await self.stop_sending()
        if self.transport is not None:
            self.transport.close()

    def counters(self) -> dict[str, int]:
        return self.stream.counters.as_dict()


# SCCP compression types (OpenReceiveChannel / StartMediaTransmission) -> RTP payload types
SCCP_G711 = {4: 0, 2: 8}   # 4 G.711 µ-law 64k -> PCMU, 2 G.711 A-law 64k -> PCMA
MAX_KEPT_PAYLOADS = 3000   # one minute of sent payloads kept for a proof


class PortAudio:
    """Real G.711 audio on a call's media port: the seam call signalling leaves (a port object with
    `send(bytes)`, `on_datagram`, `on_start`, `on_stop`, `codec` and the two encryption-info
    blocks `rx_encryption` / `tx_encryption`). Keys come from those blocks (ENC-4): the receive
    block's set authenticates and decrypts what arrives, the transmit block's set protects what is
    sent; an algorithm-0 block means RTP. One frame every 20 ms from `source` once the port starts.
    """

    def __init__(self, port, source: FrameSource | None = None, *, record: bool = False,
                 keep_sent: bool = False):
        from ccmsec.media.keys import from_encryption_info

        self._from_info = from_encryption_info
        self.port = port
        self.source = source
        self.record = record
        self.recording = bytearray()
        self.keep_sent = keep_sent
        self.sent_payloads: list[bytes] = []
        self.stream = MediaStream(SCCP_G711.get(getattr(port, "codec", 4), 0))
        self._rx_info = None
        self._tx_info = None
        self._sender: asyncio.Task | None = None
        self._check_receive_keys()
        port.on_datagram = self._datagram
        port.on_start = self._start
        port.on_stop = self._stop

    # keys follow the blocks call control sent (a new block = a new far end, CALL-2 / GW-3)
    def _check_receive_keys(self) -> None:
        info = self.port.rx_encryption
        if info is not self._rx_info:
            self._rx_info = info
            self.stream.set_receive_key(self._from_info(info))

    @property
    def is_srtp(self) -> bool:
        """Both directions SRTP: the condition for the lock (CALL-2)."""
        return self.stream.is_srtp

    def counters(self) -> dict[str, int]:
        return self.stream.counters.as_dict()

    def _datagram(self, data: bytes, addr) -> None:
        self._check_receive_keys()
        event = self.stream.receive(data)
        if isinstance(event, AudioReceived) and self.record and \
                len(self.recording) < MAX_RECORD_SECONDS * 50 * FRAME_BYTES_PCM:
            self.recording += event.pcm

    def _start(self, port) -> None:
        pt = SCCP_G711.get(port.codec, self.stream.payload_type)
        if pt != self.stream.payload_type:
            counters = self.stream.counters
            self.stream = MediaStream(pt)
            self.stream.counters = counters
            self._rx_info = None
            self._check_receive_keys()
        if port.tx_encryption is not self._tx_info:
            self._tx_info = port.tx_encryption
            self.stream.set_send_key(self._from_info(port.tx_encryption))
        if self.source is not None and (self._sender is None or self._sender.done()):
            self._sender = asyncio.get_running_loop().create_task(self._pace())

    def _stop(self, port) -> None:
        task, self._sender = self._sender, None
        if task is not None:
            task.cancel()

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while self.port.remote is not None:
            frame = self.source()
            if frame is None:
                return
            payload = self.stream._encode(frame)
            if self.keep_sent and len(self.sent_payloads) < MAX_KEPT_PAYLOADS:
                self.sent_payloads.append(payload)
            self.port.send(self.stream.packet_for_payload(payload))
            due += FRAME_MS / 1000
            now = loop.time()
            if now - due > MAX_LAG:
                due = now
            await asyncio.sleep(max(0.0, due - now))

    def close(self) -> None:
        self._stop(self.port)


class PhoneAudio:
    """A phone's audio: one `PortAudio` per media port its calls open, fed with the phone's own
    tone (each phone a different pitch, so a recording tells who was heard). Plug `hook` into the
    calling phone's media hook (`CallingPhone(on_media=…)`); counters stay after a port closes."""

    def __init__(self, pitch: float = 440.0, *, record: bool = False, keep_sent: bool = False):
        from ccmsec.media import tones

        self._source = tones.tone(pitch)
        self.record = record
        self.keep_sent = keep_sent
        self.by_port: dict[object, PortAudio] = {}
        # keep_sent: the G.711 payloads sent from each local media address, kept after the port
        # closes (for a proof against a capture: `ccmsec.media.capture.audio_proof`)
        self.sent_from: dict[tuple[str, int], list[bytes]] = {}
        self.closed_totals = {"sent": 0, "received": 0, "lost": 0, "refused": 0,
                              "refused_authentication": 0, "refused_replay": 0, "malformed": 0}

    def hook(self, what: str, port) -> None:
        if what == "open":
            self.by_port[port] = PortAudio(port, self._source.frame, record=self.record, keep_sent=self.keep_sent)
            if self.keep_sent and getattr(port, "local", None):
                self.sent_from[tuple(port.local)] = self.by_port[port].sent_payloads
        elif what == "close":
            audio = self.by_port.pop(port, None)
            if audio is not None:
                audio.close()
                for name, value in audio.counters().items():
                    if name in self.closed_totals:
                        self.closed_totals[name] += value

    def of(self, port) -> PortAudio | None:
        return self.by_port.get(port)

    @property
    def srtp_both_ways(self) -> bool:
        """Every open stream SRTP in both directions (the lock's media condition, CALL-2)."""
        return bool(self.by_port) and all(a.is_srtp for a in self.by_port.values())

    def totals(self) -> dict[str, int]:
        out = dict(self.closed_totals)
        for audio in self.by_port.values():
            for name, value in audio.counters().items():
                if name in out:
                    out[name] += value
        return out

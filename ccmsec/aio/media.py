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

"""The gateway's UDP media legs: many sockets drained together, each packet relayed in one buffer.

A relay leg receives one datagram every 20 ms, so batching per socket (`recvmmsg`) would batch
nothing. Instead every leg's socket sits in one epoll set whose own descriptor the event loop
watches: one wake-up of the loop reads every leg that has a datagram, one `poll` call for all of
them, instead of one loop callback (and a `bytes`, an address tuple and an event object) per
packet. Each datagram is read into one preallocated C buffer (`PacketBuffer`), where libsrtp
authenticates and decrypts it, `MediaStream` checks and counts it exactly as `receive` does, and
— for a party that answers at once (the echo) — the new header is written in front of the same
payload, libsrtp encrypts it there and it is sent from there. The per-packet Python work is one
`recv_into`, two libsrtp calls, a header unpack and pack, the sequence tracker and one `sendto`.

While packets keep coming the relay does not wake per packet: after a wake-up it stops watching
the descriptor and drains again every `COALESCE` seconds for as long as each drain finds
something (as a network card coalesces interrupts), so a busy relay costs one wake-up per
millisecond for all its legs; the first quiet millisecond puts it back to waiting on the
descriptor, so an idle gateway costs nothing. A packet waits at most that millisecond.

Sans-IO stays in `ccmsec.media.stream` (`receive_in_place`, `send_in_place`); this module only
moves bytes between sockets and that buffer.
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
from typing import Callable

from ccmsec.media.rtp import HEADER_SIZE
from ccmsec.media.srtp import PacketBuffer
from ccmsec.media.stream import MediaStream

log = logging.getLogger("ccmsec.media")

# One wake-up handles at most this many rounds of ready sockets before the loop runs other work
# (gRPC requests, timers); epoll is level-triggered, so what is left wakes the loop again.
MAX_ROUNDS = 8
MAX_EVENTS = 512
# While busy, drain every millisecond instead of waking per datagram (a voice packet's budget is
# 20 ms of pacing and ~150 ms one way; a phone's jitter buffer absorbs a millisecond).
COALESCE = 0.001


class RelayEndpoint:
    """One IP leg: a UDP socket on the gateway's address, the `MediaStream` that secures it and
    where its packets go. The gateway sets `receiving` / `sending` from the connection mode and
    `echo` when its telephone-network party hands each payload straight back; otherwise
    `on_payload` gets each accepted payload (as bytes)."""

    __slots__ = ("relay", "sock", "fd", "stream", "remote", "receiving", "sending", "echo",
                 "on_payload", "datagrams_in", "discarded", "octets_in", "octets_out",
                 "send_errors", "local_address", "closed")

    def __init__(self, relay: "MediaRelay", sock: socket.socket, stream: MediaStream):
        self.relay = relay
        self.sock = sock
        self.fd = sock.fileno()
        self.stream = stream
        self.remote: tuple[str, int] | None = None
        self.receiving = True          # False: datagrams are dropped unread (sendonly / inactive)
        self.sending = True            # False: nothing is sent (recvonly / inactive)
        self.echo = False
        self.on_payload: Callable[[bytes], None] | None = None
        self.datagrams_in = self.discarded = self.octets_in = self.octets_out = self.send_errors = 0
        self.local_address: tuple[str, int] = sock.getsockname()[:2]
        self.closed = False

    def _send(self, data) -> None:
        try:
            self.sock.sendto(data, self.remote)
        except OSError:          # a full socket buffer (the packet is dropped, as the network
            self.send_errors += 1  # would) or an ICMP error from a peer that went away

    def send_payload(self, payload: bytes) -> None:
        """An already-encoded G.711 frame from the party (the 20 ms ticker's path)."""
        if self.remote is not None and not self.closed:
            self.octets_out += len(payload)
            self._send(self.stream.packet_for_payload(payload))

    def counters(self) -> dict[str, int]:
        return self.stream.counters.as_dict()

    async def close(self) -> None:
        self.relay.remove(self)


class MediaRelay:
    """Every relay leg of one event loop (one gateway): the epoll set, the shared packet buffer."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._epoll = select.epoll()
        self._legs: dict[int, RelayEndpoint] = {}
        self.packet = PacketBuffer()
        self._timer: asyncio.TimerHandle | None = None
        self._watching = False
        self.closed = False
        self._watch()

    def open(self, host: str, port: int, stream: MediaStream) -> RelayEndpoint:
        if self.closed:
            raise RuntimeError("the media relay is closed")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((host, port))
            leg = RelayEndpoint(self, sock, stream)
            self._epoll.register(leg.fd, select.EPOLLIN)
        except OSError:
            sock.close()
            raise
        self._legs[leg.fd] = leg
        return leg

    def remove(self, leg: RelayEndpoint) -> None:
        if leg.closed:
            return
        leg.closed = True
        if self._legs.get(leg.fd) is leg:
            del self._legs[leg.fd]
            if not self.closed:
                self._epoll.unregister(leg.fd)
        leg.sock.close()

    def _watch(self) -> None:
        self._loop.add_reader(self._epoll.fileno(), self._woken)
        self._watching = True

    def _woken(self) -> None:
        """A datagram arrived after a quiet spell: relay it now, then poll every millisecond."""
        self._loop.remove_reader(self._epoll.fileno())
        self._watching = False
        self._drain()
        self._timer = self._loop.call_later(COALESCE, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.closed:
            return
        if self._drain():
            self._timer = self._loop.call_later(COALESCE, self._tick)
        else:
            self._watch()

    def _drain(self) -> int:
        """Relay what every ready leg holds; returns how many datagrams were read."""
        poll, legs, packet = self._epoll.poll, self._legs, self.packet
        into, view = packet.receive_view, packet.view
        count = 0
        for _ in range(MAX_ROUNDS):
            ready = poll(0, MAX_EVENTS)
            count += len(ready)
            for fd, _events in ready:
                leg = legs.get(fd)
                if leg is None:
                    continue
                try:
                    length = leg.sock.recv_into(into)
                except OSError:    # nothing after all, or an ICMP error queued on the socket
                    continue
                # one leg's packet, written out here rather than in methods: this is the
                # per-packet path, and each Python call on it is a measurable share of its cost
                try:
                    leg.datagrams_in += 1
                    if not leg.receiving:
                        leg.discarded += 1
                        continue
                    stream = leg.stream
                    end = stream.receive_in_place(packet, length)
                    if not end:
                        continue       # refused and counted by the stream
                    leg.octets_in += end - HEADER_SIZE
                    if leg.echo:
                        if leg.sending and leg.remote is not None:
                            leg.octets_out += end - HEADER_SIZE
                            try:
                                leg.sock.sendto(view[:stream.send_in_place(packet, end)], leg.remote)
                            except OSError:   # a full socket buffer or an ICMP error: dropped,
                                leg.send_errors += 1   # as the network would
                    elif leg.on_payload is not None:
                        leg.on_payload(bytes(view[HEADER_SIZE:end]))
                except Exception:  # a bug must not stop the other legs: log it, keep relaying
                    log.exception("relay leg failed on a packet", extra={"port": leg.local_address[1]})
            if len(ready) < MAX_EVENTS:
                break    # what arrives meanwhile waits for the next tick, not another poll now
        return count

    def close(self) -> None:
        if self.closed:
            return
        for leg in list(self._legs.values()):
            self.remove(leg)
        self.closed = True
        if self._watching:
            self._loop.remove_reader(self._epoll.fileno())
            self._watching = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._epoll.close()

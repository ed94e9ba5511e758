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

With the C packet path (`relay_core.c`, built when the relay starts; `CCMSEC_RELAY_CORE`) a
leg that answers as an echo with a known far end is relayed entirely in C: the same steps, checks
and counters, no interpreter per packet. While a leg is on that path its stream's sequence
tracker, packetiser and counters live in the leg's C record: every change to the leg (mode, far
end, keys, stream) takes them back first (`_leave`), and every read (`sync`, `counters`) copies
them out. Other legs, and packets whose header is not the plain 12 bytes, stay with Python.

Sans-IO stays in `ccmsec.media.stream` (`receive_in_place`, `send_in_place`); this module only
moves bytes between sockets and that buffer.
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import struct
from typing import Callable

from ccmsec.aio import relay_core
from ccmsec.media.rtp import HEADER, HEADER_SIZE, RtpError, parse_rtp
from ccmsec.media.srtp import PacketBuffer, SrtpRefused, _ffi as srtp_ffi
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
    `on_payload` gets each accepted payload (as bytes). Counters read here are current after
    `sync()` (`counters()` does it)."""

    __slots__ = ("relay", "sock", "fd", "_stream", "_remote", "_receiving", "_sending", "_echo",
                 "on_payload", "datagrams_in", "discarded", "octets_in", "octets_out",
                 "send_errors", "local_address", "closed", "_c", "_fast", "_held")

    def __init__(self, relay: "MediaRelay", sock: socket.socket, stream: MediaStream):
        self.relay = relay
        self.sock = sock
        self.fd = sock.fileno()
        self._stream = stream
        self._remote: tuple[str, int] | None = None
        self._receiving = True         # False: datagrams are dropped unread (sendonly / inactive)
        self._sending = True           # False: nothing is sent (recvonly / inactive)
        self._echo = False
        self.on_payload: Callable[[bytes], None] | None = None
        self.datagrams_in = self.discarded = self.octets_in = self.octets_out = self.send_errors = 0
        self.local_address: tuple[str, int] = sock.getsockname()[:2]
        self.closed = False
        self._fast = False             # on the C path: the C record holds the stream's state
        self._held = None              # the libsrtp sessions the C record points at, kept alive
        self._c = relay._new_record(self.fd)

    # -- what the gateway changes: each takes the leg off the C path first ---------------------
    def _changing(self) -> None:
        if self._fast:
            self._leave()

    @property
    def stream(self) -> MediaStream:
        return self._stream

    @stream.setter
    def stream(self, value: MediaStream) -> None:
        self._changing()
        self._stream = value
        self._refresh()

    @property
    def remote(self) -> tuple[str, int] | None:
        return self._remote

    @remote.setter
    def remote(self, value: tuple[str, int] | None) -> None:
        self._changing()
        self._remote = value
        self._refresh()

    @property
    def receiving(self) -> bool:
        return self._receiving

    @receiving.setter
    def receiving(self, value: bool) -> None:
        self._changing()
        self._receiving = value
        self._refresh()

    @property
    def sending(self) -> bool:
        return self._sending

    @sending.setter
    def sending(self, value: bool) -> None:
        self._changing()
        self._sending = value
        self._refresh()

    @property
    def echo(self) -> bool:
        return self._echo

    @echo.setter
    def echo(self, value: bool) -> None:
        self._changing()
        self._echo = value
        self._refresh()

    def set_keys(self, send_key, receive_key, *, send: bool = True, receive: bool = True) -> None:
        """`MediaStream.set_keys` for this leg's stream (after a modify: new far end or keys);
        `send` / `receive` False keeps that side's libsrtp session (its rollover counter and
        replay window) as it is."""
        self._changing()
        if send:
            self._stream.set_send_key(send_key)
        if receive:
            self._stream.set_receive_key(receive_key)
        self._refresh()

    # -- the C path ------------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Onto the C path when it can carry this leg: an answering echo with a known far end."""
        c = self._c
        if c is None or self._fast or self.closed or not (self._echo and self._receiving and self._sending):
            return
        if self._remote is None:
            return
        try:
            packed = socket.inet_aton(self._remote[0])
        except OSError:
            return                    # a name, not an address: Python's sendto resolves it
        s = self._stream
        sender, receiver = s._sender, s._receiver
        ffi = self.relay._core.ffi
        c.rx = ffi.cast("void *", int(srtp_ffi.cast("uintptr_t", receiver._ctx))) if receiver else ffi.NULL
        c.tx = ffi.cast("void *", int(srtp_ffi.cast("uintptr_t", sender._ctx))) if sender else ffi.NULL
        c.rx_shortest = receiver._shortest if receiver else 0
        self._held = (sender, receiver)
        c.payload_type = s.payload_type
        c.ssrc_known = s.remote_ssrc is not None
        c.remote_ssrc = s.remote_ssrc or 0
        t = s.tracker
        c.base, c.highest, c.tracked, c.out_of_order, c.restarts = (t.base, t.highest, t.received,
                                                                    t.out_of_order, t.restarts)
        p = s.packetiser
        c.ssrc, c.sequence, c.timestamp, c.first = p.ssrc, p.sequence, p.timestamp, p._first
        k = s._counters
        (c.sent, c.received, c.refused_authentication, c.refused_replay, c.malformed, c.foreign) = (
            k.sent, k.received, k.refused_authentication, k.refused_replay, k.malformed, k.foreign)
        (c.datagrams_in, c.octets_in, c.octets_out, c.send_errors) = (
            self.datagrams_in, self.octets_in, self.octets_out, self.send_errors)
        # struct sockaddr_in: family (host order), port, address, zero padding
        ffi.memmove(c.remote, struct.pack("=H", socket.AF_INET) + struct.pack("!H", self._remote[1])
                    + packed + bytes(8), 16)
        c.remote_length = 16
        c.fast = 1
        self._fast = True

    def sync(self) -> None:
        """Copy the C record's state out to the stream and these counters (the C path keeps it)."""
        if not self._fast:
            return
        c, s = self._c, self._stream
        s.remote_ssrc = c.remote_ssrc if c.ssrc_known else None
        t = s.tracker
        t.base, t.highest, t.received, t.out_of_order, t.restarts = (c.base, c.highest, c.tracked,
                                                                     c.out_of_order, c.restarts)
        p = s.packetiser
        p.sequence, p.timestamp, p._first = c.sequence, c.timestamp, bool(c.first)
        k = s._counters
        (k.sent, k.received, k.refused_authentication, k.refused_replay, k.malformed, k.foreign) = (
            c.sent, c.received, c.refused_authentication, c.refused_replay, c.malformed, c.foreign)
        self.datagrams_in, self.octets_in, self.octets_out, self.send_errors = (
            c.datagrams_in, c.octets_in, c.octets_out, c.send_errors)

    def _leave(self) -> None:
        self.sync()
        self._c.fast = 0
        self._fast = False
        self._held = None

    @property
    def on_c_path(self) -> bool:
        return self._fast

    # -- Python's packet path ----------------------------------------------------------------------
    def _send(self, data) -> None:
        try:
            self.sock.sendto(data, self._remote)
        except OSError:          # a full socket buffer (the packet is dropped, as the network
            self.send_errors += 1  # would) or an ICMP error from a peer that went away

    def send_payload(self, payload: bytes) -> None:
        """An already-encoded G.711 frame from the party (the 20 ms ticker's path)."""
        if self._remote is not None and not self.closed:
            fast = self._fast
            if fast:
                self._leave()
            self.octets_out += len(payload)
            self._send(self._stream.packet_for_payload(payload))
            if fast:
                self._refresh()

    def counters(self) -> dict[str, int]:
        self.sync()
        return self._stream.counters.as_dict()

    async def close(self) -> None:
        self.relay.remove(self)


class MediaRelay:
    """Every relay leg of one event loop (one gateway): the epoll set, the shared packet buffer,
    and — when it builds — the C packet path with one record per leg, indexed by descriptor."""

    def __init__(self, core: "relay_core.RelayCore | None | bool" = True) -> None:
        self._loop = asyncio.get_running_loop()
        self._epoll = select.epoll()
        self._legs: dict[int, RelayEndpoint] = {}
        self.packet = PacketBuffer()
        self._timer: asyncio.TimerHandle | None = None
        self._watching = False
        self.closed = False
        # True: as CCMSEC_RELAY_CORE says; None/False: Python only; or a built core
        self._core = relay_core.load() if core is True else (core or None)
        self._table = None
        self._table_size = 0
        if self._core is not None:
            self._result = self._core.ffi.new("struct relay_result *")
            # the same C buffer, as the C path's FFI sees it (self.packet keeps it alive)
            self._buffer = self._core.ffi.cast("uint8_t *", int(srtp_ffi.cast("uintptr_t", self.packet.cdata)))
            self._grow(1024)
        self._watch()

    @property
    def path(self) -> str:
        """Which packet path relays the echo legs: "c" or "python"."""
        return "c" if self._core is not None else "python"

    def _grow(self, size: int) -> None:
        table = self._core.ffi.new("struct relay_leg *[]", size)
        if self._table is not None:
            self._core.ffi.memmove(table, self._table, self._core.ffi.sizeof("struct relay_leg *") * self._table_size)
        self._table, self._table_size = table, size

    def _new_record(self, fd: int):
        if self._core is None:
            return None
        if fd >= self._table_size:
            self._grow(max(fd + 1, 2 * self._table_size))
        record = self._core.ffi.new("struct relay_leg *")
        record.fd = fd
        self._table[fd] = record
        return record

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
            if self._core is not None and sock.fileno() >= 0 and sock.fileno() < self._table_size:
                self._table[sock.fileno()] = self._core.ffi.NULL
            sock.close()
            raise
        self._legs[leg.fd] = leg
        return leg

    def remove(self, leg: RelayEndpoint) -> None:
        if leg.closed:
            return
        if leg._fast:
            leg._leave()
        leg.closed = True
        if self._legs.get(leg.fd) is leg:
            del self._legs[leg.fd]
            if not self.closed:
                self._epoll.unregister(leg.fd)
        if self._core is not None and leg.fd < self._table_size and self._table[leg.fd] == leg._c:
            self._table[leg.fd] = self._core.ffi.NULL   # before the descriptor can be reused
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
        return self._drain_python() if self._core is None else self._drain_c()

    def _drain_c(self) -> int:
        """The C path drains; the legs it hands back, and odd headers, are relayed here."""
        core, result, legs = self._core, self._result, self._legs
        drain, epfd, buffer, config = core.lib.relay_drain, self._epoll.fileno(), self._buffer, core.config
        count, rounds = 0, MAX_ROUNDS
        while rounds > 0:
            status = drain(epfd, self._table, self._table_size, buffer, config, rounds, MAX_EVENTS, result)
            if status < 0:
                log.error("relay poll failed", extra={"errno": -status})
                break
            count += result.datagrams
            rounds -= result.rounds
            odd = result.odd_fd >= 0
            if odd:   # first: the packet lies in the shared buffer the handed-back legs read into
                self._odd_header(legs.get(result.odd_fd), result.odd_length)
            for i in range(result.handed_back):
                leg = legs.get(result.back[i])
                if leg is not None:
                    self._relay_one(leg)
            if not odd and not (result.handed_back and result.full):
                break
        return count

    def _odd_header(self, leg: RelayEndpoint | None, length: int) -> None:
        """A decrypted packet on the C path whose header has CSRCs, an extension or padding: parsed
        here, normalised to the fixed 12 bytes in place, then accepted and echoed by C."""
        if leg is None or not leg._fast:   # cannot happen (nothing runs between C and here)
            if leg is not None:
                leg.discarded += 1
            return
        view = self.packet.view
        try:
            rtp = parse_rtp(bytes(view[:length]))
        except RtpError:
            leg._c.malformed += 1
            return
        end = HEADER_SIZE + len(rtp.payload)
        HEADER.pack_into(view, 0, 0x80, rtp.payload_type | (0x80 if rtp.marker else 0), rtp.sequence,
                         rtp.timestamp, rtp.ssrc)
        view[HEADER_SIZE:end] = rtp.payload
        self._core.lib.relay_accept(leg._c, self._buffer, end, self._core.config)

    def _drain_python(self) -> int:
        """Relay what every ready leg holds; returns how many datagrams were read."""
        poll, legs, relay_one = self._epoll.poll, self._legs, self._relay_one
        count = 0
        for _ in range(MAX_ROUNDS):
            ready = poll(0, MAX_EVENTS)
            count += len(ready)
            for fd, _events in ready:
                leg = legs.get(fd)
                if leg is not None:
                    relay_one(leg)
            if len(ready) < MAX_EVENTS:
                break    # what arrives meanwhile waits for the next tick, not another poll now
        return count

    def _relay_one(self, leg: RelayEndpoint) -> None:
        """One datagram of a leg on Python's path: read into the packet buffer, checked and
        counted by the stream, answered in place (echo) or handed to the party."""
        packet = self.packet
        try:
            length = leg.sock.recv_into(packet.receive_view)
        except OSError:    # nothing after all, or an ICMP error queued on the socket
            return
        try:
            leg.datagrams_in += 1
            if not leg._receiving:
                leg.discarded += 1
                return
            stream = leg._stream
            end = stream.receive_in_place(packet, length)
            if not end:
                return       # refused and counted by the stream
            leg.octets_in += end - HEADER_SIZE
            if leg._echo:
                if leg._sending and leg._remote is not None:
                    leg.octets_out += end - HEADER_SIZE
                    try:
                        leg.sock.sendto(packet.view[:stream.send_in_place(packet, end)], leg._remote)
                    except (OSError, SrtpRefused):   # a full socket buffer or an ICMP error (dropped,
                        leg.send_errors += 1         # as the network would), or libsrtp would not encrypt
            elif leg.on_payload is not None:
                leg.on_payload(bytes(packet.view[HEADER_SIZE:end]))
        except Exception:  # a bug must not stop the other legs: log it, keep relaying
            log.exception("relay leg failed on a packet", extra={"port": leg.local_address[1]})

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

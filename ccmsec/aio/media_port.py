"""A real UDP port per media channel — the seam between call signalling and the media plane.

When call control asks a phone (or a media resource: conference bridge, music on hold, CTI port,
trunk) to open a receive channel, the owner binds one `MediaPort` on its own address and reports
that address (OpenReceiveChannelAck). StartMediaTransmission tells it where to send (`start`),
StopMediaTransmission stops it, CloseReceiveChannel closes it. The port counts the datagrams that
reach it. Audio itself — RTP/SRTP packets sent every 20 ms, keys from the encryption-info blocks —
is the media plane's: it attaches a sender and a receiver through `on_start` / `on_datagram`.

Binding is synchronous (the address must be known at once); receiving runs on the event loop.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Callable

from ccmsec.wire.sccp import EncryptionInfo

MAX_PORTS = 4096  # per owner; a runaway server cannot make a phone exhaust its sockets


class MediaPortError(OSError):
    """The port could not be bound (no free port, too many open)."""


class MediaPort(asyncio.DatagramProtocol):
    __slots__ = ("sock", "local", "remote", "codec", "rx_encryption", "tx_encryption",
                 "datagrams_in", "bytes_in", "transport", "closed", "on_datagram", "on_start",
                 "on_stop", "_attach")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.local: tuple[str, int] = (host, port)
        self.remote: tuple[str, int] | None = None
        self.codec = 0
        self.rx_encryption = EncryptionInfo()
        self.tx_encryption = EncryptionInfo()
        self.datagrams_in = 0
        self.bytes_in = 0
        self.transport: asyncio.DatagramTransport | None = None
        self.closed = False
        self.on_datagram: Callable[[bytes, tuple], None] | None = None
        self.on_start: Callable[["MediaPort"], None] | None = None
        self.on_stop: Callable[["MediaPort"], None] | None = None
        self._attach: asyncio.Task | None = None

    @classmethod
    def bind(cls, host: str, port: int = 0) -> "MediaPort":
        """Bind now (the address goes into the ack at once); receive once the loop attaches."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise MediaPortError(exc.errno, f"cannot bind a media port on {host}: {exc}") from None
        self = cls(sock)
        loop = asyncio.get_running_loop()
        self._attach = loop.create_task(
            loop.create_datagram_endpoint(lambda: self, sock=sock))
        return self

    # DatagramProtocol -------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.closed:
            transport.close()

    def datagram_received(self, data: bytes, addr) -> None:
        self.datagrams_in += 1
        self.bytes_in += len(data)
        if self.on_datagram is not None:
            self.on_datagram(data, addr)

    def error_received(self, exc) -> None:
        pass  # an ICMP error from a peer that went away: nothing to do for a receiver

    # control ----------------------------------------------------------------------------------
    def start(self, remote: tuple[str, int], codec: int = 0,
              encryption: EncryptionInfo | None = None) -> None:
        self.remote, self.codec = remote, codec
        self.tx_encryption = encryption or EncryptionInfo()
        if self.on_start is not None:
            self.on_start(self)

    def stop(self) -> None:
        if self.remote is not None:
            self.remote = None
            if self.on_stop is not None:
                self.on_stop(self)

    def send(self, data: bytes) -> None:
        """Send one datagram to the current remote (the media plane's sender uses this)."""
        if self.remote is not None and self.transport is not None and not self.closed:
            self.transport.sendto(data, self.remote)

    def close(self) -> None:
        if self.closed:
            return
        self.stop()
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        elif self._attach is not None and not self._attach.done():
            self._attach.cancel()
            self.sock.close()
        else:
            self.sock.close()


class MediaPorts:
    """The ports of one owner (a phone, or callmanager's media resources), bounded."""

    def __init__(self, host: str, limit: int = MAX_PORTS) -> None:
        self.host = host
        self.limit = limit
        self.ports: dict[object, MediaPort] = {}
        self.opened_total = 0

    def open(self, key: object) -> MediaPort:
        port = self.ports.get(key)
        if port is not None:
            return port
        if len(self.ports) >= self.limit:
            raise MediaPortError(0, f"more than {self.limit} media ports open")
        port = self.ports[key] = MediaPort.bind(self.host)
        self.opened_total += 1
        return port

    def get(self, key: object) -> MediaPort | None:
        return self.ports.get(key)

    def close(self, key: object) -> None:
        port = self.ports.pop(key, None)
        if port is not None:
            port.close()

    def close_all(self) -> None:
        for key in list(self.ports):
            self.close(key)

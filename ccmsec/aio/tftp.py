"""Asyncio adapters for TFTP: a read-only server and a client, over `ccmsec.wire.tftp`.

The server listens for requests on one UDP socket and serves each transfer from a fresh
ephemeral socket (RFC 1350 TIDs). All protocol decisions live in the sans-IO state machines;
this module only moves datagrams and runs one timer per transfer.

    async def resolve(filename: str, client: tuple[str, int]) -> bytes | None: ...
    async with TftpServer("127.0.0.1", 0, resolve) as server:
        data = await tftp_get(*server.address, "SEP001122334455.cnf.xml", blksize=1428)
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable

from ccmsec.runtime.metrics import TFTP_BYTES, TFTP_ERRORS, TFTP_TRANSFERS
from ccmsec.wire.tftp import (
    DEFAULT_MAX_TIMEOUT,
    ERR_ACCESS_VIOLATION,
    ERR_FILE_NOT_FOUND,
    ERR_NOT_DEFINED,
    MAX_BLKSIZE,
    OP_RRQ,
    ReadClient,
    ReadTransfer,
    Request,
    TftpError,
    TftpPacketError,
    TftpTimeoutError,
    TransferState,
    check_filename,
    encode_error,
    parse_packet,
)

__all__ = ["TftpServer", "tftp_get", "TftpError", "TftpTimeoutError", "Resolver"]

log = logging.getLogger(__name__)

Resolver = Callable[[str, tuple[str, int]], Awaitable[bytes | None]]

_SOCKET_BUFFER = 1 << 20  # room for a full window of large blocks
_ERROR_NAMES = {ERR_FILE_NOT_FOUND: "not_found", ERR_ACCESS_VIOLATION: "access_violation",
                ERR_NOT_DEFINED: "refused"}


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _udp_socket(host: str, bind_host: str | None = None) -> socket.socket:
    """A non-blocking UDP socket on an ephemeral port (a fresh TFTP TID)."""
    sock = socket.socket(_family(host), socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
        sock.bind((host if bind_host is None else bind_host, 0))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Driver(asyncio.DatagramProtocol):
    """Feeds one state machine (ReadTransfer or ReadClient) from a socket and a timer."""

    def __init__(self, machine: ReadTransfer | ReadClient, loop: asyncio.AbstractEventLoop) -> None:
        self.machine = machine
        self.loop = loop
        self.transport: asyncio.DatagramTransport | None = None
        self.finished: asyncio.Future[None] = loop.create_future()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def begin(self) -> None:
        self._send(self.machine.start(self.loop.time()))

    def _send(self, outgoing: list) -> None:
        sendto = self.transport.sendto  # type: ignore[union-attr]
        for datagram, address in outgoing:
            sendto(datagram, address)
        self._settle()

    def _settle(self) -> None:
        machine = self.machine
        if machine.state is not TransferState.RUNNING:
            self._finish()
            return
        # One timer per transfer; it re-arms itself lazily when progress moved the deadline.
        if self._timer is None and machine.deadline is not None:
            self._timer = self.loop.call_at(machine.deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        machine = self.machine
        now = self.loop.time()
        if machine.deadline is not None and now < machine.deadline:
            self._timer = self.loop.call_at(machine.deadline, self._on_timer)
            return
        self._send(machine.tick(now))

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if self.finished.done():
            return
        self._send(self.machine.receive(data, addr[:2], self.loop.time()))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable etc.: the retransmission timer decides when to give up.
        log.debug("tftp socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    def _finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.finished.done():
            self.finished.set_result(None)


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, server: TftpServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.server._on_request(data, addr[:2])

    def error_received(self, exc: Exception) -> None:
        log.debug("tftp listener error: %s", exc)


class TftpServer:
    """Read-only TFTP server. `resolve(filename, client)` returns the bytes, None (not found),
    or raises TftpError(code, message).

    At most `max_sessions` transfers run at once, and at most `max_sessions_per_source` of them
    for one client address (default a quarter): a client that floods read requests (and never
    acknowledges) gets "server busy" for the excess, while others keep being served.
    """

    def __init__(
        self,
        host: str,
        port: int,
        resolve: Resolver,
        *,
        max_sessions: int = 512,
        max_sessions_per_source: int | None = None,
        max_blksize: int = MAX_BLKSIZE,
        max_windowsize: int = 64,
        max_timeout: int = DEFAULT_MAX_TIMEOUT,
        timeout: float = 1.0,
        retries: int = 5,
        kind_of: Callable[[str], str] | None = None,
    ) -> None:
        self.host = host
        # Kind of file for metrics (`ccmsec_tftp_transfers_total{kind,outcome}`, `..._errors_total`);
        # the owner's classifier (tftp-signer: trust-list, device-config, firmware, ...).
        self.kind_of = kind_of or (lambda _name: "file")
        self.port = port
        self.resolve = resolve
        self.max_sessions = max_sessions
        self.max_sessions_per_source = max_sessions_per_source or max(1, max_sessions // 4)
        self.max_blksize = max_blksize
        self.max_windowsize = max_windowsize
        self.max_timeout = max_timeout
        self.timeout = timeout
        self.retries = retries
        self.completed = 0
        self.failed = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._sessions: dict[tuple, asyncio.Task[None]] = {}
        self._per_source: dict[str, int] = {}  # client address -> transfers running
        self.refused_per_source = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def address(self) -> tuple[str, int]:
        if self._transport is None:
            raise RuntimeError("server not started")
        return self._transport.get_extra_info("sockname")[:2]

    def _count(self, filename: str, error: str | None, size: int = 0) -> None:
        try:
            kind = self.kind_of(filename) if filename else "invalid"
        except Exception:
            kind = "invalid"
        if error is None:
            TFTP_TRANSFERS.labels(kind, "completed").inc()
            TFTP_BYTES.labels(kind).inc(size)
        else:
            TFTP_TRANSFERS.labels(kind, "failed").inc()
            TFTP_ERRORS.labels(kind, error).inc()

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        sock = socket.socket(_family(self.host), socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * _SOCKET_BUFFER)
            sock.bind((self.host, self.port))
        except BaseException:
            sock.close()
            raise
        self._transport, _ = await self._loop.create_datagram_endpoint(lambda: _Listener(self), sock=sock)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        tasks = list(self._sessions.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._sessions.clear()
        self._per_source.clear()

    async def __aenter__(self) -> TftpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _reply(self, datagram: bytes, addr: tuple) -> None:
        if self._transport is not None:
            self._transport.sendto(datagram, addr)

    def _on_request(self, data: bytes, addr: tuple) -> None:
        try:
            packet = parse_packet(data)
        except TftpPacketError as exc:
            self._reply(encode_error(exc.error_code, str(exc)), addr)
            return
        if not isinstance(packet, Request):
            return  # stray DATA/ACK/ERROR on the listening port: nothing to answer
        if packet.opcode != OP_RRQ:
            self._reply(encode_error(ERR_ACCESS_VIOLATION, "writes are not allowed"), addr)
            return
        if addr in self._sessions:
            return  # the client repeated its RRQ; the running transfer retransmits on its own
        if len(self._sessions) >= self.max_sessions:
            self._reply(encode_error(ERR_NOT_DEFINED, "server busy"), addr)
            self._count(packet.filename, "busy")
            return
        source = addr[0]
        running = self._per_source.get(source, 0)
        if running >= self.max_sessions_per_source:
            self.refused_per_source += 1
            self._reply(encode_error(ERR_NOT_DEFINED, "server busy: too many transfers from "
                                                      "your address"), addr)
            self._count(packet.filename, "busy")
            return
        try:
            check_filename(packet.filename)
        except TftpError as exc:
            self._reply(encode_error(exc.code, exc.message), addr)
            self._count("", "access_violation")
            return
        task = self._loop.create_task(self._serve(packet, addr))  # type: ignore[union-attr]
        self._sessions[addr] = task
        self._per_source[source] = running + 1
        task.add_done_callback(lambda _t, key=addr: self._session_done(key))

    def _session_done(self, addr: tuple) -> None:
        self._sessions.pop(addr, None)
        left = self._per_source.get(addr[0], 1) - 1
        if left > 0:
            self._per_source[addr[0]] = left
        else:
            self._per_source.pop(addr[0], None)

    async def _serve(self, request: Request, addr: tuple) -> None:
        loop = self._loop
        assert loop is not None
        try:
            data = await self.resolve(request.filename, addr)
        except TftpError as exc:
            self._reply(encode_error(exc.code, exc.message), addr)
            self.failed += 1
            self._count(request.filename, _ERROR_NAMES.get(exc.code, "error"))
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("tftp resolver failed for %r", request.filename)
            self._reply(encode_error(ERR_NOT_DEFINED, "internal error"), addr)
            self.failed += 1
            self._count(request.filename, "internal")
            return
        if data is None:
            self._reply(encode_error(ERR_FILE_NOT_FOUND, "file not found"), addr)
            self.failed += 1
            self._count(request.filename, "not_found")
            return
        transfer = ReadTransfer(
            data, request, addr,
            max_blksize=self.max_blksize, max_windowsize=self.max_windowsize,
            max_timeout=self.max_timeout, timeout=self.timeout, max_retries=self.retries,
        )
        driver = _Driver(transfer, loop)
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: driver, sock=_udp_socket(self.host))
        except OSError as exc:  # out of sockets or ports: tell the phone to come back later
            log.warning("tftp: no transfer socket for %s: %s", addr, exc)
            self._reply(encode_error(ERR_NOT_DEFINED, "server busy"), addr)
            self.failed += 1
            self._count(request.filename, "busy")
            return
        try:
            driver.begin()
            await driver.finished
        finally:
            driver._finish()
            transport.close()
        if transfer.state is TransferState.DONE:
            self.completed += 1
            self._count(request.filename, None, len(data))
        else:
            self.failed += 1
            self._count(request.filename, "transfer")
            log.info("tftp transfer of %r to %s failed: %s", request.filename, addr, transfer.error)


async def tftp_get(
    host: str,
    port: int,
    filename: str,
    *,
    blksize: int | None = None,
    windowsize: int | None = None,
    tsize: bool = False,
    mode: str = "octet",
    timeout: float = 1.0,
    retries: int = 5,
    max_size: int = 64 * 1024 * 1024,
    bind_host: str | None = None,
) -> bytes:
    """Fetch one file. Raises TftpError with the server's code and message, or TftpTimeoutError.

    `host` is an IP address or a name resolved to one first (the answer's source address is
    checked against it: a compose service name, say); the local socket binds to `bind_host`, by
    default the wildcard address of the same family.
    """
    loop = asyncio.get_running_loop()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            host = (await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM))[0][4][0]
        except (OSError, UnicodeError, IndexError) as exc:
            raise TftpError(ERR_NOT_DEFINED, f"cannot resolve {host!r}: {exc}") from None
    if bind_host is None:
        bind_host = "::" if ":" in host else "0.0.0.0"
    client = ReadClient(
        filename, (host, port), mode=mode, blksize=blksize, windowsize=windowsize, tsize=tsize,
        timeout=timeout, max_retries=retries, max_size=max_size,
    )
    driver = _Driver(client, loop)
    transport, _ = await loop.create_datagram_endpoint(lambda: driver, sock=_udp_socket(host, bind_host))
    try:
        driver.begin()
        await driver.finished
    finally:
        driver._finish()
        transport.close()
    if client.state is TransferState.DONE:
        assert client.result is not None
        return client.result
    raise client.error or TftpError(ERR_NOT_DEFINED, "transfer aborted")

"""Asyncio adapters for TFTP: a read-only server and a client, over `ccmsec.wire.tftp`.

The server listens for requests on one UDP socket and serves each transfer from a fresh
ephemeral socket (RFC 1350 TIDs). All protocol decisions live in the sans-IO state machines;
this module only moves datagrams and runs one timer per transfer.

Listening on the wildcard address (0.0.0.0, ::), the listener learns from IP_PKTINFO /
IPV6_PKTINFO which of the host's addresses each request was sent to; the transfer socket binds
that address and the listener's own error replies leave from it, so on a multi-homed host a
client sees its answers come from the address it asked (its TID check drops anything else).

Addresses are kept whole — IPv6 (host, port, flowinfo, scope_id) — from the request to every answer
and to the transfer socket's bind: a link-local client (fe80::…%eth0) is reachable only through its
interface, and a listener may bind a link-local address itself (`TftpServer("fe80::1%eth0", 69, …)`).

    async def resolve(filename: str, client: tuple[str, int]) -> bytes | None: ...
    async with TftpServer("127.0.0.1", 0, resolve) as server:
        data = await tftp_get(*server.address, "SEP001122334455.cnf.xml", blksize=1428)
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import sys
from collections.abc import Awaitable, Callable

from ccmsec.runtime.metrics import TFTP_BYTES, TFTP_ERRORS, TFTP_REQUESTS_REFUSED, TFTP_TRANSFERS
from ccmsec.wire.tftp import (
    DEFAULT_MAX_TIMEOUT,
    ERR_ACCESS_VIOLATION,
    ERR_FILE_NOT_FOUND,
    ERR_NOT_DEFINED,
    MAX_BLKSIZE,
    MAX_NETASCII_SIZE,
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

__all__ = ["TftpServer", "tftp_get", "TftpError", "TftpSocketError", "TftpTimeoutError", "Resolver"]

log = logging.getLogger(__name__)

Resolver = Callable[[str, tuple[str, int]], Awaitable[bytes | None]]

_SOCKET_BUFFER = 1 << 20  # room for a full window of large blocks
_REQUEST_BUFFER = 4096  # requests are <= 512 bytes; a longer one is still seen as too long
# Linux's IP_PKTINFO is 8; Python does not export the name everywhere.
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8 if sys.platform.startswith("linux") else None)
_IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", None)
_IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", None)
_IN_PKTINFO = struct.Struct("=i4s4s")  # ipi_ifindex, ipi_spec_dst, ipi_addr (header destination)
_IN6_PKTINFO = struct.Struct("=16sI")  # ipi6_addr, ipi6_ifindex
_ERROR_NAMES = {ERR_FILE_NOT_FOUND: "not_found", ERR_ACCESS_VIOLATION: "access_violation",
                ERR_NOT_DEFINED: "refused"}


class TftpSocketError(TftpError, OSError):
    """The server's listening socket or a client's socket could not be made or bound (a port in
    use, an address not of this host, a link-local address without its interface): a TftpError
    (code 0) whose message names the address and the reason — and an OSError as before, so a
    caller that stops on one (a service's start: "cannot start: ...") still does. Nothing is left
    open: the socket is closed before this is raised."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(ERR_NOT_DEFINED, message)
        self.errno = errno


def _reason(exc: BaseException, sockaddr: tuple = ()) -> str:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    if len(sockaddr) >= 4 and not sockaddr[3]:
        try:
            if ipaddress.ip_address(sockaddr[0]).is_link_local:
                reason += " (a link-local address needs its interface: fe80::1%eth0)"
        except ValueError:
            pass
    return reason


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


def _sockaddr(host: str, port: int) -> tuple:
    """The socket address of a numeric `host`: (host, port), or for IPv6 the full
    (host, port, flowinfo, scope_id), so a link-local `fe80::1%eth0` keeps its interface (a
    2-tuple binds or sends with scope id 0: EINVAL, or whichever interface the routing picks)."""
    if _family(host) == socket.AF_INET:
        return (host, port)
    return socket.getaddrinfo(host, port, socket.AF_INET6, socket.SOCK_DGRAM, 0,
                              socket.AI_NUMERICHOST)[0][4]


def _udp_socket(family: int, bind: tuple) -> socket.socket:
    """A non-blocking UDP socket bound to `bind` (a full socket address, port 0: a fresh TFTP TID).
    One that cannot be made or bound is closed, and TftpSocketError says which address and why."""
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as exc:
        raise TftpSocketError(f"cannot open a UDP socket for {_shown(bind)}: {_reason(exc)}", exc.errno) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
        sock.bind(bind)
        sock.setblocking(False)
    except (OSError, OverflowError, TypeError, ValueError) as exc:
        sock.close()
        raise TftpSocketError(f"cannot bind {_shown(bind)}: {_reason(exc, bind)}", getattr(exc, "errno", None)) from None
    except BaseException:
        sock.close()
        raise
    return sock


def _scoped(host: str, scope_id: int) -> str:
    """`host%interface` for a scoped (link-local) IPv6 address — the form `TftpServer` and
    `tftp_get` take back — else `host`. An interface without a name keeps its number."""
    if not scope_id:
        return host
    try:
        return f"{host}%{socket.if_indextoname(scope_id)}"
    except OSError:
        return f"{host}%{scope_id}"


def _shown(sockaddr: tuple) -> str:
    """A socket address for a message: 127.0.0.1 port 69, fe80::1%eth0 port 0."""
    host = _scoped(sockaddr[0], sockaddr[3]) if len(sockaddr) >= 4 else sockaddr[0]
    return f"{host} port {sockaddr[1]}"


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
        # The whole address: an IPv6 peer's scope id is part of who it is (fe80::1 on eth0 and
        # on eth1 are two hosts), and replies go back to the same tuple.
        self._send(self.machine.receive(data, addr, self.loop.time()))

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


def _local_address(ancdata: list, family: int) -> tuple[str, int] | None:
    """(address, interface index) to answer a request from, from its IP_PKTINFO / IPV6_PKTINFO.

    IPv4: `ipi_spec_dst`, the local address of the packet — the header destination for unicast,
    the receiving interface's address for a broadcast (a socket must not bind a broadcast address,
    nor answer from one). IPv6: the header destination, unless multicast (then None: the routing
    table picks, as for a listener bound to one address)."""
    v6 = None
    for level, kind, data in ancdata:
        # IP_PKTINFO comes for an IPv4 request on an IPv4 listener and on a dual-stack `::` one
        # (where IPV6_PKTINFO holds only the v4-mapped header destination: for a broadcast, the
        # broadcast address), so it is preferred.
        if level == socket.IPPROTO_IP and kind == _IP_PKTINFO and len(data) >= _IN_PKTINFO.size:
            ifindex, spec_dst, _header_dst = _IN_PKTINFO.unpack_from(data)
            address = socket.inet_ntop(socket.AF_INET, spec_dst)
            if address == "0.0.0.0":
                return None
            return (address if family == socket.AF_INET else f"::ffff:{address}", ifindex)
        if family == socket.AF_INET6 and level == socket.IPPROTO_IPV6 and kind == _IPV6_PKTINFO \
                and len(data) >= _IN6_PKTINFO.size:
            v6 = _IN6_PKTINFO.unpack_from(data)
    if v6 is None:
        return None
    dst, ifindex = v6
    address = ipaddress.ip_address(socket.inet_ntop(socket.AF_INET6, dst))
    if address.is_multicast or address.ipv4_mapped is not None:
        # An IPv4 request without IP_PKTINFO: its header destination may be a broadcast address,
        # which must not be bound; the routing table picks, as for a listener bound to one address.
        return None
    return str(address), ifindex


def _source(addr: tuple) -> str:
    """The client address a per-source share is counted for: the host, and for a scoped IPv6
    address (link-local) its interface too — `fe80::2` on eth0 and on eth1 are two hosts (the
    kernel reports the host without its `%scope`), and one must not use up the other's share."""
    if len(addr) >= 4 and addr[3]:
        return f"{addr[0]}%{addr[3]}"
    return addr[0]


def _undeliverable(addr: tuple) -> bool:
    """A request's source no answer can go to: port 0, or the unspecified address."""
    if addr[1] == 0:
        return True
    try:
        ip = ipaddress.ip_address(addr[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_unspecified


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
        self._sock: socket.socket | None = None
        self._pktinfo = False  # the listener learns each request's local address (wildcard bind)
        self._cmsg_space = 0
        self._sessions: dict[tuple, asyncio.Task[None]] = {}
        self._per_source: dict[str, int] = {}  # client address (with its scope id) -> transfers running
        self.refused_per_source = 0
        self.dropped_undeliverable = 0  # requests from port 0 or from 0.0.0.0 / :: (never answered)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the server listens on — the port it was given, or the one the kernel
        picked for port 0. A link-local IPv6 listener's host keeps its interface (`fe80::1%eth0`,
        the kernel reports the scope id apart from the host), so `tftp_get(*server.address, ...)`
        reaches it and a status shows where it really listens."""
        if self._sock is None:
            raise RuntimeError("server not started")
        name = self._sock.getsockname()
        return (_scoped(name[0], name[3]) if len(name) >= 4 else name[0]), name[1]

    @property
    def address_text(self) -> str:
        """`address` as one would type it: `host:port`, an IPv6 host in brackets (`[::1]:69`,
        `[fe80::1%eth0]:69`) — else its last group reads as the port."""
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

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
        """Listen. An address that cannot be listened on (port in use, not of this host, a
        link-local one without its interface) raises TftpSocketError naming it; nothing stays open."""
        self._loop = asyncio.get_running_loop()
        where = f"{self.host} port {self.port}"
        try:
            sock = socket.socket(_family(self.host), socket.SOCK_DGRAM)
        except OSError as exc:
            raise TftpSocketError(f"cannot listen on {where}: {_reason(exc)}", exc.errno) from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * _SOCKET_BUFFER)
            address: tuple = ()
            try:
                address = _sockaddr(self.host, self.port)
                sock.bind(address)
            except (OSError, OverflowError, TypeError, ValueError) as exc:
                raise TftpSocketError(f"cannot listen on {where}: {_reason(exc, address)}",
                                      getattr(exc, "errno", None)) from None
            sock.setblocking(False)
            self._pktinfo = _is_wildcard(self.host) and self._want_pktinfo(sock)
            self._cmsg_space = (socket.CMSG_SPACE(_IN6_PKTINFO.size) + socket.CMSG_SPACE(_IN_PKTINFO.size)
                                if self._pktinfo else 0)
            self._loop.add_reader(sock.fileno(), self._readable)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    @staticmethod
    def _want_pktinfo(sock: socket.socket) -> bool:
        """Ask the kernel for each request's destination address; False where it cannot tell us
        (transfers then bind the wildcard address and the routing table picks the source)."""
        try:
            if sock.family == socket.AF_INET and _IP_PKTINFO is not None:
                sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
                return True
            if sock.family == socket.AF_INET6 and _IPV6_RECVPKTINFO is not None and _IPV6_PKTINFO is not None:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO, 1)
                if _IP_PKTINFO is not None:
                    try:  # dual-stack: an IPv4 request's local address (not its broadcast destination)
                        sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
                    except OSError:
                        pass
                return True
        except OSError as exc:
            log.warning("tftp: cannot learn the local address of requests (%s); transfers leave "
                        "from the address the routing table picks", exc)
        return False

    def _readable(self) -> None:
        # One request per readiness callback, as asyncio's own datagram transport does: running
        # transfers get their turn between requests, so a burst of requests cannot crowd them out.
        sock = self._sock
        if sock is None:
            return
        try:
            data, ancdata, _flags, addr = sock.recvmsg(_REQUEST_BUFFER, self._cmsg_space)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # ICMP errors from earlier replies surface here
            log.debug("tftp listener error: %s", exc)
            return
        local = _local_address(ancdata, sock.family) if self._pktinfo else None
        # The full address: a link-local client's scope id is what routes the answers back to it.
        self._on_request(data, addr, local)

    async def close(self) -> None:
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
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

    def _reply(self, datagram: bytes, addr: tuple, local: tuple[str, int] | None = None) -> None:
        """Send from the listener; with `local`, from the address the request was sent to."""
        sock = self._sock
        if sock is None:
            return
        try:
            if local is None:
                sock.sendto(datagram, addr)
            elif sock.family == socket.AF_INET:
                info = _IN_PKTINFO.pack(0, socket.inet_pton(socket.AF_INET, local[0]), bytes(4))
                sock.sendmsg([datagram], [(socket.IPPROTO_IP, _IP_PKTINFO, info)], 0, addr)
            else:
                info = _IN6_PKTINFO.pack(socket.inet_pton(socket.AF_INET6, local[0]), local[1])
                sock.sendmsg([datagram], [(socket.IPPROTO_IPV6, _IPV6_PKTINFO, info)], 0, addr)
        except OSError as exc:  # a full buffer or an unreachable client: UDP, the client retries
            log.debug("tftp: reply to %s not sent: %s", addr, exc)

    def _on_request(self, data: bytes, addr: tuple, local: tuple[str, int] | None = None) -> None:
        if _undeliverable(addr):
            # No datagram can be delivered to port 0: a transfer would hold a slot (of the server's
            # and of this address's) for the whole retry period, and an error reply goes nowhere.
            # One sent to 0.0.0.0 or :: goes to this host itself, to whatever listens on that port
            # (a DHCP-style broadcast from 0.0.0.0 gets past the kernel's martian check).
            self.dropped_undeliverable += 1
            TFTP_REQUESTS_REFUSED.labels("undeliverable").inc()
            log.debug("tftp: request from %s port %s dropped: no answer can reach it", addr[0], addr[1])
            return
        try:
            packet = parse_packet(data)
        except TftpPacketError as exc:
            self._reply(encode_error(exc.error_code, str(exc)), addr, local)
            return
        if not isinstance(packet, Request):
            return  # stray DATA/ACK/ERROR on the listening port: nothing to answer
        if packet.opcode != OP_RRQ:
            self._reply(encode_error(ERR_ACCESS_VIOLATION, "writes are not allowed"), addr, local)
            return
        if addr in self._sessions:
            return  # the client repeated its RRQ; the running transfer retransmits on its own
        if len(self._sessions) >= self.max_sessions:
            self._reply(encode_error(ERR_NOT_DEFINED, "server busy"), addr, local)
            self._count(packet.filename, "busy")
            return
        source = _source(addr)
        running = self._per_source.get(source, 0)
        if running >= self.max_sessions_per_source:
            self.refused_per_source += 1
            TFTP_REQUESTS_REFUSED.labels("per_source").inc()
            self._reply(encode_error(ERR_NOT_DEFINED, "server busy: too many transfers from "
                                                      "your address"), addr, local)
            self._count(packet.filename, "busy")
            return
        try:
            check_filename(packet.filename)
        except TftpError as exc:
            self._reply(encode_error(exc.code, exc.message), addr, local)
            self._count("", "access_violation")
            return
        task = self._loop.create_task(self._serve(packet, addr, local))  # type: ignore[union-attr]
        self._sessions[addr] = task
        self._per_source[source] = running + 1
        task.add_done_callback(lambda _t, key=addr: self._session_done(key))

    def _session_done(self, addr: tuple) -> None:
        self._sessions.pop(addr, None)
        source = _source(addr)
        left = self._per_source.get(source, 1) - 1
        if left > 0:
            self._per_source[source] = left
        else:
            self._per_source.pop(source, None)

    def _transfer_socket(self, local: tuple[str, int] | None, addr: tuple = ()) -> socket.socket:
        """The TID socket binds the address the request was sent to (RFC 1350: the client drops
        DATA from any other address); a link-local IPv6 address needs its interface too (from
        IPV6_PKTINFO, else the request's own scope id). If that address cannot be bound (removed
        meanwhile), the listener's address as before — its full socket address, scope id included
        (a listener on `fe80::1%eth0` binds its transfers on eth0, not with scope id 0: EINVAL)."""
        sock = self._sock
        family = sock.family if sock is not None else _family(self.host)
        if local is not None:
            try:
                scope = 0
                if ipaddress.ip_address(local[0]).is_link_local:
                    scope = local[1] or (addr[3] if len(addr) == 4 else 0)
                return _udp_socket(family, (local[0], 0, 0, scope) if family == socket.AF_INET6
                                   else (local[0], 0))
            except (OSError, ValueError) as exc:
                log.warning("tftp: cannot bind the request's local address %s: %s", local[0], exc)
        listening = sock.getsockname() if sock is not None else _sockaddr(self.host, 0)
        return _udp_socket(family, (listening[0], 0, *listening[2:4]))

    async def _serve(self, request: Request, addr: tuple, local: tuple[str, int] | None = None) -> None:
        loop = self._loop
        assert loop is not None
        try:
            data = await self.resolve(request.filename, addr)
        except TftpError as exc:
            self._reply(encode_error(exc.code, exc.message), addr, local)
            self.failed += 1
            self._count(request.filename, _ERROR_NAMES.get(exc.code, "error"))
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("tftp resolver failed for %r", request.filename)
            self._reply(encode_error(ERR_NOT_DEFINED, "internal error"), addr, local)
            self.failed += 1
            self._count(request.filename, "internal")
            return
        if data is None:
            self._reply(encode_error(ERR_FILE_NOT_FOUND, "file not found"), addr, local)
            self.failed += 1
            self._count(request.filename, "not_found")
            return
        if request.mode == "netascii" and len(data) > MAX_NETASCII_SIZE:
            self._reply(encode_error(ERR_NOT_DEFINED, f"netascii transfers are limited to {MAX_NETASCII_SIZE} "
                                                      "bytes; ask in octet mode"), addr, local)
            self.failed += 1
            self._count(request.filename, "refused")
            return
        transfer = ReadTransfer(
            data, request, addr,
            max_blksize=self.max_blksize, max_windowsize=self.max_windowsize,
            max_timeout=self.max_timeout, timeout=self.timeout, max_retries=self.retries,
        )
        driver = _Driver(transfer, loop)
        try:
            sock = self._transfer_socket(local, addr)
            try:
                transport, _ = await loop.create_datagram_endpoint(lambda: driver, sock=sock)
            except BaseException:
                sock.close()
                raise
        except OSError as exc:  # out of sockets or ports: tell the phone to come back later
            log.warning("tftp: no transfer socket for %s: %s", addr, exc)
            self._reply(encode_error(ERR_NOT_DEFINED, "server busy"), addr, local)
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

    `host` is an IP address (a link-local one with its interface: `fe80::1%eth0`) or a name
    resolved to one first (the answer's source address is checked against it: a compose service
    name, say) — the whole socket address the resolver gives, so a name that resolves to a
    link-local address (mDNS, nss-myhostname) keeps its interface, and of `bind_host`'s family when
    that is given; the local socket binds to `bind_host`, by default the wildcard address of the
    same family. The socket is closed on every path, a failed set-up included.
    """
    loop = asyncio.get_running_loop()
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 0xFFFF:
        # Checked here: the resolver takes 70000 as 70000 % 65536 (a name was then sent to port
        # 4464), and a numeric host failed only at the first send ("transfer aborted").
        raise TftpError(ERR_NOT_DEFINED, f"bad TFTP server port {str(port)[:32]!r}: a port is 1..65535")
    try:
        ipaddress.ip_address(host)
        server: tuple | None = None
    except ValueError:
        try:
            answers = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except (OSError, UnicodeError) as exc:
            raise TftpError(ERR_NOT_DEFINED, f"cannot resolve {host!r}: {exc}") from None
        if bind_host is not None:  # an address the socket bound to bind_host can send to
            answers = [answer for answer in answers if answer[0] == _family(bind_host)]
        if not answers:
            raise TftpError(ERR_NOT_DEFINED, f"cannot resolve {host!r}: no address of the family "
                                             f"of {bind_host!r}" if bind_host else f"cannot resolve {host!r}")
        # The resolver's socket address whole: (host, port, flowinfo, scope_id) for IPv6. Its host
        # alone, given back to _sockaddr, lost the scope id of a link-local answer (sent with
        # scope 0: by whichever interface routes fe80::/64).
        server = answers[0][4]
        host = server[0]
    if bind_host is None:
        bind_host = "::" if ":" in host else "0.0.0.0"
    try:
        server = server or _sockaddr(host, port)
        bind = _sockaddr(bind_host, 0)
    except (OSError, UnicodeError) as exc:
        raise TftpError(ERR_NOT_DEFINED, f"bad address {host!r} / {bind_host!r}: {exc}") from None
    client = ReadClient(
        filename, server, mode=mode, blksize=blksize, windowsize=windowsize, tsize=tsize,
        timeout=timeout, max_retries=retries, max_size=max_size,
    )
    driver = _Driver(client, loop)
    sock = _udp_socket(_family(host), bind)  # closes itself if its own bind fails: TftpSocketError
    try:
        transport, _ = await loop.create_datagram_endpoint(lambda: driver, sock=sock)
    except BaseException:
        sock.close()  # the endpoint never took it: nobody else will close it
        raise
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

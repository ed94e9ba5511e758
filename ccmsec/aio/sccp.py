"""Asyncio adapters for SCCP: a call-control server loop and a phone-side connection.

All protocol decisions live in `ccmsec.wire.sccp`; this module moves bytes, runs timers and
guards resources:

* TLS handshakes are bounded by `handshake_timeout` (asyncio runs each handshake on its own, so
  a client that stalls mid-handshake blocks nobody else);
* an unregistered connection must send Register within `register_timeout`; a registered one is
  dropped after two silent keepalive intervals; so is a phone's standby connection (one that
  sends KeepAlive before any Register, LATER-7: answered with KeepAliveAck, registered over later
  when the phone fails over; at most `max_standby_per_source` per address). Anything else
  before Register does not buy time;
* each connection may send at most `max_messages_per_second` (token bucket) and buffers at most
  one frame — beyond that it is closed;
* one address may hold at most `max_pending_per_source` connections that have not registered yet
  (TLS handshake and Register included; counted from accept, before any handshake work), so a
  single source cannot fill the listener while others wait. Registered connections do not
  count: a phone simulator or a NAT may carry thousands of real phones from one address;
* the server side is an `asyncio.Protocol` (`ServerConnection`, `__slots__`) calling the
  session from its callbacks, with one lazy deadline: no stream pair, task, coroutine frame or
  loop timer per phone, because call control holds thousands of idle connections (memory per
  phone, issue 6/15). The server keeps every connection's deadline in one `DeadlineWheel` run by
  a single loop timer (deadlines rounded up to `timer_resolution`, 0.1 s: never early).
  The phone side uses streams and a task (one connection per phone process).

    async def decide(request): return RegistrationDecision.accept()
    server = SccpServer(decide, host="127.0.0.1", port=0, ssl_context=ctx)
    await server.start()
    phone = await connect_phone("127.0.0.1", server.port, Register("SEP001122334455"), ssl_context=pctx)
    ack = await phone.wait_registered()
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import ssl
import struct
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from cryptography import x509

from ccmsec.aio.deadlines import DeadlineWheel
from ccmsec.domain import DeviceSecurityMode
from ccmsec.pki.tls import (
    SccpTransportMode,
    TransportModeMismatch,
    check_transport_for_mode,
    peer_certificate,
    peer_is_one_of,
    transport_mode_of_cipher,
)
from ccmsec.wire.sccp import (
    MAX_BUFFER,
    CapabilitiesRes,
    DeviceRegistered,
    DeviceUnregistered,
    KeepAliveTimeout,
    Message,
    PhoneState,
    Register,
    RegisterAccepted,
    RegisterAck,
    RegisterRejected,
    RegistrationDecision,
    RegistrationRequest,
    RegistrationRequested,
    ResetType,
    SccpPhoneSession,
    SccpProtocolError,
    SccpServerSession,
    ServerState,
    StandbyHeld,
    UnregisterAcked,
)

__all__ = [
    "SccpServer", "SccpPhoneConnection", "connect_phone", "ConnectionDropped", "ConnectionClosed",
    "SccpRegistrationRejected", "SccpConnectError", "Decider", "require_transport_matching_mode",
]

log = logging.getLogger(__name__)

READ_SIZE = 4096
# StreamReader buffer: one frame at most; keeps memory per connection small.
STREAM_LIMIT = MAX_BUFFER

Decider = Callable[[RegistrationRequest],
                   RegistrationDecision | Awaitable[RegistrationDecision]]
EventSink = Callable[["ServerConnection", object], None]


@dataclass(frozen=True)
class ConnectionClosed:
    """Emitted once per connection when it is gone, whatever the reason (after any
    ConnectionDropped); `device_name` is the name it registered or tried to, if any."""

    device_name: str | None


@dataclass(frozen=True)
class ConnectionDropped:
    """The adapter closed a connection for a resource or protocol reason."""

    device_name: str | None
    reason: str


class SccpRegistrationRejected(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(f"registration rejected: {text}")
        self.text = text


class SccpConnectError(Exception):
    """Could not reach or trust call control."""


def require_transport_matching_mode(device_mode_of: Callable[[str], DeviceSecurityMode | str | None],
                                    then: Decider | None = None) -> Decider:
    """A decider that refuses devices whose connection does not match their configured mode.

    `device_mode_of(name)` returns the device's `DeviceSecurityMode` (or its text), or None for an
    unknown device (refused). `then` decides the rest when the transport is right.
    """

    async def decide(request: RegistrationRequest) -> RegistrationDecision:
        mode = device_mode_of(request.device_name)
        if mode is None:
            return RegistrationDecision.reject("unknown device")
        try:
            transport = (transport_mode_of_cipher(request.tls_cipher) if request.secure
                         and request.tls_cipher else SccpTransportMode.NON_SECURE)
            check_transport_for_mode(mode, transport)
        except TransportModeMismatch as exc:
            return RegistrationDecision.reject(str(exc))
        if then is None:
            return RegistrationDecision.accept()
        result = then(request)
        return await result if inspect.isawaitable(result) else result  # type: ignore[return-value]

    return decide


def _source_of(conn) -> str:
    peer = conn.transport.get_extra_info("peername") if conn.transport is not None else None
    return sys.intern(peer[0]) if peer else "?"


def _intern_peer(peer) -> tuple | None:
    # One shared str per address and per cipher name instead of one copy per phone.
    return (sys.intern(peer[0]), peer[1]) if peer else None


class ServerConnection(asyncio.Protocol):
    """One SCCP connection on the server side: asyncio protocol callbacks drive the sans-IO
    session directly.

    No stream pair, no task and no coroutine frame per phone: a held connection is this object,
    its session (with framer) and an entry in the server's deadline wheel. The token bucket lives in two slots here, and
    its time stamp doubles as "last heard" for the keepalive timeout (both are updated by every
    received chunk); the Register deadline counts from the connection, whatever arrives. The parsed peer certificate is dropped once Register is decided, and the transport's
    "peercert" extra (the loop's parsed copy) is emptied at connection_made — read the
    certificate from `ssl_object.getpeercert(binary_form=True)`.
    """

    __slots__ = ("_server", "session", "transport", "_tokens", "_heard", "_tick", "_deciding",
                 "_backlog", "_lost", "_write_paused", "_drain_waiter", "_done", "_pending_source",
                 "_standby_source")

    def __init__(self, server: "SccpServer") -> None:
        self._server = server
        self.session: SccpServerSession | None = None
        self.transport: asyncio.Transport | None = None
        self._tokens = server.max_messages_per_second
        self._heard = 0.0
        self._tick: int | None = None    # our key in the server's deadline wheel
        self._deciding = False           # a Register is with the (async) decider
        self._backlog: bytearray | None = None  # bytes that arrived meanwhile (bounded)
        self._lost: str | None = None    # why the transport went away during a decision
        self._write_paused = False
        self._drain_waiter: asyncio.Future | None = None
        self._done = False
        self._pending_source: str | None = None  # holds a per-source slot until registered
        self._standby_source: str | None = None  # holds a per-source standby slot (LATER-7)

    @property
    def device_name(self) -> str | None:
        return self.session.device_name if self.session is not None else None

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        return self.transport.get_extra_info("ssl_object") if self.transport else None

    # asyncio protocol callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._server
        self.transport = transport  # type: ignore[assignment]
        if len(server._connections) >= server.max_connections:
            self._done = True
            server._release_source(self)  # a slot taken at accept (TLS)
            transport.close()
            return
        if self._pending_source is None:  # plain TCP: admitted here, at accept
            peer = transport.get_extra_info("peername")
            source = sys.intern(peer[0]) if peer else "?"
            if not server._hold_source(source):
                self._done = True
                transport.abort()
                return
            self._pending_source = source
        loop = server._loop
        ssl_object = transport.get_extra_info("ssl_object")
        # The loop keeps the parsed peer certificate (a dict of nested tuples, ~2 kB) as the
        # transport's "peercert" extra for the connection's whole life. Nothing reads it: the
        # decision parses the DER from the ssl object. Emptied, as memory per phone (issue 15).
        peercert = transport.get_extra_info("peercert")
        if isinstance(peercert, dict):
            peercert.clear()
        cipher = ssl_object.cipher() if ssl_object is not None else None
        now = self._heard = loop.time()
        self.session = SccpServerSession(
            None, peer_address=_intern_peer(transport.get_extra_info("peername")),
            peer_certificate=peer_certificate(ssl_object), secure=ssl_object is not None,
            tls_cipher=sys.intern(cipher[0]) if cipher else None,
            keepalive_interval=server.keepalive_interval, now=now,
        )
        server._connections.add(self)
        server._set_deadline(self, now + server.register_timeout)

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        if self._deciding:  # keep the order: these bytes are handled after the decision
            backlog = self._backlog if self._backlog is not None else bytearray()
            if len(backlog) + len(data) > MAX_BUFFER:
                self._finish(f"protocol: receive buffer would exceed {MAX_BUFFER} bytes "
                             "while Register is decided")
                return
            backlog += data
            self._backlog = backlog
            return
        self._receive(data)

    def eof_received(self) -> bool | None:
        return None  # the phone hung up: close our side too (connection_lost follows)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"transport: {exc}" if exc is not None else None
        if self._deciding and not self._done:
            self._lost = reason or ""  # finished once the decider has answered
            return
        self._finish(reason)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # operations ---------------------------------------------------------------------------------

    def flush(self) -> None:
        data = self.session.data_to_send() if self.session is not None else b""
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        if self._done:
            raise ConnectionResetError("connection closed")
        if not self._write_paused:
            return
        if self._drain_waiter is None:
            self._drain_waiter = self._server._loop.create_future()
        await self._drain_waiter

    def close(self) -> None:
        self._finish(None)

    # internals ----------------------------------------------------------------------------------

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._deciding or self._write_paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _timeout(self) -> float:
        server = self._server
        if self.session is not None and (self.session.state is ServerState.REGISTERED
                                         or self.session.standby):
            return server.keepalive_interval * 2 + 5
        return server.register_timeout

    def _on_timer(self) -> None:
        # Lazy deadline: data does not move it; when it is due (the server's deadline wheel) it
        # checks how long the phone has been silent and either drops the connection or files
        # the new deadline.
        self._tick = None
        if self._done:
            return
        now = self._server._loop.time()
        if self._deciding:  # no timeout while the decider works (as before: no read pending)
            deadline = now + self._timeout()
        elif self.session.state is ServerState.REGISTERED or self.session.standby:
            # A standby connection lives by its KeepAlives, like a registered one (LATER-7).
            deadline = self._heard + self._timeout()
        else:
            # Unregistered: this is the first firing, set at connection_made + register_timeout.
            # Other messages do not buy time, or chatter could hold a connection slot forever.
            deadline = now
        if now < deadline:
            self._server._set_deadline(self, deadline)
            return
        registered = self.session.state is ServerState.REGISTERED or self.session.standby
        self._finish("keepalive timeout" if registered else "no Register in time")

    def _take(self, count: int, now: float) -> bool:
        """Token bucket: `max_messages_per_second` tokens, refilled continuously."""
        rate = self._server.max_messages_per_second
        self._tokens = min(rate, self._tokens + (now - self._heard) * rate) - count
        self._heard = now
        return self._tokens >= 0

    def _receive(self, data: bytes) -> None:
        session = self.session
        now = self._server._loop.time()
        before = session.messages_received
        try:
            events = session.receive_data(data, now)
        except SccpProtocolError as exc:
            self._finish(f"protocol: {exc}")
            return
        if not self._take(session.messages_received - before, now):
            self._finish("message flood")
            return
        self._handle_events(events, 0)

    def _handle_events(self, events: list[object], start: int) -> None:
        server = self._server
        for index in range(start, len(events)):
            event = events[index]
            if isinstance(event, RegistrationRequested):
                try:
                    result = server._decide(event.request)
                except Exception as exc:  # a failing decider refuses, it never accepts
                    log.exception("SCCP registration decider failed")
                    result = RegistrationDecision.reject(f"internal error: {type(exc).__name__}")
                if inspect.isawaitable(result):
                    self._deciding = True
                    self._update_reading()
                    server._spawn(self._decide_later(result, events, index + 1))
                    return
                self._apply(result)  # type: ignore[arg-type]
            else:
                server._on_session_event(self, event)
        self.flush()
        if self.session.state is ServerState.CLOSED:
            self._finish(None)  # refused or unregistered: the conversation is over

    def _apply(self, decision: RegistrationDecision) -> None:
        session = self.session
        follows = (session.accept() if decision.accepted
                   else session.reject(decision.reason))
        for follow in follows:
            self._server._on_session_event(self, follow)
        session.peer_certificate = None  # decided; keep no parsed certificate per phone

    async def _decide_later(self, pending: Awaitable[RegistrationDecision],
                            events: list[object], next_index: int) -> None:
        try:
            decision = await pending
        except asyncio.CancelledError:
            self._deciding = False
            self._finish(None)
            raise
        except Exception as exc:
            log.exception("SCCP registration decider failed")
            decision = RegistrationDecision.reject(f"internal error: {type(exc).__name__}")
        self._deciding = False
        if self._done:
            return
        if self._lost is not None:  # the phone went away while we decided
            self._finish(self._lost or None)
            return
        self._apply(decision)
        self._heard = self._server._loop.time()  # the timeout counts from here, as a new read
        self._handle_events(events, next_index)
        if self._done:
            return
        self._update_reading()
        backlog, self._backlog = self._backlog, None
        if backlog:
            self._receive(bytes(backlog))

    def _finish(self, dropped: str | None) -> None:
        """End of the connection, exactly once: ConnectionDropped (if a reason), bookkeeping,
        close, ConnectionClosed."""
        if self._done:
            return
        self._done = True
        server = self._server
        if self._tick is not None:
            server._deadlines.discard(self, self._tick)
            self._tick = None
        self._backlog = None
        server._release_source(self)
        server._release_standby(self)
        name = self.device_name
        if dropped is not None:
            server._emit(self, ConnectionDropped(name, dropped))
        server._connections.discard(self)
        if name is not None and server.registered.get(name) is self:
            del server.registered[name]
        if self.session is not None:
            self.session.close()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("connection closed"))
            waiter.exception()  # retrieved: nobody may be waiting any more
        server._emit(self, ConnectionClosed(name))


class SccpServer:
    """Call control's SCCP listener (plain TCP 2000 or TLS 2443)."""

    def __init__(self, decide: Decider, *, host: str = "127.0.0.1", port: int = 2000,
                 ssl_context: ssl.SSLContext | None = None, keepalive_interval: int = 30,
                 handshake_timeout: float = 10.0, register_timeout: float = 10.0,
                 max_messages_per_second: float = 50.0, max_connections: int = 10_000,
                 max_pending_per_source: int = 128, max_standby_per_source: int = 2048,
                 on_event: EventSink | None = None, backlog: int = 1024,
                 timer_resolution: float = 0.1) -> None:
        self._decide = decide
        self.host = host
        self._port = port
        self.ssl_context = ssl_context
        self.keepalive_interval = keepalive_interval
        self.handshake_timeout = handshake_timeout
        self.register_timeout = register_timeout
        self.max_messages_per_second = max_messages_per_second
        self.max_connections = max_connections
        self.max_pending_per_source = max_pending_per_source
        self._pending: dict[str, int] = {}  # source address -> connections not registered yet
        self.refused_per_source = 0
        self.handshake_failures = 0
        self.standby_total = 0   # connections that became a phone's standby (LATER-7)
        self._standby: dict[str, int] = {}  # source address -> standby connections held
        self.max_standby_per_source = max_standby_per_source
        self._on_event = on_event
        self.backlog = backlog  # a registration storm must not overflow the listen queue
        self._server: asyncio.base_events.Server | None = None   # plain TCP
        self._sock: socket.socket | None = None                   # TLS: our listening socket
        self._accept_task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: set[ServerConnection] = set()
        self._tasks: set[asyncio.Task] = set()  # async decisions in flight
        self.registered: dict[str, ServerConnection] = {}
        # Every connection's deadline, one loop timer for all (a handle per phone was ~0.5 kB).
        self._deadlines = DeadlineWheel(timer_resolution)
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_at: float | None = None

    @property
    def port(self) -> int:
        if self._sock is not None:
            return self._sock.getsockname()[1]
        if self._server is None:
            return self._port
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.ssl_context is None:
            self._server = await self._loop.create_server(lambda: ServerConnection(self), self.host,
                                                          self._port, backlog=self.backlog)
            return
        # TLS: our own accept loop judges the source before any handshake work, then the loop
        # runs TLS on the accepted socket from its first byte (`connect_accepted_socket`). A
        # protocol that hands its transport to start_tls later can lose the ClientHello (uvloop
        # starts reading right after connection_made), which stalled handshakes for 10 s.
        family, kind, proto, _, address = socket.getaddrinfo(
            self.host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(self.backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._accept_task = self._loop.create_task(self._accept_loop(), name="sccp tls accept")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
            self._accept_task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self._connections):
            conn.close()
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = self._deadline_at = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept_loop(self) -> None:
        loop = self._loop
        while True:
            try:
                sock, peer = await loop.sock_accept(self._sock)
            except OSError as exc:  # e.g. EMFILE: back off rather than spin
                log.error("SCCP: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            source = sys.intern(str(peer[0])) if peer else "?"
            if len(self._connections) >= self.max_connections or not self._hold_source(source):
                with contextlib.suppress(OSError):  # reset at once: the refusal costs no handshake
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
                continue
            self._spawn(self._tls_handshake(sock, source))

    async def _tls_handshake(self, sock: socket.socket, source: str) -> None:
        """TLS within `handshake_timeout`; the `ServerConnection` gets the transport (and the
        source slot) once it is done. A stalled or bad handshake keeps nobody else waiting."""
        conn = ServerConnection(self)
        conn._pending_source = source
        try:
            sock.setblocking(False)
            await self._loop.connect_accepted_socket(
                lambda: conn, sock, ssl=self.ssl_context, ssl_handshake_timeout=self.handshake_timeout)
        except asyncio.CancelledError:
            self._release_source(conn)
            sock.close()
            raise
        except Exception as exc:  # bad handshake, timeout, peer gone
            self._release_source(conn)
            sock.close()
            self.handshake_failures += 1
            if self.handshake_failures <= 20 or self.handshake_failures % 1000 == 0:
                log.info("SCCP: TLS handshake from %s failed: %r", source, exc,
                         extra={"handshake_failures": self.handshake_failures})

    async def __aenter__(self) -> "SccpServer":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # call-control operations -----------------------------------------------------------------

    async def send_to(self, device_name: str, message: Message) -> bool:
        conn = self.registered.get(device_name)
        if conn is None:
            return False
        conn.session.send(message)
        conn.flush()
        await conn.drain()
        return True

    async def reset_device(self, device_name: str,
                           reset_type: ResetType = ResetType.RESET) -> bool:
        """Deliver a Reset to a registered device (RST-*); False if it is not registered here."""
        conn = self.registered.get(device_name)
        if conn is None:
            return False
        conn.session.send_reset(reset_type)
        conn.flush()
        await conn.drain()
        return True

    async def reset_all(self, reset_type: ResetType = ResetType.RESET) -> int:
        """RST-9: reset every device registered to this server."""
        count = 0
        for name in list(self.registered):
            count += await self.reset_device(name, reset_type)
        return count

    # connection plumbing ----------------------------------------------------------------------

    def _hold_source(self, source: str) -> bool:
        """Take one "not registered yet" slot of `source`; False when it has none left."""
        held = self._pending.get(source, 0)
        if held >= self.max_pending_per_source:
            self.refused_per_source += 1
            if self.refused_per_source in (1, 100) or self.refused_per_source % 10_000 == 0:
                log.warning("SCCP: %s holds %d connections that have not registered; refusing "
                            "more from it", source, held, extra={"refused": self.refused_per_source})
            return False
        self._pending[source] = held + 1
        return True

    def _release_standby(self, conn: "ServerConnection") -> None:
        source, conn._standby_source = conn._standby_source, None
        if source is None:
            return
        left = self._standby.get(source, 1) - 1
        if left > 0:
            self._standby[source] = left
        else:
            self._standby.pop(source, None)

    def _release_source(self, conn: "ServerConnection") -> None:
        source, conn._pending_source = conn._pending_source, None
        if source is None:
            return
        left = self._pending.get(source, 1) - 1
        if left > 0:
            self._pending[source] = left
        else:
            self._pending.pop(source, None)

    def _emit(self, conn: ServerConnection, event: object) -> None:
        if self._on_event is not None:
            try:
                self._on_event(conn, event)
            except Exception:  # a faulty listener must not kill the connection
                log.exception("SCCP event listener failed")

    def _spawn(self, coro) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _set_deadline(self, conn: ServerConnection, when: float) -> None:
        if conn._tick is not None:
            self._deadlines.discard(conn, conn._tick)
        conn._tick = self._deadlines.add(conn, when)
        self._arm_deadlines()

    def _arm_deadlines(self) -> None:
        # One loop timer, at the wheel's earliest bucket; moved only when an earlier one appears.
        when = self._deadlines.next_time()
        if when is None or (self._deadline_at is not None and self._deadline_at <= when):
            return
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_at = when
        self._deadline_timer = self._loop.call_at(when, self._on_deadlines)

    def _on_deadlines(self) -> None:
        self._deadline_timer = self._deadline_at = None
        try:
            for conn in self._deadlines.pop_due(self._loop.time()):
                try:
                    conn._on_timer()   # drops the connection or files its next deadline
                except Exception:  # one connection's failure must not stop everyone's deadlines
                    log.exception("SCCP: connection deadline failed")
        finally:
            self._arm_deadlines()

    def _on_session_event(self, conn: ServerConnection, event: object) -> None:
        if isinstance(event, StandbyHeld):
            # A phone's standby connection: kept alive by KeepAlives like a registered one. It
            # leaves the "not registered yet" count of its address for a standby count of its own,
            # bounded per address (`max_standby_per_source`): a fleet behind one address holds
            # one each, while one source cannot fill the server with idle standbys.
            source = conn._pending_source
            self._release_source(conn)
            source = source or _source_of(conn)
            held = self._standby.get(source, 0)
            if held >= self.max_standby_per_source:
                self.refused_per_source += 1
                conn.close()
                return
            self._standby[source] = held + 1
            conn._standby_source = source
            self.standby_total += 1
        if isinstance(event, DeviceRegistered):
            self._release_source(conn)  # registered: no longer counts against its address
            old = self.registered.get(event.device_name)
            if old is not None and old is not conn:
                old.close()  # a device re-registering replaces its stale connection
            self.registered[event.device_name] = conn
        elif isinstance(event, DeviceUnregistered):
            if self.registered.get(event.device_name) is conn:
                del self.registered[event.device_name]
        if isinstance(event, DeviceRegistered):
            self._release_standby(conn)   # a standby that registered counts as registered now
        self._emit(conn, event)


# -- phone side -------------------------------------------------------------------------------------

class SccpPhoneConnection:
    """A phone's live connection to call control. Events land in `events` (bounded)."""

    MAX_EVENTS = 256

    def __init__(self, session: SccpPhoneSession, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.session = session
        self._reader = reader
        self._writer = writer
        self.events: asyncio.Queue[object] = asyncio.Queue(self.MAX_EVENTS)
        # Called with every event as it happens (before the bounded queue, which may drop):
        # the phone's display machine listens here so no call message is ever lost.
        self.listener: Callable[[object], None] | None = None
        self._registered: asyncio.Future[RegisterAck] = asyncio.get_running_loop().create_future()
        # Waiters see the outcome through a shield; one that gave up (its timeout) must not leave
        # "Future exception was never retrieved" behind when the connection ends later.
        self._registered.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._closed = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        return self._writer.get_extra_info("ssl_object")

    @property
    def peer_host(self) -> str | None:
        """The address of the server this connection reached (a host name resolved)."""
        peername = self._writer.get_extra_info("peername")
        return peername[0] if peername else None

    @property
    def local_host(self) -> str | None:
        """The address this phone's connection to call control goes out from."""
        sockname = self._writer.get_extra_info("sockname")
        return sockname[0] if sockname else None

    def _push(self, event: object) -> None:
        if self.events.full():
            self.events.get_nowait()  # drop the oldest; the newest matters more
        self.events.put_nowait(event)

    def _flush(self) -> None:
        data = self.session.data_to_send()
        if data and not self._writer.is_closing():
            self._writer.write(data)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.session.start()
            self._flush()
            while self.session.state not in (PhoneState.CLOSED, PhoneState.REJECTED):
                timeout = None
                if self.session.state is PhoneState.REGISTERED:
                    timeout = max(0.0, self.session.next_keepalive - loop.time())
                try:
                    data = await asyncio.wait_for(self._reader.read(READ_SIZE), timeout)
                except asyncio.TimeoutError:
                    data = None
                if data == b"":
                    self._on_event(ConnectionDropped(self.session.register.device_name,
                                                     "call control closed the connection"))
                    break
                events = self.session.receive_data(data, loop.time()) if data else []
                events += self.session.tick(loop.time())
                for event in events:
                    self._on_event(event)
                self._flush()
                await self._writer.drain()
        except (OSError, SccpProtocolError) as exc:
            # Any socket error (EHOSTUNREACH, ENETUNREACH… are no ConnectionError) is a dropped
            # connection with its reason, never an exception left in the task for close to raise.
            self._on_event(ConnectionDropped(self.session.register.device_name, f"{exc}"))
        finally:
            if not self._registered.done():
                self._registered.set_exception(SccpConnectError("connection closed before registration"))
            self._closed.set()
            if self.listener is not None:
                try:
                    self.listener(ConnectionClosed(self.session.register.device_name))
                except Exception:
                    log.exception("SCCP phone event listener failed")
            if not self._writer.is_closing():
                self._writer.close()

    def _on_event(self, event: object) -> None:
        if self.listener is not None:
            try:
                self.listener(event)
            except Exception:  # a faulty listener must not take the connection down
                log.exception("SCCP phone event listener failed")
        if isinstance(event, RegisterAccepted) and not self._registered.done():
            self._registered.set_result(event.ack)
        elif isinstance(event, RegisterRejected) and not self._registered.done():
            self._registered.set_exception(SccpRegistrationRejected(event.text))
        elif isinstance(event, KeepAliveTimeout):
            pass
        self._push(event)

    async def wait_registered(self, timeout: float = 10.0) -> RegisterAck:
        return await asyncio.wait_for(asyncio.shield(self._registered), timeout)

    async def next_event(self, kind: type | tuple[type, ...] = object,
                         timeout: float = 10.0) -> object:
        """The next event of `kind`, skipping others (bounded by `timeout`)."""
        async def wait() -> object:
            while True:
                event = await self.events.get()
                if isinstance(event, kind):
                    return event
        return await asyncio.wait_for(wait(), timeout)

    async def send(self, message: Message) -> None:
        self.session.send(message)
        self._flush()
        await self._writer.drain()

    def write(self, messages: Sequence[Message]) -> None:
        """Queue and write at once (no drain): for callers on the event loop's callbacks."""
        for message in messages:
            self.session.send(message)
        self._flush()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def unregister(self, timeout: float = 5.0) -> UnregisterAcked:
        self.session.unregister()
        self._flush()
        await self._writer.drain()
        event = await self.next_event(UnregisterAcked, timeout)
        return event  # type: ignore[return-value]

    async def wait_closed(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._closed.wait(), timeout)

    async def close(self, timeout: float = 5.0) -> None:
        # Close the transport first: a read pending on it ends even if the task's cancellation
        # is held up (asyncio.wait_for in 3.11 can wait on a read that a cancel did not reach).
        if not self._writer.is_closing():
            self._writer.close()
        self._task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except asyncio.TimeoutError:
            pass
        except asyncio.CancelledError:
            if not self._task.done():
                raise  # our caller is being cancelled, not just the connection's task
        try:
            await asyncio.wait_for(self._writer.wait_closed(), timeout)
        except (ConnectionError, ssl.SSLError, asyncio.TimeoutError):
            pass


async def connect_phone(host: str, port: int, register: Register, *,
                        ssl_context: ssl.SSLContext | None = None,
                        capabilities: CapabilitiesRes | None = None,
                        pinned_ccm_certificates: Sequence[x509.Certificate] | None = None,
                        timeout: float = 10.0) -> SccpPhoneConnection:
    """Open TCP (or TLS) to call control and start registering.

    With `pinned_ccm_certificates` the server certificate must be one of them (the CTL's
    CallManager entries); otherwise the connection is closed and SccpConnectError raised.
    """
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ssl_context, limit=STREAM_LIMIT,
                                    server_hostname="" if ssl_context else None),
            timeout,
        )
    except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
        raise SccpConnectError(f"cannot connect to call control {host}:{port}: {exc}") from exc
    ssl_object = writer.get_extra_info("ssl_object")
    if pinned_ccm_certificates is not None:
        if ssl_object is None or not peer_is_one_of(ssl_object, pinned_ccm_certificates):
            writer.close()
            raise SccpConnectError("call control certificate is not a CallManager entry of the CTL")
    return SccpPhoneConnection(SccpPhoneSession(register, capabilities), reader, writer)

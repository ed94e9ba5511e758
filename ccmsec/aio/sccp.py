"""Asyncio adapters for SCCP: a call-control server loop and a phone-side connection.

All protocol decisions live in `ccmsec.wire.sccp`; this module moves bytes, runs timers and
guards resources:

* TLS handshakes are bounded by `handshake_timeout` (asyncio runs each handshake on its own, so
  a client that stalls mid-handshake blocks nobody else);
* an unregistered connection must send Register within `register_timeout`; a registered one is
  dropped after two silent keepalive intervals;
* each connection may send at most `max_messages_per_second` (token bucket) and buffers at most
  one frame — beyond that it is closed;
* per-connection state is a session object with `__slots__` plus the stream pair.

    async def decide(request): return RegistrationDecision.accept()
    server = SccpServer(decide, host="127.0.0.1", port=0, ssl_context=ctx)
    await server.start()
    phone = await connect_phone("127.0.0.1", server.port, Register("SEP001122334455"), ssl_context=pctx)
    ack = await phone.wait_registered()
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from cryptography import x509

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


def require_transport_matching_mode(device_mode_of: Callable[[str], str | None],
                                    then: Decider | None = None) -> Decider:
    """A decider that refuses devices whose connection does not match their configured mode.

    `device_mode_of(name)` returns "non-secure" / "authenticated" / "encrypted", or None for an
    unknown device (refused). `then` decides the rest when the transport is right.
    """

    async def decide(request: RegistrationRequest) -> RegistrationDecision:
        mode = device_mode_of(request.device_name)
        if mode is None:
            return RegistrationDecision.reject("unknown device")
        transport = (transport_mode_of_cipher(request.tls_cipher) if request.secure
                     and request.tls_cipher else SccpTransportMode.PLAIN)
        try:
            check_transport_for_mode(mode, transport)
        except TransportModeMismatch as exc:
            return RegistrationDecision.reject(str(exc))
        if then is None:
            return RegistrationDecision.accept()
        result = then(request)
        return await result if inspect.isawaitable(result) else result  # type: ignore[return-value]

    return decide


class _TokenBucket:
    __slots__ = ("rate", "tokens", "stamp")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.stamp = now

    def take(self, count: int, now: float) -> bool:
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= count
        return self.tokens >= 0


class ServerConnection:
    __slots__ = ("session", "writer", "bucket")

    def __init__(self, session: SccpServerSession, writer: asyncio.StreamWriter,
                 bucket: _TokenBucket) -> None:
        self.session = session
        self.writer = writer
        self.bucket = bucket

    @property
    def device_name(self) -> str | None:
        return self.session.device_name

    def flush(self) -> None:
        data = self.session.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def close(self) -> None:
        self.session.close()
        if not self.writer.is_closing():
            self.writer.close()


class SccpServer:
    """Call control's SCCP listener (plain TCP 2000 or TLS 2443)."""

    def __init__(self, decide: Decider, *, host: str = "127.0.0.1", port: int = 2000,
                 ssl_context: ssl.SSLContext | None = None, keepalive_interval: int = 30,
                 handshake_timeout: float = 10.0, register_timeout: float = 10.0,
                 max_messages_per_second: float = 50.0, max_connections: int = 10_000,
                 on_event: EventSink | None = None, backlog: int = 1024) -> None:
        self._decide = decide
        self.host = host
        self._port = port
        self.ssl_context = ssl_context
        self.keepalive_interval = keepalive_interval
        self.handshake_timeout = handshake_timeout
        self.register_timeout = register_timeout
        self.max_messages_per_second = max_messages_per_second
        self.max_connections = max_connections
        self._on_event = on_event
        self.backlog = backlog  # a registration storm must not overflow the listen queue
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[ServerConnection] = set()
        self.registered: dict[str, ServerConnection] = {}

    @property
    def port(self) -> int:
        if self._server is None:
            return self._port
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.host, self._port, ssl=self.ssl_context,
            ssl_handshake_timeout=self.handshake_timeout if self.ssl_context else None,
            limit=STREAM_LIMIT, backlog=self.backlog,
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

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
        await conn.writer.drain()
        return True

    async def reset_device(self, device_name: str,
                           reset_type: ResetType = ResetType.RESET) -> bool:
        """Deliver a Reset to a registered device (RST-*); False if it is not registered here."""
        conn = self.registered.get(device_name)
        if conn is None:
            return False
        conn.session.send_reset(reset_type)
        conn.flush()
        await conn.writer.drain()
        return True

    async def reset_all(self, reset_type: ResetType = ResetType.RESET) -> int:
        """RST-9: reset every device registered to this server."""
        count = 0
        for name in list(self.registered):
            count += await self.reset_device(name, reset_type)
        return count

    # connection loop --------------------------------------------------------------------------

    def _emit(self, conn: ServerConnection, event: object) -> None:
        if self._on_event is not None:
            try:
                self._on_event(conn, event)
            except Exception:  # a faulty listener must not kill the connection loop
                log.exception("SCCP event listener failed")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        if len(self._connections) >= self.max_connections:
            writer.close()
            return
        ssl_object = writer.get_extra_info("ssl_object")
        peer = writer.get_extra_info("peername")
        cipher = ssl_object.cipher() if ssl_object is not None else None
        session = SccpServerSession(
            None, peer_address=tuple(peer[:2]) if peer else None,
            peer_certificate=peer_certificate(ssl_object), secure=ssl_object is not None,
            tls_cipher=cipher[0] if cipher else None,
            keepalive_interval=self.keepalive_interval, now=loop.time(),
        )
        conn = ServerConnection(session, writer, _TokenBucket(self.max_messages_per_second,
                                                              loop.time()))
        self._connections.add(conn)
        try:
            await self._serve(conn, reader)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            self._emit(conn, ConnectionDropped(session.device_name, f"transport: {exc}"))
        finally:
            self._connections.discard(conn)
            name = session.device_name
            if name is not None and self.registered.get(name) is conn:
                del self.registered[name]
            conn.close()
            self._emit(conn, ConnectionClosed(name))

    async def _serve(self, conn: ServerConnection, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        session = conn.session
        while session.state is not ServerState.CLOSED:
            timeout = (self.register_timeout if session.state is not ServerState.REGISTERED
                       else self.keepalive_interval * 2 + 5)
            try:
                data = await asyncio.wait_for(reader.read(READ_SIZE), timeout)
            except asyncio.TimeoutError:
                reason = ("no Register in time" if session.state is not ServerState.REGISTERED
                          else "keepalive timeout")
                self._emit(conn, ConnectionDropped(session.device_name, reason))
                return
            if not data:
                return
            before = session.messages_received
            try:
                events = session.receive_data(data, loop.time())
            except SccpProtocolError as exc:
                self._emit(conn, ConnectionDropped(session.device_name, f"protocol: {exc}"))
                return
            if not conn.bucket.take(session.messages_received - before, loop.time()):
                self._emit(conn, ConnectionDropped(session.device_name, "message flood"))
                return
            for event in events:
                await self._on_session_event(conn, event)
            conn.flush()
            await conn.writer.drain()

    async def _on_session_event(self, conn: ServerConnection, event: object) -> None:
        session = conn.session
        if isinstance(event, RegistrationRequested):
            try:
                result = self._decide(event.request)
                decision = await result if inspect.isawaitable(result) else result
            except Exception as exc:  # a failing decider refuses, it never accepts
                log.exception("SCCP registration decider failed")
                decision = RegistrationDecision.reject(f"internal error: {type(exc).__name__}")
            for follow in (session.accept() if decision.accepted  # type: ignore[union-attr]
                           else session.reject(decision.reason)):  # type: ignore[union-attr]
                await self._on_session_event(conn, follow)
            return
        if isinstance(event, DeviceRegistered):
            old = self.registered.get(event.device_name)
            if old is not None and old is not conn:
                old.close()  # a device re-registering replaces its stale connection
            self.registered[event.device_name] = conn
        elif isinstance(event, DeviceUnregistered):
            if self.registered.get(event.device_name) is conn:
                del self.registered[event.device_name]
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
        self._registered: asyncio.Future[RegisterAck] = asyncio.get_running_loop().create_future()
        self._closed = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        return self._writer.get_extra_info("ssl_object")

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
                    self._push(ConnectionDropped(self.session.register.device_name,
                                                 "call control closed the connection"))
                    break
                events = self.session.receive_data(data, loop.time()) if data else []
                events += self.session.tick(loop.time())
                for event in events:
                    self._on_event(event)
                self._flush()
                await self._writer.drain()
        except (ConnectionError, ssl.SSLError, SccpProtocolError) as exc:
            self._push(ConnectionDropped(self.session.register.device_name, f"{exc}"))
        finally:
            if not self._registered.done():
                self._registered.set_exception(SccpConnectError("connection closed before registration"))
            self._closed.set()
            if not self._writer.is_closing():
                self._writer.close()

    def _on_event(self, event: object) -> None:
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

    async def unregister(self, timeout: float = 5.0) -> UnregisterAcked:
        self.session.unregister()
        self._flush()
        await self._writer.drain()
        event = await self.next_event(UnregisterAcked, timeout)
        return event  # type: ignore[return-value]

    async def wait_closed(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._closed.wait(), timeout)

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        if not self._writer.is_closing():
            self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
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

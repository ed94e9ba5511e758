"""A phone that stays registered somewhere: failover between call-control nodes, fallback to
SRST, fail-back after a stable period, a standby connection and call preservation (LATER-7,
SRST-1). The thin asyncio adapter around `ccmsec.wire.sccp_failover.CallControlSelector`.

* **Registration**: the selector says which target to try; the phone connects (TCP, or TLS with
  the context and pinned certificates the caller's `connect` gives for that target), registers
  and runs the display machine (`CallingPhone`).
* **Standby**: while registered, a second connection is held to the target below the active one
  (the next node, or SRST): KeepAlive every `standby_interval`, answered by KeepAliveAck. When the
  active node is lost, the phone registers over the standby connection at once — no new TCP or TLS
  handshake. A standby that stops answering is dropped and opened again.
* **Loss**: a connection reset is noticed at once; a hung node or a cut path by missed keepalives
  (`SccpPhoneSession`: three intervals without an ack). The phone then goes down its list.
* **Fail-back**: below the top, each higher target is probed every `probe_interval` (a KeepAlive
  that must be answered within `probe_timeout`; a stopped process accepts TCP in the kernel but
  never answers, so it does not count as reachable). The probe connection is kept open between
  probes and opened again when it went away: a fleet of 1,000 phones probing every 2 s would
  otherwise open 500 connections (TLS handshakes for secure phones) a second into the node that
  just came back. A kept probe connection found closed sooner than the node would drop a quiet
  one (two of *its* keepalive intervals — learned when the phone registered there, else the
  current node's) means the node restarted: its stable period starts again. Once a
  target has answered for the stable period and no call is up, the phone unregisters and
  registers there, over that probe connection.
* **Calls survive the loss** of the node that set them up: the call's media ports stay open and
  keep sending (`CallingPhone.preserve_on_loss`) while the phone registers elsewhere; the
  preserved call ends when the user hangs up (`hang_up`) or the far end stops sending for
  `preserved_media_timeout` seconds.

`events` records what happened with monotonic times (`loss`, `registered`, `fail-back`), so tests
and the benchmark measure detection and failover time from the phone's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random as _random
import ssl
from dataclasses import dataclass
from typing import Awaitable, Callable

from ccmsec.aio.sccp import (
    ConnectionDropped,
    SccpConnectError,
    SccpPhoneConnection,
    SccpRegistrationRejected,
    STREAM_LIMIT,
)
from ccmsec.aio.tasks import cancel_and_wait
from ccmsec.aio.sccp_calling import CallingPhone, MediaHook
from ccmsec.wire.sccp import (
    CapabilitiesRes,
    KeepAlive,
    KeepAliveAck,
    KeepAliveTimeout,
    Register,
    ResetRequested,
    SccpFramer,
    SccpPhoneSession,
    SccpProtocolError,
)
from ccmsec.wire.sccp_failover import CallControlSelector, FailoverSettings, Target

log = logging.getLogger("ccmsec.phone.failover")

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Connector = Callable[[Target], Awaitable[Streams]]
RegisterFor = Callable[[str], Register]   # local IP -> the Register to send


@dataclass(frozen=True)
class PhoneEvent:
    at: float          # loop time
    kind: str          # loss | registered | fail-back | attempt-failed | preserved-ended
    target: str
    detail: str = ""


async def open_streams(target: Target, *, ssl_context: ssl.SSLContext | None, bind_host: str,
                       pinned=None, timeout: float = 5.0) -> Streams:
    """TCP or TLS to `target` from `bind_host`; with `pinned`, the server certificate must be one
    of them (AUTH-2 for call control from the CTL; CERT-6 for SRST from the configuration)."""
    from ccmsec.pki.tls import peer_is_one_of

    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            target.host, target.port, ssl=ssl_context, server_hostname="" if ssl_context else None,
            limit=STREAM_LIMIT, local_addr=(bind_host, 0)), timeout)
    except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
        raise SccpConnectError(f"cannot connect to {target.label}: {exc!r}") from None
    ssl_object = writer.get_extra_info("ssl_object")
    if pinned is not None and (ssl_object is None or not peer_is_one_of(ssl_object, pinned)):
        writer.close()
        raise SccpConnectError(f"{target.label} presented a certificate the phone does not trust "
                               f"({'CERT-6' if target.kind.value == 'srst' else 'AUTH-2'})")
    return reader, writer


class Standby:
    """A connection held open to one target with KeepAlives (see the module docstring)."""

    def __init__(self, index: int, streams: Streams, interval: float) -> None:
        self.index = index
        self.reader, self.writer = streams
        self.interval = interval
        self.alive = True
        self.acks = 0
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        framer = SccpFramer()
        unacked = 0
        try:
            while not self._stopping:
                if unacked >= 3:
                    break
                self.writer.write(KeepAlive().serialize())
                await self.writer.drain()
                unacked += 1
                deadline = asyncio.get_running_loop().time() + self.interval
                while not self._stopping:
                    left = deadline - asyncio.get_running_loop().time()
                    if left <= 0:
                        break
                    try:
                        data = await asyncio.wait_for(self.reader.read(4096), left)
                    except asyncio.TimeoutError:
                        break
                    if not data:
                        raise ConnectionResetError("standby closed by the server")
                    for message in framer.feed(data):
                        if isinstance(message, KeepAliveAck):
                            unacked = 0
                            self.acks += 1
        except (ConnectionError, OSError, ssl.SSLError, SccpProtocolError):
            pass
        finally:
            self.alive = False

    async def _stop(self) -> bool:
        """Stop the keepalive task; False when it did not stop. (A cancel can be lost inside
        asyncio.wait_for before Python 3.12 when the read completes at the same moment: the flag
        ends the loop at its next turn, and the wait is bounded either way.)"""
        self._stopping = True
        self._task.cancel()
        done, _ = await asyncio.wait({self._task}, timeout=self.interval + 1.0)
        if self._task in done and not self._task.cancelled():
            self._task.exception()   # retrieved: ended by the flag or by its own error
        return bool(done)

    async def take(self) -> Streams | None:
        """Stop the keepalives and hand the streams over (None when the standby is dead)."""
        if not await self._stop():
            self.writer.close()
            return None
        if self.writer.is_closing() or self.reader.at_eof():
            return None
        return self.reader, self.writer

    async def close(self) -> None:
        await self._stop()
        self.writer.close()


class FailoverPhone:
    def __init__(self, name: str, targets: list[Target], connect: Connector, register: RegisterFor, *,
                 bind_host: str, settings: FailoverSettings | None = None,
                 capabilities: CapabilitiesRes | None = None, on_media: MediaHook | None = None,
                 on_change: Callable[[], None] | None = None, on_registered: Callable[[Target], None] | None = None,
                 standby_interval: float = 5.0, register_timeout: float = 5.0, probe_timeout: float = 2.0,
                 preserved_media_timeout: float = 3.0, random: Callable[[], float] = _random.random) -> None:
        self.name = name
        self.selector = CallControlSelector(targets, settings, random=random)
        self._connect = connect
        self._register = register
        self.bind_host = bind_host
        self.capabilities = capabilities
        self.on_media = on_media
        self.on_change = on_change
        self.on_registered = on_registered
        self.standby_interval = standby_interval
        self.register_timeout = register_timeout
        self.probe_timeout = probe_timeout
        self.preserved_media_timeout = preserved_media_timeout
        self._random = random
        self.conn: SccpPhoneConnection | None = None
        self.calling: CallingPhone | None = None
        self.preserved: list[CallingPhone] = []
        self.standby: Standby | None = None
        self._probes: dict[int, Streams] = {}           # kept probe connections to higher targets
        self._probe_answered: dict[int, float] = {}      # when each kept probe connection last answered
        self._keepalive_of: dict[int, float] = {}        # each target's keepalive (its RegisterAck)
        self.events: list[PhoneEvent] = []
        self.last_problem = ""
        self.rejected = ""
        self.problems: list[str] = []                     # this pass's failures, for the boot's report
        self.rejections: list[tuple[str, str]] = []       # (target, RegisterReject text)
        self.pass_failed = asyncio.Event()                # a whole pass without success
        self.reset_requested = asyncio.Event()            # call control sent Reset: the phone reboots
        self.reset_type = None
        self._registered = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._helpers: set[asyncio.Task] = set()

    # --- control ---------------------------------------------------------------------------------
    @property
    def active(self) -> Target | None:
        i = self.selector.active
        return self.selector.targets[i] if i is not None else None

    @property
    def registered(self) -> bool:
        return self._registered.is_set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"failover {self.name}")

    async def wait_registered(self, timeout: float = 10.0) -> Target:
        await asyncio.wait_for(self._registered.wait(), timeout)
        return self.active  # type: ignore[return-value]

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        for helper in list(self._helpers):
            helper.cancel()
        await self._drop_standby()
        self._drop_probes()
        for call in self.preserved:
            call.end_preserved()
        self.preserved.clear()
        await self._close_active()

    def hang_up(self) -> None:
        """The user hangs up: a preserved call ends, else the live call is released."""
        if self.preserved:
            for call in self.preserved:
                call.end_preserved()
            self.preserved.clear()
            self._event("preserved-ended", "", "hang-up")
        elif self.calling is not None and self.calling.in_call:
            self.calling.act(self.calling.display.hang_up)

    @property
    def in_call(self) -> bool:
        return bool(self.preserved) or (self.calling is not None and self.calling.in_call)

    # --- the loop --------------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            attempt = self.selector.next_attempt(loop.time())
            if attempt.not_before > loop.time():
                await asyncio.sleep(attempt.not_before - loop.time())
            try:
                await self._attach(attempt.index)
            except SccpRegistrationRejected as exc:
                self.rejected = exc.text
                self.rejections.append((attempt.target.label, exc.text))
                del self.rejections[:-10]
                self._failed(attempt.index, f"refused: {exc.text}")
                continue
            except (SccpConnectError, ConnectionError, OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
                self._failed(attempt.index, str(exc) or type(exc).__name__)
                continue
            except Exception as exc:  # never give up for good: anything else is a failed attempt too
                log.warning("failover phone %s: attempt on %s failed: %r", self.name, attempt.target.label, exc)
                self._failed(attempt.index, f"{type(exc).__name__}: {exc}")
                continue
            self.rejected = ""
            self.problems.clear()
            self.rejections.clear()
            self.pass_failed.clear()
            self.selector.registered(attempt.index, loop.time())
            interval = getattr(self.conn.session, "keepalive_interval", None) if self.conn else None
            if interval:  # this node's own: the probe of it later judges its silence limit by it
                self._keepalive_of[attempt.index] = float(interval)
            self._event("registered", attempt.target.label)
            self._registered.set()
            if self.on_registered is not None:
                self.on_registered(attempt.target)
            self._changed()
            try:
                outcome = await self._hold()
            except Exception as exc:  # the phone moves on as after any loss, it does not stop
                log.warning("failover phone %s: while registered with %s: %r", self.name, attempt.target.label, exc)
                outcome = ("loss", f"{type(exc).__name__}: {exc}")
            self._registered.clear()
            # The probe connection of the target the phone returns to carries its registration.
            self._drop_probes(keep=outcome[1] if outcome[0] == "fail-back" else None)
            if outcome[0] == "reset":
                self.reset_type = outcome[1]
                self._event("reset", attempt.target.label)
                await self._close_active()
                self._changed()
                self.reset_requested.set()
                return
            if outcome[0] == "fail-back":
                index = outcome[1]
                self._event("fail-back", self.selector.targets[index].label,
                            f"from {attempt.target.label}")
                await self._leave()
                self.selector.left(loop.time(), towards=index)
            else:
                self._event("loss", attempt.target.label, outcome[1])
                self.selector.lost(loop.time(), outcome[1])
                await self._close_active(preserve=True)
            self._changed()

    def _failed(self, index: int, why: str) -> None:
        self.last_problem = why
        self.problems.append(why)
        del self.problems[:-10]
        before = self.selector.passes_failed
        self.selector.attempt_failed(index, asyncio.get_running_loop().time(), why)
        self._event("attempt-failed", self.selector.targets[index].label, why)
        if self.selector.passes_failed > before:
            self.pass_failed.set()

    async def _attach(self, index: int) -> None:
        """Register with target `index`, over the standby connection when it is that one."""
        target = self.selector.targets[index]
        streams = None
        if self.standby is not None and self.standby.index == index and self.standby.alive:
            streams = await self.standby.take()
            self.standby = None
        else:
            await self._drop_standby()
            streams = self._probes.pop(index, None)
            if streams is not None and (streams[1].is_closing() or streams[0].at_eof()):
                streams[1].close()
                streams = None
        if streams is None:
            streams = await self._connect(target)
        reader, writer = streams
        local_ip = writer.get_extra_info("sockname")[0]
        session = SccpPhoneSession(self._register(local_ip), self.capabilities)
        conn = SccpPhoneConnection(session, reader, writer)
        # The display listens before the first byte is read: nothing sent right after RegisterAck
        # (the set-up answers, SRST's fallback notice) is missed.
        calling = CallingPhone(conn, bind_host=self.bind_host, on_media=self.on_media,
                               on_change=self._changed)
        try:
            await conn.wait_registered(self.register_timeout)
        except BaseException:
            calling.close_ports()
            await conn.close()
            raise
        self.conn = conn
        self.calling = calling
        self.calling.preserve_on_loss = True

    async def _hold(self) -> tuple[str, object]:
        """While registered: watch the connection, keep the standby, probe higher targets."""
        loop = asyncio.get_running_loop()
        conn = self.conn
        kinds = (ConnectionDropped, KeepAliveTimeout, ResetRequested)
        next_probe = loop.time() + self._jittered(self.selector.settings.probe_interval)
        while True:
            await self._keep_standby()
            self._expire_preserved()
            wait = max(0.05, min(1.0, next_probe - loop.time()))
            try:
                event = await conn.next_event(kinds, timeout=wait)
            except TimeoutError:
                event = None
                if conn.closed and conn.events.empty():
                    event = ConnectionDropped(self.name, "connection closed")
            if isinstance(event, ResetRequested):
                return ("reset", event.reset_type)
            if event is not None:
                return ("loss", getattr(event, "reason", "") or "keepalive timeout")
            if self.selector.higher_targets() and loop.time() >= next_probe:
                await self._probe_higher()
                next_probe = loop.time() + self._jittered(self.selector.settings.probe_interval)
                back = self.selector.fail_back_target(loop.time(), self.in_call)
                if back is not None:
                    return ("fail-back", back)

    def _jittered(self, value: float) -> float:
        return value * (1 - self.selector.settings.jitter * self._random())

    async def _keep_standby(self) -> None:
        index = self.selector.standby_target()
        if self.standby is not None and (not self.standby.alive or self.standby.index != index):
            await self._drop_standby()
        if self.standby is None and index is not None and not self._helpers:
            task = asyncio.get_running_loop().create_task(self._open_standby(index))
            self._helpers.add(task)
            task.add_done_callback(self._helpers.discard)

    async def _open_standby(self, index: int) -> None:
        try:
            streams = await self._connect(self.selector.targets[index])
        except (SccpConnectError, OSError, asyncio.TimeoutError, ssl.SSLError):
            await asyncio.sleep(self._jittered(self.standby_interval))  # not at once again
            return
        if self.selector.standby_target() != index or self.standby is not None:
            streams[1].close()
            return
        self.standby = Standby(index, streams, self.standby_interval)

    async def _drop_standby(self) -> None:
        standby, self.standby = self.standby, None
        if standby is not None:
            await standby.close()

    async def _probe_higher(self) -> None:
        loop = asyncio.get_running_loop()
        higher = self.selector.higher_targets()
        self._drop_probes(only=[i for i in self._probes if i not in higher])
        for index in higher:
            ok = await self._probe(index)
            self.selector.probe(index, loop.time(), ok)

    async def _probe(self, index: int) -> bool:
        """True when target `index` answered a KeepAlive within `probe_timeout`: on the kept
        probe connection, or on a new one when there is none or the kept one went away (a
        restarted node); a kept connection that is open but silent means a hung node."""
        loop = asyncio.get_running_loop()
        kept = self._probes.pop(index, None)
        if kept is not None:
            answer = await self._keepalive_answered(kept)
            if answer:
                self._probes[index] = kept
                self._probe_answered[index] = loop.time()
                return True
            kept[1].close()
            if answer is False:
                return False
            if index in self._probe_answered:  # closed: by the node's silence limit, or a restart
                self.selector.closed_early(index, self._silence_allowed(index), self._probe_answered[index],
                                           loop.time())
        try:
            streams = await asyncio.wait_for(self._connect(self.selector.targets[index]), self.probe_timeout)
        except (SccpConnectError, OSError, asyncio.TimeoutError, ssl.SSLError):
            return False
        if await self._keepalive_answered(streams):
            self._probes[index] = streams
            self._probe_answered[index] = loop.time()
            return True
        streams[1].close()
        return False

    def _silence_allowed(self, index: int) -> float:
        """How long target `index` keeps a quiet connection: two of its keepalive intervals, the
        node's own margin left out so that a doubt counts as a restart. Its interval is the one
        its RegisterAck gave when the phone was registered there (nodes need not share one: with
        the current node's shorter interval, a restart of the probed node went unnoticed); a node
        the phone never registered with is judged by the current node's, else 30 s."""
        interval = self._keepalive_of.get(index)
        if not interval:
            session = self.conn.session if self.conn is not None else None
            interval = getattr(session, "keepalive_interval", None) or 30
        return 2.0 * interval

    async def _keepalive_answered(self, streams: Streams) -> bool | None:
        """True: KeepAliveAck within `probe_timeout`; False: no answer in time; None: the
        connection is closed or broken."""
        reader, writer = streams
        try:
            writer.write(KeepAlive().serialize())
            await writer.drain()
            framer = SccpFramer()
            async with asyncio.timeout(self.probe_timeout):
                while True:
                    data = await reader.read(4096)
                    if not data:
                        return None
                    if any(isinstance(m, KeepAliveAck) for m in framer.feed(data)):
                        return True
        except (TimeoutError, asyncio.TimeoutError):
            return False
        except (ConnectionError, OSError, ssl.SSLError, SccpProtocolError):
            return None

    def _drop_probes(self, *, keep: int | None = None, only: list[int] | None = None) -> None:
        for index in list(self._probes) if only is None else only:
            if index != keep:
                self._probes.pop(index)[1].close()
                self._probe_answered.pop(index, None)

    def _expire_preserved(self) -> None:
        """A preserved call whose far end stopped sending is over (cleared cleanly)."""
        for call in list(self.preserved):
            counts = [p.datagrams_in for p in call.ports.ports.values()]
            seen = getattr(call, "_preserved_seen", None)
            now = asyncio.get_running_loop().time()
            if seen is None or seen[0] != counts:
                call._preserved_seen = (counts, now)      # type: ignore[attr-defined]
            elif now - seen[1] >= self.preserved_media_timeout:
                call.end_preserved()
                self.preserved.remove(call)
                self._event("preserved-ended", "", "far end stopped sending")

    async def _leave(self) -> None:
        """Fail-back: leave the active target cleanly (Unregister) before registering higher."""
        conn = self.conn
        if conn is not None and not conn.closed:
            with contextlib.suppress(Exception):   # bounded: drain waits on a peer that may not read
                await asyncio.wait_for(conn.unregister(timeout=2.0), 3.0)
        await self._close_active()

    async def _close_active(self, *, preserve: bool = False) -> None:
        calling, self.calling = self.calling, None
        conn, self.conn = self.conn, None
        if calling is not None:
            if preserve and calling.preserved:
                self.preserved.append(calling)
            else:
                calling.close_ports()
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    def _event(self, kind: str, target: str, detail: str = "") -> None:
        self.events.append(PhoneEvent(asyncio.get_running_loop().time(), kind, target, detail))
        del self.events[:-200]

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                log.exception("failover phone change listener failed")

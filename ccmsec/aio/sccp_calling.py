"""A registered SCCP phone that places and takes calls — the thin asyncio adapter that joins
the connection (`ccmsec.aio.sccp.SccpPhoneConnection`), the display machine
(`ccmsec.wire.sccp_phone.SccpPhone`) and one real UDP port per media channel
(`ccmsec.aio.media_port`).

    conn = await connect_phone(host, port, Register(name, ip), ssl_context=ctx)
    phone = CallingPhone(conn, bind_host="127.0.0.1")
    await phone.wait_ready()              # registered and the set-up exchange answered
    phone.act(phone.display.dial, "1002")
    await phone.wait_for(lambda d: any(c.state_name == "connected" for c in d.calls.values()))

Every message from call control reaches the display machine synchronously (no queue that could
drop one); what the machine answers is written at once. `on_media` lets the media plane see every
port as it opens, starts, stops and closes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from ccmsec.aio.media_port import MediaPort, MediaPortError, MediaPorts
from ccmsec.aio.sccp import ConnectionClosed, ConnectionDropped, SccpPhoneConnection
from ccmsec.wire.sccp import KeepAliveTimeout, MessageReceived, RegisterAccepted, ResetRequested
from ccmsec.wire.sccp_phone import (
    CloseChannel,
    OpenChannel,
    SccpPhone,
    SetupComplete,
    StartTransmit,
    StopTransmit,
)

log = logging.getLogger("ccmsec.phone")

MediaHook = Callable[[str, MediaPort], None]   # ("open" | "start" | "stop" | "close", port)


class CallingPhone:
    def __init__(self, conn: SccpPhoneConnection, *, bind_host: str,
                 on_media: MediaHook | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        self.conn = conn
        self.display = SccpPhone(conn.session.register.device_name)
        self.ports = MediaPorts(bind_host, limit=32)
        self.on_media = on_media
        self.on_change = on_change
        self.lost = ""
        # Call preservation (LATER-7): when the connection to call control is lost during a call,
        # keep the call's media ports open and sending — the phone fails over meanwhile — until
        # the user hangs up (`end_preserved`) or the far end stops sending. Off unless asked.
        self.preserve_on_loss = False
        self.preserved = False
        self._changed = asyncio.Event()
        conn.listener = self._on_event
        if conn.session.state.value == "registered":   # registered before we listened
            self._start_setup()

    def media_on(self, host: str) -> None:
        """Bind (and announce) the media ports of the next calls on `host`: an address the far end
        reaches (the demo's phone on the host calling a gateway in a container network)."""
        self.ports.host = host

    @property
    def name(self) -> str:
        return self.display.device_name

    # events from the connection --------------------------------------------------------------
    def _start_setup(self) -> None:
        self.display.start_setup()
        self._write()

    def _on_event(self, event: object) -> None:
        if isinstance(event, RegisterAccepted):
            self._start_setup()
        elif isinstance(event, MessageReceived):
            for ev in self.display.handle(event.message):
                self._media(ev)
            self._write()
        elif isinstance(event, (ConnectionDropped, ConnectionClosed, KeepAliveTimeout,
                                ResetRequested)):
            self.lost = self.lost or getattr(event, "reason", "") or type(event).__name__
            if (self.preserve_on_loss and not isinstance(event, ResetRequested)
                    and self.display.calls and self.ports.ports):
                self.preserved = True     # media keeps flowing; cleared by end_preserved()
            else:
                self.close_ports()
        self._changed.set()
        if self.on_change is not None:
            self.on_change()

    def _media(self, ev: object) -> None:
        if isinstance(ev, OpenChannel):
            ch = ev.channel
            try:
                port = self.ports.open(ch.party_id)
            except MediaPortError as exc:
                log.warning("cannot open a media port", extra={"device": self.name, "error": str(exc)})
                self.display.channel_failed(ch.party_id)
                return
            port.rx_encryption, port.codec = ch.rx_encryption, ch.codec
            host, number = port.local
            if host in ("0.0.0.0", "::", ""):
                # media bound to every address (phone-sim in a container): the peer is told the
                # address the signalling goes out from — told 0.0.0.0 it would send to itself
                host = getattr(self.conn, "local_host", None) or host
            self.display.channel_opened(ch.party_id, host, number)
            self._hook("open", port)
        elif isinstance(ev, StartTransmit):
            port = self.ports.get(ev.channel.party_id)
            if port is not None and ev.channel.tx is not None:
                port.start(ev.channel.tx, ev.channel.codec, ev.channel.tx_encryption)
                self._hook("start", port)
        elif isinstance(ev, StopTransmit):
            port = self.ports.get(ev.channel.party_id)
            if port is not None:
                port.stop()
                self._hook("stop", port)
        elif isinstance(ev, CloseChannel):
            port = self.ports.get(ev.channel.party_id)
            if port is not None:
                self._hook("close", port)
            self.ports.close(ev.channel.party_id)
        elif isinstance(ev, SetupComplete):
            log.debug("phone ready", extra={"device": self.name, "lines": ev.lines})

    def _hook(self, what: str, port: MediaPort) -> None:
        if self.on_media is not None:
            try:
                self.on_media(what, port)
            except Exception:
                log.exception("media hook failed")

    def _write(self) -> None:
        messages = self.display.messages_to_send()
        if messages and not self.conn.closed:
            self.conn.write(messages)

    # actions ---------------------------------------------------------------------------------
    def act(self, action: Callable, *args, **kwargs):
        """Run a display action (dial, answer, press…) and send what it produced."""
        result = action(*args, **kwargs)
        self._write()
        return result

    async def wait_ready(self, timeout: float = 10.0) -> None:
        await self.wait_for(lambda d: d.ready, timeout, what="the set-up exchange")

    async def wait_for(self, predicate: Callable[[SccpPhone], bool], timeout: float = 10.0,
                       what: str = "the expected state") -> None:
        """Wait until `predicate(display)` holds (checked after every message), bounded."""
        async def wait() -> None:
            while not predicate(self.display):
                if self.lost or self.conn.closed:
                    raise ConnectionError(f"{self.name}: connection to call control lost "
                                          f"({self.lost or 'closed'})")
                self._changed.clear()
                await self._changed.wait()
        try:
            await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"{self.name}: no {what} within {timeout:g} s") from None

    @property
    def in_call(self) -> bool:
        return bool(self.display.calls)

    def end_preserved(self) -> None:
        """The preserved call ends (hang-up, or the far end went quiet): its media stops."""
        self.preserved = False
        self.close_ports()

    def close_ports(self) -> None:
        """Close every media port, telling the media hook (as a CloseChannel does), so the phone's
        audio does not count a stream that has gone."""
        for port in list(self.ports.ports.values()):
            self._hook("close", port)
        self.ports.close_all()

    async def close(self) -> None:
        self.close_ports()
        await self.conn.close()

"""SCCP over real TCP and TLS sockets on 127.0.0.1: registration, keepalive, reset, refusals,
AUTH-2 mutual authentication, AUTH-7 integrity of the NULL-cipher channel, ENC-1 encryption."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from cryptography.hazmat.primitives import serialization

from ccmsec.aio.sccp import (
    ConnectionDropped,
    SccpConnectError,
    SccpRegistrationRejected,
    SccpServer,
    connect_phone,
    require_transport_matching_mode,
)
from ccmsec.pki import ca, tls
from ccmsec.wire import sccp as s

pytestmark = pytest.mark.timeout(30)

DEVICES = {"SEPENC": "encrypted", "SEPAUTH": "authenticated", "SEPPLAIN": "non-secure"}


@pytest.fixture(scope="module")
def pki():
    capf = ca.create_ca(ca.name("CAPF"))
    mfr = ca.create_ca(ca.name("Manufacturer"))
    rogue = ca.create_ca(ca.name("Rogue CA"))
    key = ca.new_key()
    ccm = ca.Issued(ca.self_signed(ca.name("ccm1"), key), key)
    return {
        "capf": capf, "mfr": mfr, "rogue": rogue, "ccm": ccm,
        "lsc": {n: ca.issue_with_new_key(capf, ca.name(n), server=False) for n in DEVICES},
        "mic": ca.issue_with_new_key(mfr, ca.name("SEPENC"), server=False),
        "rogue_cert": ca.issue_with_new_key(rogue, ca.name("SEPENC"), server=False),
    }


class Recorder:
    def __init__(self):
        self.events = []
        self.requests = []

    def __call__(self, conn, event):
        self.events.append(event)

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


async def _wait_for(predicate, timeout=5.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def _tls_server(pki, recorder, decide=None, **kw):
    ctx = tls.sccp_server_context(pki["ccm"], [pki["capf"].cert, pki["mfr"].cert])
    return SccpServer(decide or require_transport_matching_mode(DEVICES.get), port=0,
                      ssl_context=ctx, on_event=recorder, **kw)


def _phone_ctx(pki, name, mode=None, **kw):
    mode = mode or DEVICES[name]
    kw.setdefault("lsc", pki["lsc"][name])
    return tls.sccp_phone_context(mode, [pki["ccm"].cert], **kw)


async def test_plain_tcp_register_keepalive_unregister():
    rec = Recorder()
    server = SccpServer(require_transport_matching_mode(DEVICES.get), port=0, on_event=rec,
                        keepalive_interval=1)
    async with server:
        phone = await connect_phone("127.0.0.1", server.port, s.Register("SEPPLAIN", "127.0.0.1"))
        ack = await phone.wait_registered()
        assert ack.keepalive_interval == 1
        await phone.next_event(s.KeepAliveAcked, timeout=5)
        assert "SEPPLAIN" in server.registered
        await _wait_for(lambda: rec.of(s.CapabilitiesReceived))
        assert (await phone.unregister()).status == 0
        await _wait_for(lambda: "SEPPLAIN" not in server.registered)
        assert rec.of(s.DeviceUnregistered)
        await phone.close()


async def test_reject_reasons_unknown_device_and_wrong_transport(pki):
    rec = Recorder()
    async with SccpServer(require_transport_matching_mode(DEVICES.get), port=0,
                          on_event=rec) as server:
        phone = await connect_phone("127.0.0.1", server.port, s.Register("SEPNOBODY"))
        with pytest.raises(SccpRegistrationRejected, match="unknown device"):
            await phone.wait_registered()
        await phone.close()
        # An encrypted device on the plain port is refused (ENC-1).
        phone = await connect_phone("127.0.0.1", server.port, s.Register("SEPENC"))
        with pytest.raises(SccpRegistrationRejected, match="configured encrypted"):
            await phone.wait_registered()
        await phone.close()
    assert [e.device_name for e in rec.of(s.RegistrationRefused)] == ["SEPNOBODY", "SEPENC"]
    assert "non-secure transport" in rec.of(s.RegistrationRefused)[1].reason


async def test_enc1_encrypted_mode_negotiates_aes_and_gets_reset(pki):
    rec = Recorder()
    async with _tls_server(pki, rec) as server:
        phone = await connect_phone("127.0.0.1", server.port, s.Register("SEPENC"),
                                    ssl_context=_phone_ctx(pki, "SEPENC"),
                                    pinned_ccm_certificates=[pki["ccm"].cert])
        await phone.wait_registered()
        cipher = phone.ssl_object.cipher()[0]
        assert "AES" in cipher and "NULL" not in cipher
        assert await server.reset_device("SEPENC", s.ResetType.RESET)
        event = await phone.next_event(s.ResetRequested)
        assert event.reset_type is s.ResetType.RESET
        assert not await server.reset_device("SEPNOBODY")
        await phone.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])   # the services run on uvloop
def test_decider_sees_the_peer_certificate_but_the_held_connection_keeps_no_parsed_copy(pki, loop):
    """Memory per phone (issue 15): the loop's parsed "peercert" dict (~2 kB) is emptied once the
    connection is made; the decision still gets the client's certificate (from its DER)."""
    import uvloop

    seen = []

    def decide(request):
        seen.append(request.peer_certificate)
        return s.RegistrationDecision.accept()

    async def run():
        async with _tls_server(pki, Recorder(), decide=decide) as server:
            phone = await connect_phone("127.0.0.1", server.port, s.Register("SEPENC"),
                                        ssl_context=_phone_ctx(pki, "SEPENC"))
            await phone.wait_registered()
            conn = server.registered["SEPENC"]
            assert conn.transport.get_extra_info("peercert") == {}
            assert conn.ssl_object.getpeercert(binary_form=True) == pki["lsc"]["SEPENC"].cert.public_bytes(
                serialization.Encoding.DER)
            await phone.close()

    (uvloop.run if loop == "uvloop" else asyncio.run)(run())
    assert [c.subject for c in seen] == [pki["lsc"]["SEPENC"].cert.subject]


async def test_auth7_authenticated_mode_uses_null_cipher(pki):
    async with _tls_server(pki, Recorder()) as server:
        phone = await connect_phone("127.0.0.1", server.port, s.Register("SEPAUTH"),
                                    ssl_context=_phone_ctx(pki, "SEPAUTH"))
        await phone.wait_registered()
        assert phone.ssl_object.cipher()[0].startswith("NULL-")
        await phone.close()


async def test_enc1_encrypted_device_over_null_cipher_is_refused(pki):
    async with _tls_server(pki, Recorder()) as server:
        phone = await connect_phone("127.0.0.1", server.port, s.Register("SEPENC"),
                                    ssl_context=_phone_ctx(pki, "SEPENC", "authenticated"))
        with pytest.raises(SccpRegistrationRejected, match="configured encrypted"):
            await phone.wait_registered()
        await phone.close()


async def test_auth2_client_without_certificate_is_refused(pki):
    async with _tls_server(pki, Recorder()) as server:
        ctx = tls.client_context([pki["ccm"].cert])
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(SccpConnectError):
            phone = await connect_phone("127.0.0.1", server.port, s.Register("SEPENC"),
                                        ssl_context=ctx)
            await phone.wait_registered()  # TLS 1.3 would report the alert here


async def test_auth2_certificate_from_wrong_ca_is_refused(pki):
    async with _tls_server(pki, Recorder()) as server:
        ctx = tls.sccp_phone_context("encrypted", [pki["ccm"].cert], mic=pki["rogue_cert"])
        with pytest.raises(SccpConnectError):
            await connect_phone("127.0.0.1", server.port, s.Register("SEPENC"), ssl_context=ctx)


async def test_auth2_phone_refuses_server_not_in_its_ctl(pki):
    other_key = ca.new_key()
    other = ca.Issued(ca.self_signed(ca.name("impostor"), other_key), other_key)
    ctx = tls.sccp_server_context(other, [pki["capf"].cert])
    async with SccpServer(lambda r: s.RegistrationDecision.accept(), port=0,
                          ssl_context=ctx) as server:
        with pytest.raises(SccpConnectError):
            await connect_phone("127.0.0.1", server.port, s.Register("SEPENC"),
                                ssl_context=_phone_ctx(pki, "SEPENC"))


async def test_cert2_lsc_presented_instead_of_mic(pki):
    seen = []

    def decide(request):
        seen.append(request.peer_certificate)
        return s.RegistrationDecision.accept()

    async with _tls_server(pki, Recorder(), decide=decide) as server:
        ctx = _phone_ctx(pki, "SEPENC", lsc=pki["lsc"]["SEPENC"], mic=pki["mic"])
        phone = await connect_phone("127.0.0.1", server.port, s.Register("SEPENC"), ssl_context=ctx)
        await phone.wait_registered()
        await phone.close()
    assert seen[0].issuer == pki["capf"].cert.subject  # the LSC, issued by CAPF
    assert seen[0] != pki["mic"].cert


async def _tampering_proxy(target_port: int, marker: bytes, flip: bool):
    """A real TCP proxy between phone and server. It looks for `marker` in the phone→server
    bytes (readable only if the TLS records are not encrypted) and, if `flip`, changes one byte
    of it in flight."""
    state = {"seen": False, "flipped": False}

    async def pipe(reader, writer, inspect):
        try:
            while data := await reader.read(65536):
                at = data.find(marker) if inspect else -1
                if at >= 0:
                    state["seen"] = True
                    if flip and not state["flipped"]:
                        data = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]
                        state["flipped"] = True
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(client_reader, client_writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(client_reader, up_writer, True),
                             pipe(up_reader, client_writer, False), return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, state


# The 16-byte NUL-padded device-name field of Register: unlike the certificate's CN (which TLS 1.2
# sends in clear during the handshake), this appears only inside SCCP records.
REGISTER_AUTH = b"SEPAUTH".ljust(16, b"\0")
REGISTER_ENC = b"SEPENC".ljust(16, b"\0")


async def test_auth7_null_cipher_readable_but_modified_record_kills_connection(pki):
    rec = Recorder()
    async with _tls_server(pki, rec) as server:
        # Untouched: the Register (device name) is readable on the wire — integrity only.
        proxy, state = await _tampering_proxy(server.port, REGISTER_AUTH, flip=False)
        phone = await connect_phone("127.0.0.1", proxy.sockets[0].getsockname()[1],
                                    s.Register("SEPAUTH"), ssl_context=_phone_ctx(pki, "SEPAUTH"))
        await phone.wait_registered()
        assert state["seen"]
        await phone.close()
        proxy.close()

        # One flipped bit inside that TLS record: the MAC check fails and the server drops it.
        proxy, state = await _tampering_proxy(server.port, REGISTER_AUTH, flip=True)
        phone = await connect_phone("127.0.0.1", proxy.sockets[0].getsockname()[1],
                                    s.Register("SEPAUTH"), ssl_context=_phone_ctx(pki, "SEPAUTH"))
        with pytest.raises((SccpConnectError, asyncio.TimeoutError)):
            await phone.wait_registered(timeout=5)
        assert state["flipped"]
        await _wait_for(lambda: any("transport" in e.reason for e in rec.of(ConnectionDropped)))
        assert len(rec.of(s.DeviceRegistered)) == 1  # only the untouched run registered
        assert not rec.of(s.RegistrationRefused)  # the tampered Register never reached SCCP
        await phone.close()
        proxy.close()


async def test_enc1_encrypted_channel_hides_the_signalling(pki):
    async with _tls_server(pki, Recorder()) as server:
        proxy, state = await _tampering_proxy(server.port, REGISTER_ENC, flip=False)
        phone = await connect_phone("127.0.0.1", proxy.sockets[0].getsockname()[1],
                                    s.Register("SEPENC"), ssl_context=_phone_ctx(pki, "SEPENC"))
        await phone.wait_registered()
        assert not state["seen"]  # the device name never appears in clear
        await phone.close()
        proxy.close()


async def test_stalled_tls_handshake_does_not_block_others(pki):
    rec = Recorder()
    async with _tls_server(pki, rec, handshake_timeout=1.0) as server:
        # A client that connects and sends half a ClientHello, then stalls.
        stall_reader, stall_writer = await asyncio.open_connection("127.0.0.1", server.port)
        stall_writer.write(b"\x16\x03\x01\x02\x00\x01")
        await stall_writer.drain()
        phone = await connect_phone("127.0.0.1", server.port, s.Register("SEPENC"),
                                    ssl_context=_phone_ctx(pki, "SEPENC"))
        await phone.wait_registered(timeout=3)
        # The stalled one is dropped by the handshake timeout.
        assert await asyncio.wait_for(stall_reader.read(), 5) == b""
        stall_writer.close()
        await phone.close()


async def test_no_register_in_time_and_flood_are_dropped():
    rec = Recorder()
    server = SccpServer(lambda r: s.RegistrationDecision.accept(), port=0, on_event=rec,
                        register_timeout=0.5, max_messages_per_second=20)
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        phone = await connect_phone("127.0.0.1", server.port, s.Register("SEPFLOOD"))
        await phone.wait_registered()
        for _ in range(10):
            await phone.send(s.OffHook(1, 0))
            await phone.send(s.KeypadButton(1, 1, 0))
            await phone.send(s.OnHook(1, 0))
            await phone.send(s.KeepAlive())
        await phone.wait_closed(timeout=5)
        await phone.close()
    reasons = [e.reason for e in rec.of(ConnectionDropped)]
    assert "no Register in time" in reasons and "message flood" in reasons


async def test_garbage_framing_closes_connection():
    rec = Recorder()
    async with SccpServer(lambda r: s.RegistrationDecision.accept(), port=0,
                          on_event=rec) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"\xff\xff\xff\x7f" + bytes(8))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    assert any(e.reason.startswith("protocol:") for e in rec.of(ConnectionDropped))


async def test_bytes_arriving_during_a_slow_decision_keep_their_order():
    """While the Register decision is pending the server holds what arrives next; a KeepAlive sent
    during the decision is answered after the RegisterAck, never before and never lost."""
    rec = Recorder()

    async def slow_decide(request):
        await asyncio.sleep(0.3)
        return s.RegistrationDecision.accept()

    async with SccpServer(slow_decide, port=0, on_event=rec, keepalive_interval=5) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(s.Register("SEPSLOW", "127.0.0.1").serialize())
        await writer.drain()
        await asyncio.sleep(0.1)  # the decider is still working
        writer.write(s.KeepAlive().serialize())
        await writer.drain()
        framer, got = s.SccpFramer(), []
        while not any(isinstance(m, s.KeepAliveAck) for m in got):
            data = await asyncio.wait_for(reader.read(4096), 5)
            assert data, "server closed the connection"
            got += framer.feed(data)
        kinds = [type(m).__name__ for m in got]
        assert kinds.index("RegisterAck") < kinds.index("KeepAliveAck"), kinds
        writer.close()


async def test_phone_gone_during_the_decision_is_reported_and_not_left_registered():
    rec = Recorder()
    decided = asyncio.Event()

    async def slow_decide(request):
        await asyncio.sleep(0.3)
        decided.set()
        return s.RegistrationDecision.accept()

    async with SccpServer(slow_decide, port=0, on_event=rec) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(s.Register("SEPGONE", "127.0.0.1").serialize())
        await writer.drain()
        writer.close()
        await asyncio.wait_for(decided.wait(), 5)
        from ccmsec.aio.sccp import ConnectionClosed
        await _wait_for(lambda: rec.of(ConnectionClosed))
        assert "SEPGONE" not in server.registered
        # the server still serves others
        phone = await connect_phone("127.0.0.1", server.port, s.Register("SEPNEXT", "127.0.0.1"))
        await phone.wait_registered(5)
        await phone.close()


async def test_chattering_without_register_is_still_dropped_at_the_register_deadline():
    """Messages that are neither a Register nor a standby's KeepAlive (here CapabilitiesRes every
    0.1 s) do not extend the time an unregistered connection may hold a connection slot."""
    rec = Recorder()
    server = SccpServer(lambda r: s.RegistrationDecision.accept(), port=0, on_event=rec,
                        register_timeout=0.5)
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        closed_after = None
        while loop.time() - started < 3.0:
            try:
                writer.write(s.CapabilitiesRes().serialize())
                await writer.drain()
                if await asyncio.wait_for(reader.read(100), 0.1) == b"":
                    closed_after = loop.time() - started
                    break
            except asyncio.TimeoutError:
                continue
            except ConnectionError:
                closed_after = loop.time() - started
                break
        writer.close()
        assert closed_after is not None and closed_after < 1.5, closed_after
    assert "no Register in time" in [e.reason for e in rec.of(ConnectionDropped)]


async def test_standby_connections_live_by_keepalive_and_are_bounded_per_source_LATER_7():
    """A phone's standby connection (KeepAlive before any Register) is acked and kept past the
    register deadline while it keeps talking; it is dropped when it goes silent, and one address
    may hold at most `max_standby_per_source` of them."""
    rec = Recorder()
    server = SccpServer(lambda r: s.RegistrationDecision.accept(), port=0, on_event=rec,
                        register_timeout=0.5, keepalive_interval=1, max_standby_per_source=2)
    async with server:
        conns = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(s.KeepAlive().serialize())
            await writer.drain()
            conns.append((reader, writer))
        acked = []
        for reader, _ in conns:
            data = await asyncio.wait_for(reader.read(100), 5)
            acked.append(s.SccpFramer().feed(data) == [s.KeepAliveAck()])
        assert acked[:2] == [True, True]
        assert await asyncio.wait_for(conns[2][0].read(100), 5) == b""   # the third: over the bound
        # The first keeps talking past the register deadline; the second goes silent.
        reader, writer = conns[0]
        for _ in range(8):
            await asyncio.sleep(0.25)
            writer.write(s.KeepAlive().serialize())
            await writer.drain()
        assert not reader.at_eof() and server.standby_total == 2
        assert await asyncio.wait_for(conns[1][0].read(100), 10) == b""  # keepalive timeout
        writer.write(s.Register("SEPSTANDBY", "127.0.0.1").serialize())  # fails over onto it
        await writer.drain()
        framer, got = s.SccpFramer(), []
        while not any(isinstance(m, s.RegisterAck) for m in got):
            got += framer.feed(await asyncio.wait_for(reader.read(4096), 5))
        assert "SEPSTANDBY" in server.registered
        for _, w in conns:
            w.close()


class _SlowHandOverServer(SccpServer):
    """Starts each TLS handshake late, as a busy event loop does: the phone's ClientHello is
    already on the socket when start_tls takes the transport over."""

    def _spawn(self, coro) -> None:
        async def late():
            await asyncio.sleep(0.3)
            await coro
        super()._spawn(late())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])   # the services run on uvloop
def test_client_hello_that_arrives_before_the_handshake_starts_is_not_lost_AUTH_2(pki, loop):
    """Seen as phones falling back to SRST after a 10 s timeout: a ClientHello read before
    the TLS layer took the connection over was lost and the server never answered it."""
    import uvloop

    runner = uvloop.run if loop == "uvloop" else asyncio.run
    runner(asyncio.wait_for(_hello_before_handshake(pki), 20))


async def _hello_before_handshake(pki):
    rec = Recorder()
    ctx = tls.sccp_server_context(pki["ccm"], [pki["capf"].cert, pki["mfr"].cert])
    async with _SlowHandOverServer(require_transport_matching_mode(DEVICES.get), port=0, ssl_context=ctx,
                                   on_event=rec, handshake_timeout=5.0) as server:
        phone = await connect_phone("127.0.0.1", server.port, s.Register("SEPENC"),
                                    ssl_context=_phone_ctx(pki, "SEPENC"),
                                    pinned_ccm_certificates=[pki["ccm"].cert])
        await phone.wait_registered(timeout=3)
        assert "SEPENC" in server.registered
        await phone.close()


async def test_silent_registered_phone_is_dropped_on_time_and_a_live_one_is_kept():
    """The server's deadlines run in one shared deadline wheel (issue 15), not a timer per
    phone: a registered phone that goes silent is still dropped at two keepalive intervals
    + 5 s (here 7 s) after it was last heard — not earlier, and at most the wheel's resolution
    (0.1 s) plus scheduling later — while one that sends KeepAlives stays registered."""
    rec = Recorder()
    server = SccpServer(lambda r: s.RegistrationDecision.accept(), port=0, on_event=rec,
                        keepalive_interval=1, register_timeout=0.5)
    loop = asyncio.get_running_loop()
    async with server:
        conns = {}
        for name in ("SEPSILENT", "SEPLIVE"):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(s.Register(name, "127.0.0.1").serialize())
            await writer.drain()
            framer, got = s.SccpFramer(), []
            while not any(isinstance(m, s.RegisterAck) for m in got):
                got += framer.feed(await asyncio.wait_for(reader.read(4096), 5))
            conns[name] = (reader, writer, loop.time())
        silent_reader, _, silent_heard = conns["SEPSILENT"]
        live_reader, live_writer, _ = conns["SEPLIVE"]

        async def keep_talking():
            while True:
                live_writer.write(s.KeepAlive().serialize())
                await live_writer.drain()
                await asyncio.sleep(0.5)
                await live_reader.read(4096)   # its KeepAliveAcks

        talker = asyncio.create_task(keep_talking())
        try:
            assert await asyncio.wait_for(silent_reader.read(100), 12) == b""
            dropped_after = loop.time() - silent_heard
            assert 7.0 - 0.05 <= dropped_after <= 7.0 + 0.6, dropped_after
            await asyncio.sleep(1.0)
            assert "SEPLIVE" in server.registered and "SEPSILENT" not in server.registered
        finally:
            talker.cancel()
    drops = [(e.device_name, e.reason) for e in rec.of(ConnectionDropped)]
    assert ("SEPSILENT", "keepalive timeout") in drops
    assert not any(name == "SEPLIVE" and reason == "keepalive timeout" for name, reason in drops)


async def test_register_deadline_is_kept_by_the_shared_deadline_wheel():
    """An unregistered connection is closed at `register_timeout`, not before (issue 15)."""
    rec = Recorder()
    server = SccpServer(lambda r: s.RegistrationDecision.accept(), port=0, on_event=rec,
                        register_timeout=0.7)
    loop = asyncio.get_running_loop()
    async with server:
        started = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        closed_after = loop.time() - started
        writer.close()
        assert 0.7 - 0.05 <= closed_after <= 0.7 + 0.4, closed_after
        assert server._deadlines.next_time() is None   # nothing left filed
    assert "no Register in time" in [e.reason for e in rec.of(ConnectionDropped)]
